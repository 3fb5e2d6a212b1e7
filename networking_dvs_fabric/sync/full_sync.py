"""The full sync the fabric worker runs: at start, periodically, and when a backend
changed identity.

Level-triggered, as a controller is: drift made while no worker ran (a leaf or a
port group changed by hand, a leaf replaced while every worker was down) is in no
journal, so a worker that starts reconciles everything once.  Later, a vCenter that
came back with a new instance UUID (restored, rebuilt), or that made our session
log in again (restarted - the lab's simulator then comes back with an empty
inventory), may have lost our port groups; a leaf that came back with a new switch
row (its database was remade) has lost its bindings.  Neither tells Neutron.  So
the worker looks at the identities on every housekeeping pass and runs the same
audit + repair as ``dvs-fabric sync`` when one changed, when a backend that did not
answer before answers for the first time, and every ``full_sync_interval``.

One process at a time: every periodic-worker process has a fabric worker, and a
full sync reads every leaf and all of vCenter.  The sync runs holding the lease
``full-sync`` (``journal/lease.py``), renewed while it runs and released after.  A
process that finds it held does not run one: for the start and the interval,
someone is reconciling everything right now (its own interval starts again); a
changed identity waits for the lease instead (the running sync may have read that
backend before it changed) and is synced on a later pass.

A sync never writes older state than the workers have written since its audit: the
repair converges the drifted networks from Neutron's state read again, under the
journal's claim, with the fabric worker's own handler (``converge.py``).

It checks leaves and port groups alike (the leaves first: a worker that starts after
an outage puts the networks made meanwhile on the leaves before it reads all of
vCenter), so it lives with the audit and the repair it runs;
``fabric_hwvtep.get_workers`` hangs it on the fabric worker's housekeeping
(``FullSync.run_if_due``).
"""
from __future__ import annotations

import dataclasses
import logging
import time

from networking_dvs_fabric.fabric.api import FabricError
from networking_dvs_fabric.journal import lease, store
from networking_dvs_fabric.runtime import Runtime
from networking_dvs_fabric.sync.audit import Parts, audit
from networking_dvs_fabric.sync.converge import Handler
from networking_dvs_fabric.sync.repair import repair
from networking_dvs_fabric.vcenter import errors

LOG = logging.getLogger(__name__)

LEASE = "full-sync"
LEASE_TTL = 60.0          # a holder that died mid-sync is replaced after this
RENEW_INTERVAL = 20.0


class FullSync:
    def __init__(self, runtime: Runtime, handler: Handler | None = None) -> None:
        """``handler``: the fabric worker's (``FabricSync``), which the repair then
        converges the leaves with (default: one of its own)."""
        self._runtime = runtime
        self._handler = handler
        self.interval = runtime.fabric_settings.full_sync_interval
        self._last = time.monotonic()
        self._identities: dict[str, str] = {}
        self._started = False              # the first due() is the worker's start
        self._waiting: list[str] = []      # identity changes not synced yet
        self._holder = ""                  # made in the worker's process, at first use
        self.runs = 0
        self.skipped = 0

    def _current_identities(self, parts: Parts) -> dict[str, str]:
        found: dict[str, str] = {}
        if parts.vsphere is not None:
            session = parts.vsphere.session
            try:
                # One round trip: a vCenter that restarted makes the session log in again.
                uuid = session.invoke(
                    lambda si: (si.CurrentTime(), si.content.about.instanceUuid)[1],
                    "read vCenter's instance UUID")
                found["vcenter"] = f"{uuid} login {session.logins}"
            except errors.VCenterError:
                pass           # unreachable: nothing to compare until it answers
        if parts.topology is not None and parts.fabric is not None:
            for leaf in parts.topology.leaves:
                try:
                    identity = parts.fabric.identity(leaf)
                except FabricError:
                    continue
                if identity:
                    found[f"leaf {leaf}"] = identity
        return found

    def _parts(self) -> Parts:
        return Parts.of(self._runtime)

    def run_if_due(self, context) -> None:
        """Run a full sync if one is due and no other process runs one now."""
        why = self.due()
        if not why:
            return
        if not self._holder:
            self._holder = store.make_worker_id()
        if not lease.acquire(context, LEASE, self._holder, LEASE_TTL):
            self._skip(context, why)
            return
        try:
            with lease.Renewer(LEASE, self._holder, LEASE_TTL, RENEW_INTERVAL):
                self.run(context, why)
        finally:
            lease.release(context, LEASE, self._holder)

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

    def due(self) -> str | None:
        """Why a full sync should run now (None: it should not)."""
        parts = self._parts()
        now = self._current_identities(parts)
        changed = sorted(k for k, v in now.items() if self._identities.get(k, v) != v)
        # A backend answering for the first time after the start sync: it was not
        # read then (a leaf down at start), so what it holds was never checked.
        first = sorted(k for k in now if k not in self._identities) if self._started else []
        self._identities.update(now)
        news = ([f"new identity of {', '.join(changed)}"] if changed else []) + (
            [f"first answer from {', '.join(first)}"] if first else [])
        self._waiting += [n for n in news if n not in self._waiting]
        if self._waiting:
            return "; ".join(self._waiting)
        if not self._started:
            return "worker start"
        if self.interval and time.monotonic() - self._last >= self.interval:
            return f"{self.interval:.0f} s since the last full sync"
        return None

    def run(self, context, why: str) -> None:
        self._last = time.monotonic()
        self._started = True
        self._waiting = []
        parts = self._parts()
        self.runs += 1
        # The leaves first, then the port groups: what a worker start finds drifted
        # on the leaves (networks made while no worker ran) is put right before all
        # of vCenter's port groups and their filters are read.
        for what, part in (("leaves", dataclasses.replace(parts, vsphere=None)),
                           ("port groups", dataclasses.replace(parts, topology=None,
                                                               fabric=None))):
            report = audit(context, part)
            if not report.drifts:
                LOG.info("full sync (%s): %s: nothing to repair%s", why, what,
                         f"; unreadable: {report.unreachable}" if report.unreachable
                         else "")
                continue
            LOG.warning("full sync (%s): %s: %d drifts, repairing", why, what,
                        len(report.drifts))
            done = repair(context, part, report,
                          lambda text: LOG.info("full sync: %s", text), self._handler)
            for failure in done.failures:
                LOG.warning("full sync: %s", failure)
