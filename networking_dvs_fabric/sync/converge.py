"""Repair of the leaves: the networks an audit found drifted, converged from today's state.

What an audit computed is old by the time a repair writes it: a VM may have moved
meanwhile, and the fabric worker may already have put its MAC at the new leaf.
Writing the audit's targets would undo that.  So the repair writes nothing the
audit computed: it hands the drifted networks to the fabric worker's own handler
(``fabric.worker.FabricSync``), which reads Neutron's intent and the watcher's
locations again and converges every leaf for them - under the journal's claim.  For
each network a journal row is recorded and claimed in one transaction, so no worker
converges the network at the same moment, and what is recorded meanwhile (the
watcher's vMotion) is converged after this, from newer state.  A network a worker
holds right now is left to it: the recorded row makes it converge once more after.

Verdicts are settled as the worker settles them: done; retry later (a leaf or vCenter
away: the worker takes it from there, with back-off); failed (a leaf refused the
network, shown by ``dvs-fabric journal``).  A leaf that refuses a batch is asked
again network by network, so one refused network does not hold up the others.

A batch's rows are recorded and claimed in one transaction, and its verdicts settled
in one, each a constant number of statements (``store.record_and_claim``,
``store.settle``): a worker that starts after an outage repairs a thousand networks,
and a transaction per network was most of that time.  A network another worker is
claiming at that moment is left to it like one it holds.  Should the batch's
transaction fail all the same (a deadlock past Neutron's retries), its networks are
recorded and claimed one by one.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

from oslo_db import exception as db_exc

from networking_dvs_fabric import names
from networking_dvs_fabric.fabric.worker import FabricSync
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.claiming import Lost
from networking_dvs_fabric.journal.worker import PermanentFailure, TemporaryFailure
from networking_dvs_fabric.topology import Topology

LOG = logging.getLogger(__name__)

# The fabric journal's handler: a batch of entries in, a verdict per entry out.
Handler = Callable[[object, Sequence[store.Entry]], Sequence]

OPERATION = "full-sync"      # the journal rows' operation hint
RETRY_DELAY = 1.0            # a temporary failure: the fabric worker's back-off goes on


@dataclasses.dataclass
class Converged:
    done: list[str] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    left_to_workers: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Settings:
    mac_distribution: str
    mode: str


class _Sources:
    """What ``FabricSync`` reads from a runtime, taken from an audit's ``Parts``."""

    def __init__(self, parts) -> None:
        self.fabric = parts.fabric
        self.directory = parts.directory
        self.fabric_settings = _Settings(parts.mac_distribution, parts.mode)
        self._topology: Topology = parts.topology

    def require_topology(self) -> Topology:
        return self._topology

    def fabric_physical_networks(self) -> frozenset[str]:
        return self._topology.physical_networks(self.directory)


def networks(context, parts, network_ids: Sequence[str], batch: int,
             progress: Callable[[str], None], handler: Handler | None = None) -> Converged:
    """Converge ``network_ids`` on every leaf, ``batch`` networks per leaf transaction,
    with ``handler`` (by default a ``FabricSync`` on ``parts``)."""
    if handler is None:
        handler = FabricSync(_Sources(parts))
    worker_id = store.make_worker_id()
    out = Converged()
    ordered = sorted(set(network_ids))
    for start in range(0, len(ordered), batch):
        entries = _record_and_claim_all(context, worker_id, ordered[start:start + batch],
                                        out)
        if entries:
            _settle(context, entries, _handle(handler, context, entries), out)
        progress(f"leaves: {min(start + batch, len(ordered))}/{len(ordered)} drifted "
                 "networks converged from the current state")
    if out.left_to_workers:
        progress(f"leaves: {len(out.left_to_workers)} network(s) being converged by a "
                 "fabric worker right now, left to it")
    return out


def _record_and_claim_all(context, worker_id: str, network_ids: Sequence[str],
                          out: Converged) -> list[store.Entry]:
    """A journal row per network, claimed by ``worker_id``, in one transaction;
    network by network should that transaction fail."""
    try:
        claimed = store.record_and_claim(context, worker_id, names.RESOURCE_NETWORK,
                                         network_ids, OPERATION)
    except (db_exc.DBDeadlock, Lost):
        claimed = {n: _record_and_claim(context, worker_id, n) for n in network_ids}
    out.left_to_workers.extend(n for n, entry in claimed.items() if entry is None)
    return [entry for entry in claimed.values() if entry is not None]


def _record_and_claim(context, worker_id: str, network_id: str) -> store.Entry | None:
    """A journal row for the network, claimed by ``worker_id``; None when a worker
    holds the network now (the row then waits for it, pending)."""
    try:
        return store.record_and_claim(context, worker_id, names.RESOURCE_NETWORK,
                                      [network_id], OPERATION)[network_id]
    except (db_exc.DBDeadlock, Lost):
        # A worker is claiming it this very moment: it converges the network.
        store.record(context, names.RESOURCE_NETWORK, network_id, OPERATION)
        return None


def _handle(handler: Handler, context, entries: list[store.Entry]) -> list:
    try:
        return list(handler(context, entries))
    except Exception as exc:  # noqa: BLE001 - the claims must be settled all the same
        LOG.exception("full sync: converging %d networks failed", len(entries))
        return [TemporaryFailure(f"repair error: {exc}")] * len(entries)


def _settle(context, entries: list[store.Entry], verdicts: list, out: Converged) -> None:
    """Every verdict of the batch, in one transaction."""
    settlements = []
    for entry, verdict in zip(entries, verdicts):
        network_id = entry.resource_id
        if verdict is None:
            settlements.append(store.Settlement.completed(entry))
            out.done.append(network_id)
        elif isinstance(verdict, PermanentFailure):
            settlements.append(store.Settlement.failed(entry, str(verdict)))
            out.failures.append(f"network {network_id}: {verdict} (journal entry "
                                "failed)")
        else:
            settlements.append(store.Settlement.retry(entry, str(verdict), RETRY_DELAY))
            out.failures.append(f"network {network_id}: {verdict} (the fabric worker "
                                "retries it)")
    store.settle(context, settlements)
