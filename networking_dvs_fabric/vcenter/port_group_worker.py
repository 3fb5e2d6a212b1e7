"""Port group releases from the journal: the vsphere_dvs half of the journal worker.

An entry names a (network, DVS).  Level-triggered like the fabric: if any port of
the network is still bound (or being bound) on a host of that DVS, the port group
stays and the entry is done; otherwise it is deleted - checked and deleted under
the (network, DVS) guard row that binds in other processes meet
(``usage.release_if_unused``).  A bind that answered the port group but whose
binding ML2 has not committed yet keeps it too, and the entry is retried.
vCenter unreachable, or VMs Neutron does not know still using the port group, a
database error, and every other temporary error (``errors.VCenterError.temporary``:
vCenter busy, a concurrent change...) make the entry retry later with backoff - the
port group is kept meanwhile and the reason logged.  A permanent one (NoPermission, InvalidArgument, any fault not known
to be temporary) marks the entry failed with the message, for ``dvs-fabric
journal``; the periodic sweep still removes the port group once vCenter lets it.

A batch (up to ``worker_batch_size`` entries, one after another, settled together
at its end) can outlast ``claim_timeout`` on a slow vCenter; the journal would then
hand its entries to another worker while this one still works on them.  So the
batch's claims are renewed every third of ``claim_timeout`` (``store.renew``), and
an entry whose claim was released all the same (this process stalled longer than
that) is left to the worker that has it now.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from oslo_db import exception as db_exc

from networking_dvs_fabric import names
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.worker import JournalWorker, PermanentFailure, TemporaryFailure
from networking_dvs_fabric.vcenter import errors, usage
from networking_dvs_fabric.vcenter.backend import VSphereBackend

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)


class PortGroupRelease:
    def __init__(self, backend: VSphereBackend, claim_timeout: float = 300.0) -> None:
        self._backend = backend
        self._renew_every = claim_timeout / 3

    def __call__(self, context, entries: Sequence[store.Entry]) -> list[Exception | None]:
        verdicts: list[Exception | None] = []
        held = {entry.row_ids for entry in entries}
        renewed = store.utcnow()
        for index, entry in enumerate(entries):
            if (store.utcnow() - renewed).total_seconds() >= self._renew_every:
                held = {e.row_ids for e in store.renew(context, entries)}
                renewed = store.utcnow()
            if entry.row_ids not in held:
                LOG.warning("vsphere_dvs: port group release %s: claim released while "
                            "this batch ran; left to the worker that has it now",
                            entry.resource_id)
                verdicts.append(TemporaryFailure("claim lost while the batch ran"))
                continue
            verdicts.append(self._one(context, entry))
        return verdicts

    def _one(self, context, entry: store.Entry) -> Exception | None:
        network_id, dvs_name = names.parse_port_group_resource(entry.resource_id)
        backend = self._backend
        if dvs_name not in set(backend.settings.dvs_mappings.values()):
            LOG.info("vsphere_dvs: DVS %s no longer mapped; port group of network %s left "
                     "alone", dvs_name, network_id)
            return None
        try:
            hosts = backend.binding_hosts(dvs_name)
            if usage.all_needed(context, backend, dvs_name, network_id, hosts):
                return None
            outcome = usage.release_if_unused(context, backend, dvs_name, network_id, hosts)
            if outcome in (usage.RELEASED, usage.IN_USE):   # IN_USE: bound again meanwhile
                return None
            if outcome == usage.BIND_RUNNING:
                # Neutron shows the port in a moment (or the bind failed): look again.
                return TemporaryFailure(f"port group of network {network_id} on {dvs_name} "
                                        "was just answered to a bind that ML2 has not "
                                        "committed yet; kept")
            return TemporaryFailure(f"port group of network {network_id} on {dvs_name} is "
                                    "still used by VMs Neutron does not know; kept")
        except (errors.VCenterError, db_exc.DBError) as exc:
            return failure_of(exc)


def failure_of(exc: errors.VCenterError | db_exc.DBError) -> Exception:
    """A journal entry's verdict on a vCenter or database error (the vsphere_dvs workers').

    A DVS, cluster or datacenter not found (an inventory being rebuilt) is retried like
    every temporary fault; so is a database error (e.g. the guard row's lock not granted
    in time during a long delete by the sweep).  A permanent fault fails the entry, which
    is listed with the message: the fault leads it.
    """
    if isinstance(exc, db_exc.DBError):
        return TemporaryFailure(f"database: {exc}")
    if exc.temporary or isinstance(exc, errors.VCenterNotFound):
        return TemporaryFailure(str(exc))
    return PermanentFailure(str(exc))


class PortGroupWorker(JournalWorker):
    def __init__(self, runtime: "Runtime") -> None:
        super().__init__("vsphere_dvs journal worker",
                         PortGroupRelease(runtime.require_vcenter(),
                                          runtime.worker_settings.claim_timeout),
                         runtime.worker_settings,
                         resource_types=(names.RESOURCE_PORT_GROUP,))
        self.start_after = runtime.wait_for_leaves
