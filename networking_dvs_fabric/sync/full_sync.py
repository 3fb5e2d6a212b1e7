"""The full sync the fabric worker runs: at start, periodically, and when a backend
changed identity.

Level-triggered, as a controller is: drift made while no worker ran (a leaf or a
port group changed by hand, a leaf replaced while every worker was down) is in no
journal, so a worker that starts reconciles everything once.  Later, a vCenter that
came back with a new instance UUID (restored, rebuilt), or that made our session
log in again (restarted - the lab's simulator then comes back with an empty
inventory), may have lost our port groups; a leaf that came back with a new switch
row (its database was remade: a replaced switch) has lost its bindings.  Neither
tells Neutron.  So the worker runs the same audit + repair as ``dvs-fabric sync``
when an identity changed, when a backend that did not answer before answers for the
first time, and every ``full_sync_interval``.

When it looks: a leaf's identity is known in memory (its connection follows its
Physical_Switch row and wakes the fabric worker when it changes,
``fabric/ovsdb_conn.py``), so it is checked on every pass of the worker
(:meth:`FullSync.run_if_leaf_changed`): a replaced leaf is reprogrammed at once.
vCenter's costs a round trip, so it is asked, and leaves not connected yet are
opened, on the worker's housekeeping (:meth:`FullSync.run_if_due`, every 10 s).

Two parts, the leaves first: a worker that starts after an outage puts the networks
made meanwhile on the leaves before it reads all of vCenter.  A leaf's new identity
needs only the leaves' part, vCenter's only the port groups'; the start and the
interval need both.  At the start and on a new identity the leaves' part runs on the
fabric worker's thread, before its batches, converging with the worker's own handler.
The port groups' part, and the periodic sync's leaves' part (its audit reads every
leaf: ~10 s at 4,000 networks), run on a thread beside the worker once it runs
(``parts_thread.py``; inline when the sync is run by hand), so the worker's batches
do not wait for them; that leaves' part converges with a sibling of the worker's
handler (``FabricSync.sibling``), under the journal's claims as any repair.  The port
groups' part waits for the vCenter watcher's first full read where a watcher runs in
the same process (``start_order.py``): where each VM runs matters more to traffic.

One process at a time: every periodic-worker process has a fabric worker, and a
full sync reads every leaf and all of vCenter.  The sync runs holding the lease
``full-sync`` (``journal/lease.py``), renewed while either part runs and released
after the last (``lease_hold.py``).  A process that finds it held does not run one:
for the start and the interval, someone is reconciling everything right now (its
own interval starts again); a changed identity waits for the lease instead (the
running sync may have read that backend before it changed) and is synced on a later
housekeeping pass.  Within the process, a port groups' part asked for while one
runs runs again after it.

A sync never writes older state than the workers have written since its audit: the
repair converges the drifted networks from Neutron's state read again, under the
journal's claim, with the fabric worker's own handler (``converge.py``), and reads
again what a network's port groups need just before writing them (``repair.py``).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent import futures
from typing import Callable

from neutron_lib import context as n_context

from networking_dvs_fabric.fabric.api import FabricError
from networking_dvs_fabric.journal import lease
from networking_dvs_fabric.runtime import Runtime
from networking_dvs_fabric.sync.audit import Parts, audit
from networking_dvs_fabric.sync.converge import Handler
from networking_dvs_fabric.sync.lease_hold import LeaseHold
from networking_dvs_fabric.sync.parts_thread import PartsThread
from networking_dvs_fabric.sync.repair import repair
from networking_dvs_fabric.vcenter import errors

LOG = logging.getLogger(__name__)

LEASE = "full-sync"
LEASE_TTL = 60.0          # a holder that died mid-sync is replaced after this
RENEW_INTERVAL = 20.0
OPEN_PARALLEL = 8          # leaf connections opened at once
LEAVES, PORT_GROUPS = "leaves", "port groups"
BOTH = frozenset({LEAVES, PORT_GROUPS})


def _parts_for(keys: list[str]) -> frozenset[str]:
    """The parts an identity change of these backends needs synced."""
    return frozenset(([LEAVES] if any(k.startswith("leaf ") for k in keys) else []) +
                     ([PORT_GROUPS] if "vcenter" in keys else []))


class FullSync:
    def __init__(self, runtime: Runtime, handler: Handler | None = None,
                 wake: Callable[[], None] | None = None) -> None:
        """``handler``: the fabric worker's (``FabricSync``), which the repair then
        converges the leaves with (default: one of its own).  ``wake``: makes the
        fabric worker's next pass come now (``JournalWorker.wake``)."""
        self._runtime = runtime
        self._handler = handler
        self._wake = wake
        self.interval = runtime.fabric_settings.full_sync_interval
        self._last = time.monotonic()
        self._identities: dict[str, str] = {}
        self._started = False              # the first due() is the worker's start
        self._waiting: dict[str, frozenset[str]] = {}   # changes not synced: parts
        self._hold = LeaseHold(LEASE, LEASE_TTL, RENEW_INTERVAL)
        self._beside: PartsThread | None = None   # None: every part inline
        self._beside_stopping = threading.Event()
        self.runs = 0
        self.skipped = 0

    @property
    def _holder(self) -> str:
        return self._hold.holder

    # -- beside the fabric worker, in its process (``FabricWorker.add_companion``) --
    def start(self) -> None:
        """From now on the port groups' part, and the periodic sync's leaves' part, run
        on a thread of their own, and a leaf showing a new identity wakes the fabric
        worker."""
        self._beside_stopping.clear()
        self._beside = PartsThread(self._parts_beside, self._dropped)
        self._beside.start()
        fabric = self._fabric()
        if fabric is not None and self._wake is not None:
            fabric.on_identity_change(self._leaf_changed)

    def stop(self) -> None:
        self._beside_stopping.set()
        if self._beside is not None:
            self._beside.stop()

    def join(self) -> None:
        if self._beside is not None:
            self._beside.join()

    def wait_idle(self, timeout: float) -> bool:
        """Wait for the parts handed to the thread (tests, a clean stop)."""
        return self._beside is None or self._beside.wait_idle(timeout)

    def _leaf_changed(self, leaf: str) -> None:
        LOG.info("full sync: leaf %s shows a new identity; waking the fabric worker", leaf)
        assert self._wake is not None
        self._wake()

    # -- the fabric worker's hooks -------------------------------------------------
    def run_if_leaf_changed(self, context) -> None:
        """Every pass: a leaf's new identity (from memory) syncs the leaves now."""
        if not self._started:
            return                         # the start sync comes first
        if self._note(self._leaf_identities(wait=False)):
            LOG.info("full sync: %s, seen on a pass", "; ".join(self._waiting))
            self._run_waiting(context)

    def run_if_due(self, context) -> None:
        """Housekeeping: run a full sync if one is due and no other process runs one."""
        why = self.due()
        if why:
            self._run_waiting(context, why)

    def due(self) -> str | None:
        """Why a full sync should run now (None: it should not); reads every identity."""
        parts = self._parts()
        self._note({**self._vcenter_identity(parts), **self._leaf_identities(wait=True)})
        if self._waiting:
            return "; ".join(self._waiting)
        if not self._started:
            return "worker start"
        if self.interval and time.monotonic() - self._last >= self.interval:
            return f"{self.interval:.0f} s since the last full sync"
        return None

    # -- identities ------------------------------------------------------------------
    def _note(self, now: dict[str, str]) -> bool:
        """Compare with the identities known; True when a change is newly waiting."""
        changed = sorted(k for k, v in now.items() if self._identities.get(k, v) != v)
        # A backend answering for the first time after the start sync: it was not
        # read then (a leaf down at start), so what it holds was never checked.
        first = sorted(k for k in now if k not in self._identities) if self._started else []
        self._identities.update(now)
        news = {}
        if changed:
            news[f"new identity of {', '.join(changed)}"] = _parts_for(changed)
        if first:
            news[f"first answer from {', '.join(first)}"] = _parts_for(first)
        self._waiting.update(news)
        return bool(news)

    def _vcenter_identity(self, parts: Parts) -> dict[str, str]:
        if parts.vsphere is None:
            return {}
        # A channel of its own (a handle, no login): on the shared handle this check,
        # run in the fabric worker's housekeeping, would wait behind any long call of
        # the process (a listing, a task being waited for) and hold back the leaves.
        session = parts.vsphere.session.channel()
        try:
            # One round trip: a vCenter that restarted makes the session log in again.
            uuid = session.invoke(
                lambda si: (si.CurrentTime(), si.content.about.instanceUuid)[1],
                "read vCenter's instance UUID")
        except errors.VCenterError:
            return {}          # unreachable: nothing to compare until it answers
        return {"vcenter": f"{uuid} login {session.logins}"}

    def _fabric(self):
        return self._runtime.fabric if self._runtime.topology is not None else None

    def _leaf_identities(self, wait: bool) -> dict[str, str]:
        """Each leaf's identity: from memory where its connection is open and synced;
        ``wait``: else asked (opening the connection, bounded by its timeout)."""
        fabric = self._fabric()
        if fabric is None:
            return {}
        leaves = list(self._runtime.require_topology().leaves)
        known = {leaf: fabric.known_identity(leaf) for leaf in leaves}
        unknown = [leaf for leaf, identity in known.items() if identity is None]
        if wait and unknown:
            # Opened side by side: each connection's first read is its leaf's whole
            # database (seconds with thousands of networks), mostly the switch's time.
            with futures.ThreadPoolExecutor(max_workers=min(OPEN_PARALLEL, len(unknown)),
                                            thread_name_prefix="leaf-open") as pool:
                known.update(zip(unknown, pool.map(
                    lambda leaf: _asked_identity(fabric, leaf), unknown)))
        return {f"leaf {leaf}": identity for leaf, identity in known.items() if identity}

    def _parts(self) -> Parts:
        return Parts.of(self._runtime)

    # -- running -----------------------------------------------------------------------
    def _run_waiting(self, context, why: str | None = None) -> None:
        """Run what waits (or ``why``: the start, the interval) under the lease."""
        parts_due = frozenset().union(*self._waiting.values()) if self._waiting else BOTH
        # Only the periodic sync lets the leaves' part wait beside the worker: at the
        # start and on a new identity the leaves come before anything else.
        periodic = self._started and not self._waiting
        why = why or "; ".join(self._waiting)
        if not parts_due:
            self._waiting = {}
            return
        if not self._hold.take(context):
            self._skip(context, why)
            return
        try:
            self.run(context, why, parts_due, leaves_beside=periodic)
        finally:
            self._hold.give(context)

    def _skip(self, context, why: str) -> None:
        held = lease.holder_of(context, LEASE)
        self.skipped += 1
        self._started = True
        if self._waiting:
            LOG.info("full sync (%s) waits: %s runs one now", why,
                     held[0] if held else "another process")
            return
        self._last = time.monotonic()
        LOG.info("full sync (%s) not run here: %s runs one now", why,
                 held[0] if held else "another process")

    def run(self, context, why: str, parts_due: frozenset[str] = BOTH,
            leaves_beside: bool = False) -> None:
        """The parts due, the leaves first; the caller holds the lease (one count).
        Once started beside a fabric worker, the port groups' part (and with
        ``leaves_beside`` the leaves' too) is handed to the thread beside it."""
        if parts_due >= BOTH:
            self._last = time.monotonic()
        self._started = True
        self._waiting = {}
        self.runs += 1
        if self._beside is None:
            for what in (LEAVES, PORT_GROUPS):
                if what in parts_due:
                    self._sync(context, why, what)
            return
        if LEAVES in parts_due and not leaves_beside:
            self._sync(context, why, LEAVES)
            parts_due = parts_due - {LEAVES}
        if parts_due:
            # Its own count on the lease, given back when the thread has run it.
            self._hold.take(context)
            self._beside.submit((why, parts_due))

    def _parts_beside(self, items: list[tuple[str, frozenset[str]]]) -> None:
        context = n_context.get_admin_context()
        why = "; ".join(dict.fromkeys(reason for reason, _ in items))
        parts = frozenset().union(*(due for _, due in items))
        try:
            if LEAVES in parts:
                try:
                    self._sync(context, why, LEAVES, self._beside_handler())
                except Exception:  # noqa: BLE001 - the port groups' part runs all the same
                    LOG.exception("full sync (%s): the leaves' part failed", why)
            if PORT_GROUPS in parts:
                # After the watcher's first read, where one runs in this process.
                self._runtime.wait_for_watcher_read(self._beside_stopping)
                self._sync(context, why, PORT_GROUPS)
        finally:
            for _ in items:
                self._hold.give(context)

    def _beside_handler(self) -> Handler | None:
        """The fabric worker's handler for another thread (None: the repair's own)."""
        sibling = getattr(self._handler, "sibling", None)
        return sibling() if sibling is not None else self._handler

    def _dropped(self, items: list[tuple[str, frozenset[str]]]) -> None:
        context = n_context.get_admin_context()
        LOG.info("full sync: %s not run: stopping",
                 "; ".join(f"{' and '.join(sorted(due))} ({reason})" for reason, due in items))
        for _ in items:
            self._hold.give(context)

    def _sync(self, context, why: str, what: str, handler: Handler | None = None) -> None:
        parts = self._parts()
        part = (dataclasses.replace(parts, vsphere=None) if what == LEAVES else
                dataclasses.replace(parts, topology=None, fabric=None))
        started = time.monotonic()
        report = audit(context, part)
        if not report.drifts:
            LOG.info("full sync (%s): %s: nothing to repair (audit %.1f s)%s", why, what,
                     time.monotonic() - started,
                     f"; unreadable: {report.unreachable}" if report.unreachable else "")
            return
        LOG.warning("full sync (%s): %s: %d drifts (audit %.1f s), repairing", why, what,
                    len(report.drifts), time.monotonic() - started)
        done = repair(context, part, report,
                      lambda text: LOG.info("full sync: %s", text), handler or self._handler)
        for failure in done.failures:
            LOG.warning("full sync: %s", failure)
        LOG.info("full sync (%s): %s repaired in %.1f s", why, what,
                 time.monotonic() - started)


def _asked_identity(fabric, leaf: str) -> str | None:
    """The leaf's identity, opening its connection (None: it does not answer now)."""
    try:
        return fabric.identity(leaf)
    except FabricError:
        return None
