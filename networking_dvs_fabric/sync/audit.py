"""Audit: compare what Neutron says with what vCenter and every leaf hold.

Read-only.  Expected state comes from Neutron's database through the same code
the workers use (``fabric/intent.py``, ``fabric/desired.py``, ``sync/expected.py``);
actual state from vCenter (our port groups, read whole: VLAN, filter, security
policy, blocked) and from each leaf (``FabricBackend.read``: only what carries our
marker).  Port groups are compared per (network, DVS, set): one for each set of the
network's ports bound on hosts of that DVS, holding the set's policy
(``security/desired.py``); a policy changed by hand in vCenter is ``filter_drift``, a
set whose policy cannot be made (too many rules) ``filter_too_large`` (reported, not
repaired).  The report counts the project's port groups against
``[ml2_vsphere] max_port_groups``, from its own read.  A port whose NIC still sits
on another set's port group than its set needs (a move the policy worker has not
done: vCenter refused it, or it is under way) is ``port_set_pending``.  A backend
that cannot be read is reported as unreachable - never as empty, which would look
like "everything is missing" and, to a repair, like "delete everything".

Only this deployment's objects are compared (``ownership.py``).  Another
deployment's are listed as ``foreign`` and never repaired; a legacy object (made
before deployments had ids) is ours to adopt when this Neutron has its network
(drift ``*_legacy``, which the repair adopts), else foreign too.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from networking_dvs_fabric import ownership
from networking_dvs_fabric.fabric.api import FabricError, NetworkOnLeaf
from networking_dvs_fabric.fabric.desired import desired_state
from networking_dvs_fabric.fabric.intent import read_intents
from networking_dvs_fabric.runtime import Runtime
from networking_dvs_fabric.security import membership
from networking_dvs_fabric.sync import expected
from networking_dvs_fabric.sync.filter_drift import policy_difference
from networking_dvs_fabric.topology import HostDirectory, Topology
from networking_dvs_fabric.vcenter import errors, usage
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.portgroups import PortGroup


@dataclasses.dataclass(frozen=True)
class Parts:
    """What an audit or a sync works with (built from Neutron's configuration)."""

    topology: Topology | None
    directory: HostDirectory | None
    vsphere: VSphereBackend | None
    fabric: Any                      # FabricBackend
    mac_distribution: str = "controller"
    mode: str = "pre_provision"
    deployment: str | None = None    # this deployment's id (None: every marked object)

    @classmethod
    def of(cls, runtime: Runtime) -> "Parts":
        """The runtime's parts: what is configured (no topology: no leaves)."""
        topology = runtime.topology
        return cls(topology, runtime.directory, runtime.vcenter,
                   runtime.fabric if topology is not None else None,
                   runtime.fabric_settings.mac_distribution, runtime.fabric_settings.mode,
                   runtime.deployment_id)


@dataclasses.dataclass(frozen=True)
class Drift:
    kind: str          # port_group_missing, port_group_vlan, filter_drift, switch_*, ...
    where: str         # "vCenter DVS0" or "leaf1"
    network_id: str
    detail: str
    set_key: str = ""  # a port group's set (``security/model.set_key``); "" on leaves


@dataclasses.dataclass
class Report:
    drifts: list[Drift] = dataclasses.field(default_factory=list)
    unreachable: list[str] = dataclasses.field(default_factory=list)
    checked: dict[str, int] = dataclasses.field(default_factory=dict)
    # For a repair: the target per leaf and per DVS, as computed for this audit.
    leaf_targets: dict[str, dict[str, NetworkOnLeaf | None]] = dataclasses.field(
        default_factory=dict)
    port_groups: dict[expected.Key, expected.ExpectedPortGroup] = dataclasses.field(
        default_factory=dict)
    orphan_port_groups: list[expected.Key] = dataclasses.field(default_factory=list)
    # The project's port groups on the DVSs read: this deployment's ("ours", None when a
    # DVS could not be read), every deployment's ("marked") and the limit.
    port_group_count: dict[str, int | None] = dataclasses.field(default_factory=dict)
    # Other deployments' objects (and legacy ones of networks this Neutron lacks):
    # reported, never touched.
    foreign: list[str] = dataclasses.field(default_factory=list)
    legacy_port_groups: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    # Ports whose NIC is still to be moved to their set's port group (for a repair).
    pending_moves: list[str] = dataclasses.field(default_factory=list)
    deployment: str | None = None

    @property
    def exit_code(self) -> int:
        return 2 if self.unreachable else (1 if self.drifts else 0)


def audit(context, parts: Parts) -> Report:
    report = Report(deployment=parts.deployment)
    if parts.vsphere is not None:
        _audit_port_groups(context, parts.vsphere, report)
    if parts.topology is not None and parts.fabric is not None:
        _audit_leaves(context, parts, report)
    return report


def _audit_port_groups(context, vsphere: VSphereBackend, report: Report) -> None:
    mappings = dict(vsphere.settings.dvs_mappings)
    hosts: dict[str, set[str]] = {}
    for dvs_name in sorted(set(mappings.values())):
        try:
            hosts[dvs_name] = vsphere.binding_hosts(dvs_name)
        except errors.VCenterError as exc:
            report.unreachable.append(f"vCenter DVS {dvs_name}: {exc}")
    wanted = expected.port_groups(context, mappings, hosts)
    report.port_groups = wanted
    policies = expected.policies(context, {(net, key) for _, net, key in wanted})
    # A count of part of vCenter would read as the whole: None if a DVS is unread.
    ours: int | None = 0 if len(hosts) == len(set(mappings.values())) else None
    marked_count = 0
    for dvs_name in sorted(hosts):
        where = f"vCenter DVS {dvs_name}"
        try:
            marked = vsphere.marked_port_groups(dvs_name, full=True)
        except errors.VCenterError as exc:
            report.unreachable.append(f"{where}: {exc}")
            ours = None
            continue
        have = _ours_on(context, where, dvs_name, marked, report)
        report.checked[where] = len(have)
        marked_count += sum(len(pgs) for pgs in marked.values())
        if ours is not None:
            ours += len(have)
        for (dvs, network_id, set_key), want in sorted(wanted.items()):
            if dvs == dvs_name:
                _compare_port_group(report, where, want, have.get((network_id, set_key)),
                                    policies[(network_id, set_key)])
        for (network_id, set_key), pg in sorted(have.items()):
            if (dvs_name, network_id, set_key) not in wanted:
                report.drifts.append(Drift("port_group_orphan", where, network_id,
                                           f"port group {pg.name!r} (ours, set {set_key}) "
                                           "has no bound port of its set", set_key))
                report.orphan_port_groups.append((dvs_name, network_id, set_key))
    report.port_group_count = {"ours": ours,
                               "marked": marked_count if ours is not None else None,
                               "limit": vsphere.settings.max_port_groups}
    for move in membership.pending_moves(context):
        report.pending_moves.append(move.port_id)
        report.drifts.append(Drift(
            "port_set_pending", "vCenter", move.network_id,
            f"port {move.port_id}: its NIC is on the port group of set {move.plugged}, "
            f"its groups need set {move.wanted} (a move not done; `dvs-fabric journal "
            "--state failed` says why if vCenter refused it)", move.wanted))


def _ours_on(context, where: str, dvs_name: str, marked: dict[str, list[PortGroup]],
             report: Report) -> dict[tuple[str, str], PortGroup]:
    """(network, set) -> our port group on the DVS; legacy ones of our networks count
    (drift ``port_group_legacy``), the rest goes to ``report.foreign``."""
    have = {(pg.network_id or "", pg.set_key): pg for pg in marked[ownership.OURS]}
    for pg in marked[ownership.LEGACY]:
        if usage.network_exists(context, pg.network_id or ""):
            have[(pg.network_id or "", pg.set_key)] = pg
            report.legacy_port_groups.append((dvs_name, pg))
            report.drifts.append(Drift("port_group_legacy", where, pg.network_id or "",
                                       f"port group {pg.name!r} made by an earlier "
                                       "version: to adopt", pg.set_key))
        else:
            report.foreign.append(f"{where}: port group {pg.name!r} (network "
                                  f"{pg.network_id}, no deployment id, network not here)")
    report.foreign.extend(f"{where}: port group {pg.name!r} (deployment {pg.deployment})"
                          for pg in marked[ownership.FOREIGN])
    return have


def _compare_port_group(report: Report, where: str, want: expected.ExpectedPortGroup,
                        pg: PortGroup | None, wanted: expected.WantedPolicy) -> None:
    def drift(kind: str, detail: str) -> None:
        report.drifts.append(Drift(kind, where, want.network_id, detail, want.set_key))
    if wanted.error is not None:
        # Neither made nor repaired: what the set needs cannot be written.
        drift("filter_too_large", (f"port group {pg.name!r}" if pg is not None else
                                   "no port group") + f" (set {want.set_key}): "
              f"{wanted.error}")
    if pg is None:
        if wanted.policy is not None:
            drift("port_group_missing", f"no port group of set {want.set_key} "
                                        f"(VLAN {want.vlan} expected)")
        # else: no port of the set is left, only a NIC not moved yet: nothing to make.
        return
    if pg.vlan != want.vlan:
        drift("port_group_vlan", f"port group {pg.name!r} (set {want.set_key}) has VLAN "
                                 f"{pg.vlan}, expected {want.vlan}")
    if wanted.policy is not None and (pg.policy is None or
                                      not pg.policy.same_as(wanted.policy)):
        drift("filter_drift", f"port group {pg.name!r} (set {want.set_key}): " +
              policy_difference(wanted.policy, pg.policy))


def _audit_leaves(context, parts: Parts, report: Report) -> None:
    assert parts.topology is not None
    actual: dict[str, dict[str, NetworkOnLeaf]] = {}
    legacy: dict[str, set[str]] = {}
    for leaf in parts.topology.leaves:
        try:
            actual[leaf], others = parts.fabric.read_all(leaf)
        except FabricError as exc:
            actual.pop(leaf, None)
            report.unreachable.append(f"leaf {leaf}: {exc}")
            continue
        report.checked[f"leaf {leaf}"] = len(actual[leaf])
        for network_id, deployment in sorted(others.items()):
            if deployment is None and usage.network_exists(context, network_id):
                legacy.setdefault(leaf, set()).add(network_id)
                report.drifts.append(Drift("switch_legacy", f"leaf {leaf}", network_id,
                                           "logical switch made by an earlier version: "
                                           "to adopt"))
            else:
                report.foreign.append(
                    f"leaf {leaf}: logical switch of network {network_id} " +
                    (f"(deployment {deployment})" if deployment else
                     "(no deployment id, network not here)"))
    networks = expected.fabric_networks(context)
    for networks_on_leaf in actual.values():
        networks |= set(networks_on_leaf)          # orphans too: they must go
    try:
        intents = read_intents(context, networks,
                               parts.topology.physical_networks(parts.directory))
        target = desired_state(intents, parts.topology, parts.directory,
                               parts.mac_distribution, parts.mode)
    except errors.VCenterError as exc:
        report.unreachable.append(f"vCenter (cluster membership): {exc}")
        return
    report.leaf_targets = {leaf: nets for leaf, nets in target.items() if leaf in actual}
    for leaf, have_all in actual.items():
        for network_id, want in sorted(target[leaf].items()):
            _compare(report, leaf, network_id, want, have_all.get(network_id))


def _compare(report: Report, leaf: str, network_id: str, want: NetworkOnLeaf | None,
             have: NetworkOnLeaf | None) -> None:
    def drift(kind: str, detail: str) -> None:
        report.drifts.append(Drift(kind, f"leaf {leaf}", network_id, detail))
    if want is None and have is None:
        return
    if want is None:
        drift("switch_orphan", f"logical switch (VNI {have.vni}) no port needs")
        return
    if have is None:
        drift("switch_missing", f"no logical switch (VNI {want.vni} expected)")
        return
    if have.vni != want.vni:
        drift("switch_vni", f"VNI {have.vni}, expected {want.vni}")
    for port, vlan in sorted(want.bindings - have.bindings):
        drift("binding_missing", f"port {port} VLAN {vlan} not bound")
    for port, vlan in sorted(have.bindings - want.bindings):
        drift("binding_extra", f"port {port} VLAN {vlan} bound but not needed")
    want_macs, have_macs = dict(want.remote_macs), dict(have.remote_macs)
    for mac, ip in sorted(want_macs.items()):
        if have_macs.get(mac) != ip:
            drift("mac_wrong" if mac in have_macs else "mac_missing",
                  f"remote MAC {mac} -> {have_macs.get(mac, 'nothing')}, expected {ip}")
    for mac in sorted(set(have_macs) - set(want_macs)):
        drift("mac_extra", f"remote MAC {mac} -> {have_macs[mac]} not needed")
    if want.flood_tunnel_ips != have.flood_tunnel_ips:
        drift("flood_list", f"flooding to {sorted(have.flood_tunnel_ips)}, expected "
                            f"{sorted(want.flood_tunnel_ips)}")
