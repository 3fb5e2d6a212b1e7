"""What each wired NIC's link enforces: its port group's policy, read from vCenter, as flows.

The dataplane agent's half that plays ESXi's port filter.  ``LinkFilters`` keeps each
port group's policy as last read from vCenter (``security.vim_spec.policy_from_setting``
of its ``config.defaultPortConfig``; never Neutron's view), gives each link an
OpenFlow port number of its own, and installs, replaces and removes the link's flows
(``dataplane_filter``).  Fail closed: a port group whose setting cannot be read or
expressed blocks its NICs, and a bridge drops the frames of a link whose flows are not
there yet.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

from networking_dvs_fabric.lab import dataplane_filter as flows
from networking_dvs_fabric.lab.dataplane import Dataplane, host_bridge, host_uplink
from networking_dvs_fabric.lab.pg_settings import read_settings
from networking_dvs_fabric.lab.procs import LabError
from networking_dvs_fabric.security.model import BLOCKED_POLICY, PortGroupPolicy
from networking_dvs_fabric.security.vim_spec import policy_from_setting, vlan_from_setting
from networking_dvs_fabric.vcenter.session import VCenterSession

LOG = logging.getLogger("dataplane")
FIRST_OFPORT = 100      # below: the uplinks (1); the bridge itself is 65534


@dataclasses.dataclass(frozen=True)
class Wired:
    """Where one NIC of a VM is plugged in the dataplane."""
    host: str
    vlan: int
    mac: str
    address: str | None
    port_group: str | None = None
    policy: PortGroupPolicy | None = None     # what the link's flows enforce (None: none)
    ofport: int | None = None                 # the link's OpenFlow port number


class LinkFilters:
    def __init__(self, plane: Dataplane, session: VCenterSession) -> None:
        self.plane = plane
        self.session = session
        self.flow_dir: Path = plane.workdir / "flows"
        self.moids: dict[str, str] = {}                  # port group key -> moid
        self.policies: dict[str, PortGroupPolicy] = {}   # port group key -> as last read
        self.unreadable: set[str] = set()        # port groups whose setting made no sense
        self.ofports: dict[tuple[str, int], int] = {}    # (VM, NIC) -> OpenFlow port
        # Flows put on a vMotion's destination bridge at its start: (VM, NIC) -> (host,
        # policy).  ESXi carries a port's filter with the vMotion, before the switchover.
        self.staged: dict[tuple[str, int], tuple[str, PortGroupPolicy]] = {}

    def reset_bridges(self) -> None:
        """Every host bridge with its own flows only (none left of a former agent)."""
        for att in self.plane.attachments:
            flows.reset_bridge(self.plane, host_bridge(att["esxi_host"]),
                               [host_uplink(att["esxi_host"])], self.flow_dir)

    # -- port groups ----------------------------------------------------------------------
    def remember(self, key: str, setting: Any) -> tuple[PortGroupPolicy, int | None]:
        """The policy and VLAN of a port group's setting as read; fail closed on nonsense."""
        try:
            policy = policy_from_setting(setting)
            self.unreadable.discard(key)
        except Exception as exc:  # noqa: BLE001 - whatever vCenter holds, never open
            if key not in self.unreadable:
                LOG.error("dataplane: filter: port group %s holds a setting not understood "
                          "(%s); its NICs are blocked", key, exc)
            self.unreadable.add(key)
            policy = BLOCKED_POLICY
        self.policies[key] = policy
        return policy, vlan_from_setting(setting)

    def policy(self, key: str | None, fresh: bool = False) -> PortGroupPolicy:
        """The port group's policy: as the poll last read it, or (``fresh``) read now."""
        if key is None:
            return BLOCKED_POLICY
        if fresh or key not in self.policies:
            found = read_settings(self.session, [self.moids.get(key, key)])
            if not found:
                LOG.error("dataplane: filter: port group %s not found; its NICs are blocked",
                          key)
                return BLOCKED_POLICY
            self.remember(key, next(iter(found.values())))
        return self.policies[key]

    # -- links ------------------------------------------------------------------------------
    def ofport(self, moid: str, index: int) -> int:
        """A port number of the link's own, unique among the lab's links: its flows can
        name it before the link is on the bridge."""
        if (moid, index) not in self.ofports:
            used = set(self.ofports.values())
            self.ofports[(moid, index)] = next(n for n in range(FIRST_OFPORT, 65000)
                                               if n not in used)
        return self.ofports[(moid, index)]

    def stage(self, moid: str, index: int, wired: Wired, host: str) -> None:
        """A migration started: the link's flows on the destination's bridge now, so the
        switchover is only the link's move (``enforce`` finds them there)."""
        if wired.policy is None:
            return
        port = flows.PortFilter(self.plane.vm_link(moid, index), wired.mac, wired.vlan,
                                wired.policy, wired.ofport)
        started = time.monotonic()
        try:
            self._install(moid, index, host_bridge(host), port, False, attached=False)
        except LabError as exc:
            LOG.warning("dataplane: filter %s nic %d: not staged on %s (%s); installed at "
                        "the switchover", moid, index, host_bridge(host), exc)
            return
        self.staged[(moid, index)] = (host, wired.policy)
        LOG.info("dataplane: filter %s nic %d staged on %s for the migration in %.1f ms",
                 moid, index, host_bridge(host), (time.monotonic() - started) * 1000)

    def enforce(self, moid: str, index: int, wired: Wired, before: Wired | None, why: str,
                policy: PortGroupPolicy, attach: Callable[[], None] | None = None) -> Wired:
        """Install the link's flows for ``policy`` on its host's bridge; the wired NIC as
        it now is (``policy`` None when its flows could not be installed: the bridge
        drops the link's frames and the poll tries again).  ``attach`` puts the link on
        that bridge (a plug, a vMotion) and is called once its flows are there, so the
        link never runs without them; the flows are then taken off the bridge it left."""
        bridge = host_bridge(wired.host)
        was_blocked = before is not None and before.host == wired.host and \
            before.policy is not None and before.policy.blocked
        started = time.monotonic()
        port = flows.PortFilter(self.plane.vm_link(moid, index), wired.mac, wired.vlan,
                                policy, wired.ofport)
        staged = self.staged.pop((moid, index), None)
        try:
            try:
                if attach is not None and staged == (wired.host, policy):
                    count = 0       # on the bridge since the migration started
                else:
                    port, count = self._install(moid, index, bridge, port, was_blocked,
                                                attached=attach is None)
            except LabError as exc:
                LOG.error("dataplane: filter %s nic %d: flows not installed on %s (%s); "
                          "trying again", moid, index, bridge, exc)
                if attach is not None:
                    attach()        # the bridge drops its frames until the flows are in
                return dataclasses.replace(wired, policy=None)
            if attach is not None:
                attach()            # a failure here propagates, as a plug's always did
                try:
                    port = self._attached(moid, index, bridge, port)
                except (LabError, ValueError) as exc:
                    LOG.error("dataplane: filter %s nic %d: checking its port on %s failed "
                              "(%s); trying again", moid, index, bridge, exc)
                    return dataclasses.replace(wired, policy=None,
                                               ofport=self.ofports.get((moid, index)))
        finally:
            if before is not None and before.host != wired.host:
                self.remove(moid, index, before)
        LOG.info("dataplane: filter %s nic %d (%s) on %s: port group %s, %s; %d flows in "
                 "%.1f ms", moid, index, why, bridge, wired.port_group,
                 flows.summary(port.policy), count, (time.monotonic() - started) * 1000)
        return dataclasses.replace(wired, policy=port.policy, ofport=port.ofport)

    def _install(self, moid: str, index: int, bridge: str, port: flows.PortFilter,
                 was_blocked: bool, attached: bool) -> tuple[flows.PortFilter, int]:
        """The port's flows, or a blocked port's if its rules cannot be expressed."""
        try:
            return port, flows.install(self.plane, bridge, port, self.flow_dir, was_blocked,
                                       attached=attached)
        except flows.FilterError as exc:
            LOG.error("dataplane: filter %s nic %d: its port group's rules cannot be "
                      "enforced (%s); the NIC is blocked", moid, index, exc)
            port = dataclasses.replace(port, policy=BLOCKED_POLICY)
            return port, flows.install(self.plane, bridge, port, self.flow_dir, was_blocked,
                                       attached=attached)

    def _attached(self, moid: str, index: int, bridge: str,
                  port: flows.PortFilter) -> flows.PortFilter:
        """The link is on the bridge: it has the port number its flows name, or they are
        installed again for the one it got; a blocked link leaves flooding."""
        actual = self.plane.link_ofport(moid, index)
        if actual != port.ofport:
            LOG.warning("dataplane: filter %s nic %d: OpenFlow port %s taken on %s, got "
                        "%d; its flows again", moid, index, port.ofport, bridge, actual)
            self.ofports[(moid, index)] = actual
            port = dataclasses.replace(port, ofport=actual)
            flows.install(self.plane, bridge, port, self.flow_dir)
        elif port.policy.blocked:
            flows.set_flooding(self.plane, bridge, port.link, False)
        return port

    def remove(self, moid: str, index: int, wired: Wired) -> None:
        """The link's flows off the bridge of ``wired``'s host."""
        try:
            flows.remove(self.plane, host_bridge(wired.host), self.plane.vm_link(moid, index))
        except LabError as exc:
            LOG.warning("dataplane: filter %s nic %d: flows not removed from %s: %s", moid,
                        index, host_bridge(wired.host), exc)

    def forget(self, moid: str, index: int) -> None:
        self.ofports.pop((moid, index), None)
