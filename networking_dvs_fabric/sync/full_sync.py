"""The full sync the fabric worker runs: periodically, and when a backend changed identity.

A vCenter that came back with a new instance UUID (restored, rebuilt), or that made
our session log in again (restarted - the lab's simulator then comes back with an
empty inventory), may have lost our port groups; a leaf that
came back with a new switch row (its database was remade) has lost its bindings.
Neither tells Neutron: the journal holds nothing for them.  So the worker looks
at both identities on every housekeeping pass and, when one changed (or the
interval is up), runs the same audit + repair as ``dvs-fabric sync``.

It checks port groups and leaves alike, so it lives with the audit and the repair
it runs; ``fabric_hwvtep.get_workers`` hangs it on the fabric worker's
housekeeping (``FullSync.run_if_due``).
"""
from __future__ import annotations

import logging
import time

from networking_dvs_fabric.fabric.api import FabricError
from networking_dvs_fabric.runtime import Runtime
from networking_dvs_fabric.sync.audit import Parts, audit
from networking_dvs_fabric.sync.repair import repair
from networking_dvs_fabric.vcenter import errors

LOG = logging.getLogger(__name__)


class FullSync:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.interval = runtime.fabric_settings.full_sync_interval
        self._last = time.monotonic()
        self._identities: dict[str, str] = {}
        self.runs = 0

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
        why = self.due()
        if why:
            self.run(context, why)

    def due(self) -> str | None:
        """Why a full sync should run now (None: it should not)."""
        parts = self._parts()
        now = self._current_identities(parts)
        changed = sorted(k for k, v in now.items()
                         if k in self._identities and self._identities[k] != v)
        self._identities.update(now)
        if changed:
            return f"new identity of {', '.join(changed)}"
        if self.interval and time.monotonic() - self._last >= self.interval:
            return f"{self.interval:.0f} s since the last full sync"
        return None

    def run(self, context, why: str) -> None:
        self._last = time.monotonic()
        parts = self._parts()
        report = audit(context, parts)
        self.runs += 1
        if not report.drifts:
            LOG.info("full sync (%s): nothing to repair%s", why,
                     f"; unreadable: {report.unreachable}" if report.unreachable else "")
            return
        LOG.warning("full sync (%s): %d drifts, repairing", why, len(report.drifts))
        done = repair(context, parts, report, lambda text: LOG.info("full sync: %s", text))
        for failure in done.failures:
            LOG.warning("full sync: %s", failure)
