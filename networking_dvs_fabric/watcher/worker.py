"""The vCenter watcher: where each Neutron port's VM really runs, kept in the database.

Runs in ``neutron-periodic-workers`` (``fabric_hwvtep.get_workers``).  Every such
process starts one, but only the holder of the vCenter's lease watches; the others
stand by and take over within ``LEASE_TTL`` + ``STANDBY_INTERVAL`` seconds when the
holder dies.  Watching is ``vcenter/vm_watch.py`` (one PropertyCollector,
``WaitForUpdatesEx``, plus the event stream for migration starts); what it sees
goes to ``dvs_fabric_port_locations``, and every network whose picture changed is
recorded in the journal for the fabric worker, which is woken at once.

On start and after any reconnect the whole picture is read again, so moves that
happened while no watcher ran are caught.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Iterable

from neutron_lib import context as n_context
from neutron_lib import worker
from neutron_lib.db import api as db_api

from networking_dvs_fabric.journal import lease, store
from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.watcher import locations

if TYPE_CHECKING:
    from networking_dvs_fabric.ml2.fabric_hwvtep import FabricHwvtepMechanismDriver

LOG = logging.getLogger(__name__)
LEASE_TTL = 10.0              # a dead holder is replaced within TTL + STANDBY_INTERVAL
RENEW_INTERVAL = 3.0
STANDBY_INTERVAL = 3.0
WAIT_SECONDS = 2              # the watch's long poll; bounded so the lease gets renewed
RESOURCE_NETWORK = "network"


class VCenterWatcher(worker.BaseWorker):
    def __init__(self, driver: "FabricHwvtepMechanismDriver") -> None:
        super().__init__(worker_process_count=0)
        self._driver = driver
        backend = driver.directory.backend        # type: ignore[union-attr]
        self._backend = backend
        self.lease_name = f"vcenter-watcher:{backend.session.config.url}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch = None
        self.worker_id = ""
        self.holding = False

    # -- BaseWorker -----------------------------------------------------------
    def start(self, name: str = "vCenter watcher", desc: str | None = None) -> None:
        super().start(name=name, desc=desc)
        self.worker_id = store.make_worker_id()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="dvs-vcenter-watcher",
                                        daemon=True)
        self._thread.start()
        LOG.info("vCenter watcher %s started (lease %s)", self.worker_id, self.lease_name)

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.cancel()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def reset(self) -> None:
        pass

    # -- the loop -------------------------------------------------------------
    def _loop(self) -> None:
        context = n_context.get_admin_context()
        while not self._stop.is_set():
            try:
                if lease.acquire(context, self.lease_name, self.worker_id, LEASE_TTL):
                    if not self.holding:
                        LOG.info("vCenter watcher %s holds %s: watching", self.worker_id,
                                 self.lease_name)
                    self.holding = True
                    self._watch_while_holding(context)
                else:
                    self.holding = False
                    self._stop.wait(STANDBY_INTERVAL)
            except errors.VCenterError as exc:
                LOG.warning("vCenter watcher: %s; reading everything again in 2 s", exc)
                self._stop.wait(2.0)
            except Exception:  # noqa: BLE001 - a DB restart must not end the watcher
                LOG.exception("vCenter watcher failed; retrying in 2 s")
                self._stop.wait(2.0)
        if self.holding:
            try:
                lease.release(context, self.lease_name, self.worker_id)
            except Exception:  # noqa: BLE001 - it expires anyway
                pass

    def _watch_while_holding(self, context) -> None:
        from networking_dvs_fabric.vcenter.vm_watch import VmWatch
        session = self._backend._session_factory()
        try:
            inventory = self._backend.inventory()
            watch = VmWatch(session, inventory.datacenter_moid, wait_seconds=WAIT_SECONDS)
            self._watch = watch
            try:
                states = watch.resync()
                changed = self.apply(context, states)
                changed |= locations.keep_only_vms(
                    context, [s.moid for s in states if self._ours(s)])
                self._journal(context, changed)
                LOG.info("vCenter watcher: full read, %d VMs, %d networks to check",
                         len(states), len(changed))
                renewed = time.monotonic()
                while not self._stop.is_set():
                    if time.monotonic() - renewed >= RENEW_INTERVAL:
                        if not lease.acquire(context, self.lease_name, self.worker_id,
                                             LEASE_TTL):
                            LOG.warning("vCenter watcher %s lost %s; standing by",
                                        self.worker_id, self.lease_name)
                            self.holding = False
                            return
                        renewed = time.monotonic()
                    self._journal(context, self.apply(context, watch.wait()))
            finally:
                self._watch = None
                watch.close()
        finally:
            session.close()

    # -- what was seen -> locations -> journal --------------------------------
    @staticmethod
    def _ours(state) -> bool:
        return any(nic.iface_id for nic in getattr(state, "nics", ()))

    def apply(self, context, changes: Iterable) -> set[str]:
        from networking_dvs_fabric.vcenter.vm_watch import MigrationStarting, VmGone
        changed: set[str] = set()
        for change in changes:
            if isinstance(change, VmGone):
                changed |= locations.set_vm(context, change.moid, [])
            elif isinstance(change, MigrationStarting):
                LOG.info("vCenter watcher: VM %s is migrating to %s", change.vm_moid,
                         change.destination_host)
                changed |= locations.set_destination(context, change.vm_moid,
                                                     change.destination_host)
            else:
                seen = []
                if change.powered_on and change.host:
                    seen = [locations.Seen(nic.iface_id, change.moid, change.name,
                                           change.host, nic.mac, nic.port_group_key)
                            for nic in change.nics if nic.iface_id]
                changed |= locations.set_vm(context, change.moid, seen)
        return changed

    def _journal(self, context, networks: set[str]) -> None:
        if not networks:
            return
        with db_api.CONTEXT_WRITER.using(context):
            for network_id in sorted(networks):
                store.record(context, RESOURCE_NETWORK, network_id, "location")
        self._driver.waker.wake()
