"""The fabric worker: journal entries of networks in, leaves programmed out.

Level-triggered: an entry only names a network.  For a batch of networks the
worker reads Neutron's intent, computes what every leaf must hold and hands each
leaf its part in one backend call (one OVSDB transaction per leaf per batch).  A
leaf that does not answer makes the batch's networks retry later; one that refuses
is retried network by network, so only the network at fault is marked failed.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from networking_dvs_fabric import names
from networking_dvs_fabric.fabric.api import FabricBackend, FabricError, NetworkOnLeaf
from networking_dvs_fabric.fabric.desired import desired_state, make_before_break
from networking_dvs_fabric.fabric.intent import read_intents
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.worker import JournalWorker, PermanentFailure, TemporaryFailure
from networking_dvs_fabric.vcenter import errors

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)


class FabricSync:
    """The handler: converge the leaves for a batch of networks."""

    def __init__(self, runtime: "Runtime") -> None:
        self._runtime = runtime
        self.transactions = 0

    @property
    def backend(self) -> FabricBackend:
        return self._runtime.fabric

    def __call__(self, context, entries: Sequence[store.Entry]) -> list[Exception | None]:
        network_ids = [e.resource_id for e in entries]
        verdicts: dict[str, Exception | None] = {n: None for n in network_ids}
        try:
            runtime = self._runtime
            intents = read_intents(context, network_ids)
            desired = desired_state(intents, runtime.require_topology(), runtime.directory,
                                    runtime.fabric_settings.mac_distribution,
                                    runtime.fabric_settings.mode)
        except errors.VCenterError as exc:
            failure = TemporaryFailure(f"vCenter needed to place cluster hosts: {exc}")
            return [failure for _ in entries]

        def note(failures: dict[str, Exception]) -> None:
            for network_id, failure in failures.items():
                if verdicts.get(network_id) is None or isinstance(failure, PermanentFailure):
                    verdicts[network_id] = failure
        # Make before break: every leaf first gets what is added (and moved MACs), and
        # only then does any leaf lose what is no longer needed.
        first: dict[str, dict[str, NetworkOnLeaf | None]] = {}
        for leaf in desired:
            try:
                current = self.backend.read(leaf)
            except FabricError as exc:
                note({n: TemporaryFailure(str(exc)) for n in desired[leaf]})
                continue
            first[leaf] = make_before_break({leaf: desired[leaf]}, {leaf: current})[leaf]
        for leaf, networks in first.items():
            if networks != desired[leaf]:
                note(self._converge(leaf, networks))
        held = {n for n, verdict in verdicts.items() if verdict is not None}
        for leaf, networks in desired.items():
            if leaf not in first:
                continue                      # not readable now: retried later
            # A network whose first step failed somewhere (a leaf down) still gets
            # everything it gains on the leaves that answer, but loses nothing yet.
            target = {n: (first[leaf][n] if n in held else want)
                      for n, want in networks.items()}
            note(self._converge(leaf, target))
        return [verdicts[e.resource_id] for e in entries]

    def _converge(self, leaf: str,
                  networks: dict[str, NetworkOnLeaf | None]) -> dict[str, Exception]:
        """Failures per network on this leaf (empty: all done)."""
        try:
            result = self.backend.converge(leaf, networks)
        except FabricError as exc:
            if exc.temporary:
                return {n: TemporaryFailure(str(exc)) for n in networks}
            if len(networks) == 1:
                return {n: PermanentFailure(str(exc)) for n in networks}
            LOG.warning("fabric: leaf %(leaf)s refused a batch of %(n)d networks (%(err)s); "
                        "retrying them one by one", {"leaf": leaf, "n": len(networks),
                                                      "err": exc})
            failures: dict[str, Exception] = {}
            for network_id, want in networks.items():
                failures.update(self._converge(leaf, {network_id: want}))
            return failures
        self.transactions += result.transactions
        if result.changes:
            LOG.info("fabric: leaf %(leaf)s converged for %(n)d networks: %(c)d changes in "
                     "%(t)d transaction(s)", {"leaf": leaf, "n": len(networks),
                                              "c": result.changes, "t": result.transactions})
        return {n: TemporaryFailure(f"logical switch on {leaf} still referenced by the "
                                    "switch's local MACs; removal retried")
                for n in result.switch_removal_pending}


class FabricWorker(JournalWorker):
    def __init__(self, runtime: "Runtime") -> None:
        self.sync = FabricSync(runtime)
        self._runtime = runtime
        super().__init__("fabric_hwvtep journal worker", self.sync, runtime.worker_settings,
                         resource_types=(names.RESOURCE_NETWORK,))

    def wait(self) -> None:
        super().wait()
        self._runtime.close_fabric()
