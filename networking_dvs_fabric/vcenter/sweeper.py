"""The periodic sweep: remove our port groups that no port needs any more.

Runs in ``neutron-periodic-workers`` (from the driver's ``get_workers``).  It is
level-triggered: it lists our port groups in vCenter, asks Neutron's database
whether any port of that network sits on a host of that DVS, and deletes the
unused ones - which also retries those kept earlier because a VM Neutron does
not know still used them.  A port group must look unused on two sweeps in a row
before it goes; the delete itself is guarded against binds in other processes
(``usage.release_if_unused``).  What the port groups of a DVS need is read for all of
them at once (``sweeper_needs``): a sweep costs a fixed number of queries per DVS
however many port groups there are, plus the releases it makes.

One port group or DVS that fails (a vCenter fault such as NoPermission on its
delete, or anything else) is logged, naming it and the error, and the sweep goes
on with the next port group and the next DVS; the failed one is tried again on
the next sweep.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from neutron_lib import context as n_context

from networking_dvs_fabric import ownership
from networking_dvs_fabric.thread_worker import ThreadWorker
from networking_dvs_fabric.vcenter import errors, sweeper_needs, usage
from networking_dvs_fabric.vcenter.portgroups import PortGroup

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)


class PortGroupSweeper(ThreadWorker):
    name = "vsphere_dvs port group sweeper"
    thread_name = "dvs-pg-sweeper"

    def __init__(self, runtime: "Runtime", interval: float | None = None) -> None:
        super().__init__()
        self._backend = runtime.require_vcenter()
        self._interval = runtime.sweep_interval if interval is None else interval
        self._suspects: set[tuple[str, str, str]] = set()   # (DVS, network, set)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep_once()
            except Exception:  # noqa: BLE001 - a sweep must never kill the worker
                LOG.exception("vsphere_dvs: port group sweep failed; next in %s s",
                              self._interval)

    def sweep_once(self) -> list[str]:
        """One pass; returns the names of the port groups it deleted."""
        backend = self._backend
        context = n_context.get_admin_context()
        deleted: list[str] = []
        suspects: set[tuple[str, str, str]] = set()
        # (DVS, network) -> the sets its ports need, read for all the DVS's port groups
        # at once.
        needed: dict[tuple[str, str], set[str]] = {}
        for dvs_name in sorted(set(backend.settings.dvs_mappings.values())):
            try:
                hosts = backend.binding_hosts(dvs_name)
                owned = self._ours(context, dvs_name)
                for network_id, sets in sweeper_needs.needed_sets(
                        context, {pg.network_id or "" for pg in owned}, hosts).items():
                    needed[(dvs_name, network_id)] = sets
            except errors.VCenterError as exc:
                LOG.warning("vsphere_dvs sweep: DVS %s not readable now: %s", dvs_name, exc)
                continue
            except Exception:  # noqa: BLE001 - one DVS must not end the sweep
                LOG.exception("vsphere_dvs sweep: DVS %s not readable now", dvs_name)
                continue
            for pg in owned:
                key = (dvs_name, pg.network_id or "", pg.set_key)
                try:
                    gone = self._sweep_one(context, key, hosts, suspects,
                                           needed.get(key[:2], set()))
                except errors.VCenterError as exc:
                    LOG.warning("vsphere_dvs sweep: port group %(pg)s on DVS %(dvs)s not "
                                "removed (%(kind)s error, tried again next sweep): %(err)s",
                                {"pg": pg.name, "dvs": dvs_name, "err": exc,
                                 "kind": "temporary" if exc.temporary else "permanent"})
                    gone = False
                except Exception:  # noqa: BLE001 - one port group must not end the sweep
                    LOG.exception("vsphere_dvs sweep: port group %(pg)s on DVS %(dvs)s not "
                                  "removed (tried again next sweep)",
                                  {"pg": pg.name, "dvs": dvs_name})
                    gone = False
                if gone:
                    deleted.append(pg.name)
                elif gone is False and key in self._suspects:
                    suspects.add(key)       # looked unused twice already: retried next time
        self._suspects = suspects
        if deleted:
            LOG.info("vsphere_dvs sweep removed port groups: %s", ", ".join(deleted))
        return deleted

    def _ours(self, context, dvs_name: str) -> list[PortGroup]:
        """This deployment's port groups on the DVS, after adopting the legacy ones
        (made before deployments had ids) whose network this Neutron has.  Another
        deployment's, and legacy ones of networks unknown here, are left alone."""
        backend = self._backend
        marked = backend.marked_port_groups(dvs_name)
        owned = list(marked[ownership.OURS])
        ours = sweeper_needs.existing(context, {pg.network_id or ""
                                                for pg in marked[ownership.LEGACY]})
        for pg in marked[ownership.LEGACY]:
            if (pg.network_id or "") not in ours:
                continue
            try:
                owned.append(backend.adopt_port_group(dvs_name, pg))
            except errors.VCenterError as exc:
                LOG.warning("vsphere_dvs sweep: port group %(pg)s of an earlier version not "
                            "adopted now: %(err)s", {"pg": pg.name, "err": exc})
        return owned

    def _sweep_one(self, context, key: tuple[str, str, str], hosts: set[str],
                   suspects: set[tuple[str, str, str]], needed: set[str]) -> bool | None:
        """True: deleted; False: tried and kept (a suspect again); None: not tried
        (still used, or suspected for the first time - then added to ``suspects``).

        ``key`` is (DVS, network, set): a network has a port group per set of its
        ports, and one whose set no port is in any more goes while the others stay.
        ``needed``: the sets the network's ports need now (``sweeper_needs``).
        """
        dvs_name, network_id, set_key = key
        if set_key in needed:
            return None
        if key not in self._suspects:
            suspects.add(key)
            return None
        # The release deletes every port group of the network no port needs (IN_USE:
        # those went, the ones still needed stay).
        return usage.release_if_unused(context, self._backend, dvs_name, network_id,
                                       hosts) in (usage.RELEASED, usage.IN_USE)
