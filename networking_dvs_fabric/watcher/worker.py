"""The vCenter watcher: where each Neutron port's VM really runs, kept in the database.

Runs in ``neutron-periodic-workers`` (``fabric_hwvtep.get_workers``), on a
channel of the process's one vCenter login (``runtime.py``).  Every such
process starts one, but only the holder of the vCenter's lease watches; the others
stand by and take over within ``LEASE_TTL`` + ``STANDBY_INTERVAL`` seconds when the
holder dies.  Watching is ``vcenter/vm_watch.py`` (one PropertyCollector,
``WaitForUpdatesEx``, plus the event stream for migration starts); each VM's claims
are checked (``claims.py``: which vNIC carries which port), what it sees goes to
``dvs_fabric_port_locations`` (``db/locations.py``), and every network whose
picture changed is recorded in the journal for the fabric worker, woken at once.

On start and after any reconnect the whole picture is read again, so moves that
happened while no watcher ran are caught; its claims are checked with one read of
Neutron's ports and it is written in one transaction (``full_read.py``).

The lease: the holder renews it from a thread of its own (``lease.Renewer``), so a
full read of a big vCenter, or a call queued behind a long vCenter task on the
process's one login, does not let it expire under a working holder.  Every
location write is fenced (``lease.check_held`` in the write's transaction): a
watcher that lost its lease - a takeover after its renewals failed - writes
nothing once another one may have started, stops, and reads everything again if
it gets the lease back.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Iterable

from neutron_lib import context as n_context
from neutron_lib.db import api as db_api

from networking_dvs_fabric import names
from networking_dvs_fabric.db import locations
from networking_dvs_fabric.journal import lease, store
from networking_dvs_fabric.thread_worker import ThreadWorker
from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.watcher import full_read
from networking_dvs_fabric.watcher.claims import ClaimChecker

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)
LEASE_TTL = 10.0              # a dead holder is replaced within TTL + STANDBY_INTERVAL
RENEW_INTERVAL = 3.0          # by the renewer thread, while the holder watches or reads
STANDBY_INTERVAL = 1.0        # a standby's try: one UPDATE of the lease row a second
WAIT_SECONDS = 2              # the watch's long poll: a lost lease is noticed this soon


class VCenterWatcher(ThreadWorker):
    name = "vCenter watcher"
    thread_name = "dvs-vcenter-watcher"

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__()
        self._runtime = runtime
        self._backend = runtime.require_vcenter()
        self._waker = runtime.waker
        self._claims = ClaimChecker(self._backend)
        self.lease_name = f"vcenter-watcher:{self._backend.session.config.url}"
        self._watch = None
        self.worker_id = ""
        self.holding = False

    # -- ThreadWorker -----------------------------------------------------------
    def _before_start(self) -> None:
        self.worker_id = store.make_worker_id()
        # Started, not only made: the start's port-group audit waits for its first read.
        self._runtime.expect_watcher_read()

    def start(self, name: str | None = None, desc: str | None = None) -> None:
        super().start(name=name, desc=desc)
        LOG.info("vCenter watcher %s started (lease %s)", self.worker_id, self.lease_name)

    def stop(self) -> None:
        super().stop()
        watch = self._watch
        if watch is not None:
            watch.cancel()

    # -- the loop -------------------------------------------------------------
    def _loop(self) -> None:
        context = n_context.get_admin_context()
        self._runtime.wait_for_leaves(self._stop)     # its full read after the leaves'
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
                    self._runtime.watcher_read_done()     # another process reads
                    self._stop.wait(STANDBY_INTERVAL)
            except lease.LeaseLost:
                LOG.warning("vCenter watcher %s lost %s: wrote nothing more; standing by",
                            self.worker_id, self.lease_name)
                self.holding = False
                self._stop.wait(STANDBY_INTERVAL)
            except errors.VCenterError as exc:
                LOG.warning("vCenter watcher: %s; reading everything again in 2 s", exc)
                self._runtime.watcher_read_done()         # the start's audit need not wait
                self._stop.wait(2.0)
            except Exception:  # noqa: BLE001 - a DB restart must not end the watcher
                LOG.exception("vCenter watcher failed; retrying in 2 s")
                self._runtime.watcher_read_done()
                self._stop.wait(2.0)
        self._runtime.watcher_read_done()
        if self.holding:
            try:
                lease.release(context, self.lease_name, self.worker_id)
            except Exception:  # noqa: BLE001 - it expires anyway
                pass

    def _watch_while_holding(self, context) -> None:
        from networking_dvs_fabric.vcenter.vm_watch import VmWatch
        # A channel of the backend's login: the long poll runs beside the drivers' calls.
        session = self._backend.session.channel()
        renewer = lease.Renewer(self.lease_name, self.worker_id, LEASE_TTL, RENEW_INTERVAL)
        try:
            with renewer:
                inventory = self._backend.inventory()
                watch = VmWatch(session, inventory.datacenter_moid,
                                wait_seconds=WAIT_SECONDS)
                self._watch = watch
                try:
                    started = time.monotonic()
                    states = watch.resync()
                    read = time.monotonic()
                    seen = self._seen_all(context, states)
                    changed = self._fenced(context, full_read.set_all, seen)
                    self._wake(changed)
                    self._runtime.watcher_read_done()
                    LOG.info("vCenter watcher: full read, %(vms)d VMs, %(ports)d ports "
                             "placed, %(nets)d networks to check (vCenter %(read).1f s, "
                             "database %(db).1f s)",
                             {"vms": len(states), "ports": len(seen), "nets": len(changed),
                              "read": read - started, "db": time.monotonic() - read})
                    while not self._stop.is_set() and not renewer.lost.is_set():
                        self._wake(self.apply(context, watch.wait()))
                finally:
                    self._watch = None
                    watch.close()
        finally:
            session.close()
        if renewer.lost.is_set():
            raise lease.LeaseLost(name=self.lease_name, holder=self.worker_id)

    @db_api.retry_if_session_inactive()
    def _fenced(self, context, write: Callable[..., set[str]], *args) -> set[str]:
        """``write(context, *args)`` in one transaction with the check that this
        watcher still holds the lease (``lease.LeaseLost`` if not: nothing written)
        and with the journal rows of the networks it changed: a location is never
        written without the fabric being told (a full read that follows a failure
        would see no change)."""
        with db_api.CONTEXT_WRITER.using(context):
            lease.check_held(context, self.lease_name, self.worker_id)
            changed = write(context, *args)
            # One INSERT for all (a full read where every VM is new changes thousands).
            store.record_many(context, names.RESOURCE_NETWORK, sorted(changed), "location")
        return changed

    # -- what was seen -> locations -> journal --------------------------------
    def _seen_all(self, context, states: list) -> list[locations.Seen]:
        """Every checked port of the running VMs of a full read (placed in one go).
        Raises VCenterError when claims cannot be checked now: the loop reads again."""
        running = [state for state in states if state.powered_on and state.host]
        return [locations.Seen(nic.iface_id, state.moid, state.name, state.host, nic.mac,
                               nic.port_group_key)
                for state in self._claims.place_all(context, running)
                for nic in state.nics if nic.iface_id]

    def apply(self, context, changes: Iterable) -> set[str]:
        """Write what was seen (fenced by the lease, journaled in the same transaction);
        the networks whose picture changed."""
        changed: set[str] = set()
        try:
            self._apply(context, changes, changed)
        except Exception:
            self._wake(changed)           # what was written is journaled: start on it
            raise
        return changed

    def _apply(self, context, changes: Iterable, changed: set[str]) -> None:
        from networking_dvs_fabric.vcenter.vm_state import MigrationStarting, VmGone
        for change in changes:
            if isinstance(change, VmGone):
                changed |= self._fenced(context, locations.set_vm, change.moid, [])
            elif isinstance(change, MigrationStarting):
                LOG.info("vCenter watcher: VM %s is migrating to %s", change.vm_moid,
                         change.destination_host)
                changed |= self._fenced(context, locations.set_destination, change.vm_moid,
                                        change.destination_host)
            else:
                seen = []
                if change.powered_on and change.host:
                    try:
                        change = self._claims.place(context, change)
                    except errors.VCenterError as exc:
                        # Not skipped: the VM would not be looked at again until it
                        # changes.  Its ports stay where they were seen, and the full
                        # read that follows (the loop's retry) places them.
                        LOG.warning("vCenter watcher: claims of VM %(vm)s not checkable now "
                                    "(%(err)s); its ports stay where they were seen until "
                                    "the next full read", {"vm": change.name, "err": exc})
                        raise
                    seen = [locations.Seen(nic.iface_id, change.moid, change.name,
                                           change.host, nic.mac, nic.port_group_key)
                            for nic in change.nics if nic.iface_id]
                changed |= self._fenced(context, locations.set_vm, change.moid, seen)

    def _wake(self, networks: set[str]) -> None:
        """Tell the fabric workers (their journal rows are committed already)."""
        if networks:
            self._waker.wake()
