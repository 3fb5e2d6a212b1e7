"""The pure planner of the ``hardware_vtep`` backend: what one leaf must change.

:func:`read_view` indexes an OVSDB ``hardware_vtep`` replica for one leaf into a
:class:`LeafView`; :func:`plan` diffs that view against the desired networks and returns
a :class:`Plan` of rows to create, change and remove (no I/O, no transaction: the writer
in ``hwvtep.py`` turns a plan into one OVSDB transaction).  Also here: the names and
values of the rows the project owns (``dvsf-<network id>`` logical switches, the
``unknown-dst`` flooding row, VXLAN locators) and reading a network back
(:func:`network_on_leaf`).
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Mapping

from ovs.db import idl as ovs_idl

from networking_dvs_fabric import ownership
from networking_dvs_fabric.fabric.api import (DEPLOYMENT_KEY, MARKER_KEY, MARKER_VALUE, NETWORK_ID_KEY,
                                              FabricError, LeafRejected, LeafUnreachable,
                                              NetworkOnLeaf)

LS_PREFIX = "dvsf-"
FLOOD_MAC = "unknown-dst"
# Our flooding list names every other leaf of the network: the leaf itself copies BUM
# frames to each (head-end replication).  Unset, the schema's default is
# "service_node" - one copy to the first entry only - which loses frames with 3+ leaves.
REPLICATION = "source_node"
ENCAPSULATION = "vxlan_over_ipv4"
MAX_VLAN = 4095
Row = ovs_idl.Row
Binding = tuple[str, int]


@dataclasses.dataclass
class LeafView:
    """The rows of one leaf that planning and reading need, indexed once.

    Reading a column of an IDL row converts it each time, so each port's
    ``vlan_bindings`` is read once here.
    """

    leaf: str
    ports: dict[str, Row]
    port_bindings: dict[str, dict[int, Row]]     # port -> VLAN -> Logical_Switch
    owned: dict[str, Row]                         # network id -> our marked Logical_Switch
    ls_names: set[str]
    locators: dict[str, Row]                      # dst_ip -> reusable VXLAN locator
    bindings: dict[uuid.UUID, set[Binding]]       # LS uuid -> its bindings on this switch
    ucast: dict[uuid.UUID, list[Row]]             # LS uuid -> Ucast_Macs_Remote rows
    flood: dict[uuid.UUID, list[Row]]             # LS uuid -> unknown-dst Mcast_Macs_Remote
    pinned: set[uuid.UUID]                        # LS uuids we must not delete yet
    deployment: str | None = None                 # ours (None: every marked LS is ours)
    legacy: dict[str, Row] = dataclasses.field(default_factory=dict)   # marker, no id
    foreign: dict[str, Row] = dataclasses.field(default_factory=dict)  # other deployments'


def find_switch(tables: Mapping[str, Any], leaf: str) -> Row:
    """The leaf's Physical_Switch: the one named after it, or the only one."""
    switches = list(tables["Physical_Switch"].rows.values())
    named = [s for s in switches if s.name == leaf]
    if named:
        return named[0]
    if len(switches) == 1:
        return switches[0]
    if not switches:
        # A switch that has just booted may not have published itself yet.
        raise LeafUnreachable(f"leaf {leaf}: its database has no Physical_Switch yet")
    raise LeafRejected(f"leaf {leaf}: no Physical_Switch named {leaf} among "
                       f"{sorted(s.name for s in switches)}")


def read_view(tables: Mapping[str, Any], leaf: str,
              deployment: str | None = None) -> LeafView:
    """Index the replica for ``leaf`` (call with the connection lock held).

    ``deployment``: ours; marked switches of other deployments and legacy ones (no
    id) are kept apart (``ownership.py``).
    """
    switch = find_switch(tables, leaf)
    ports = {p.name: p for p in switch.ports}
    view = LeafView(leaf, ports, {name: dict(p.vlan_bindings) for name, p in ports.items()},
                    {}, set(), {}, {}, {}, {}, set(), deployment)
    kinds = {ownership.OURS: view.owned, ownership.LEGACY: view.legacy,
             ownership.FOREIGN: view.foreign}
    for ls in tables["Logical_Switch"].rows.values():
        view.ls_names.add(ls.name)
        config = ls.other_config
        if config.get(MARKER_KEY) == MARKER_VALUE and config.get(NETWORK_ID_KEY):
            owner = ownership.owner_of(config.get(DEPLOYMENT_KEY), deployment)
            kinds[owner][config[NETWORK_ID_KEY]] = ls
    for name, by_vlan in view.port_bindings.items():
        for vlan, ls in by_vlan.items():
            view.bindings.setdefault(ls.uuid, set()).add((name, vlan))
    for loc in tables["Physical_Locator"].rows.values():
        if loc.encapsulation_type == ENCAPSULATION and not loc.tunnel_key:
            view.locators.setdefault(loc.dst_ip, loc)
    for row in tables["Ucast_Macs_Remote"].rows.values():
        view.ucast.setdefault(row.logical_switch.uuid, []).append(row)
    for row in tables["Mcast_Macs_Remote"].rows.values():
        if row.MAC == FLOOD_MAC:
            view.flood.setdefault(row.logical_switch.uuid, []).append(row)
    for table in ("Ucast_Macs_Local", "Mcast_Macs_Local"):
        view.pinned.update(r.logical_switch.uuid for r in tables[table].rows.values())
    mine = {p.uuid for p in ports.values()}
    for port in tables["Physical_Port"].rows.values():
        if port.uuid not in mine:
            view.pinned.update(ls.uuid for ls in port.vlan_bindings.values())
    return view


def flood_ips(row: Row) -> set[str]:
    """Tunnel IPs in a flooding row's locator set."""
    return {loc.dst_ip for loc in row.locator_set.locators}


def network_on_leaf(view: LeafView, network_id: str, ls: Row) -> NetworkOnLeaf:
    """What the leaf holds for one owned logical switch."""
    return NetworkOnLeaf(
        network_id=network_id,
        vni=ls.tunnel_key[0] if ls.tunnel_key else 0,
        bindings=frozenset(view.bindings.get(ls.uuid, ())),
        remote_macs=frozenset((r.MAC, r.locator.dst_ip) for r in view.ucast.get(ls.uuid, ())),
        flood_tunnel_ips=frozenset(ip for r in view.flood.get(ls.uuid, ())
                                   for ip in flood_ips(r)))


def _empty() -> Any:
    """A dataclass field starting as a new empty list."""
    return dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
    """The changes one converge makes, grouped in the order they are written."""

    new_ls: list[tuple[str, int]] = _empty()
    adoptions: list[Row] = _empty()
    vni_updates: list[tuple[Row, int]] = _empty()
    replication_updates: list[Row] = _empty()
    bind_sets: list[tuple[Row, int, str]] = _empty()
    ucast_new: list[tuple[str, str, str]] = _empty()
    ucast_moves: list[tuple[Row, str]] = _empty()
    flood_sets: list[tuple[str, Row | None, tuple[str, ...]]] = _empty()
    ucast_dels: list[Row] = _empty()
    flood_dels: list[Row] = _empty()
    bind_dels: list[tuple[Row, int]] = _empty()
    ls_dels: list[Row] = _empty()
    pending: set[str] = dataclasses.field(default_factory=set)

    @property
    def changes(self) -> int:
        """Rows created, changed or removed."""
        return sum(len(getattr(self, f.name)) for f in dataclasses.fields(self)
                   if f.name != "pending")


def plan(view: LeafView, desired: Mapping[str, NetworkOnLeaf | None]) -> Plan:
    """The difference between the leaf and ``desired`` for the named networks only."""
    claims = _claims(view, desired)
    out = Plan()
    for network_id, want in sorted(desired.items()):
        ls = view.owned.get(network_id)
        if want is None:
            if ls is not None:
                _plan_removal(view, network_id, ls, claims, out)
            continue
        if want.network_id != network_id:
            raise FabricError(f"desired[{network_id!r}] describes {want.network_id!r}")
        if ls is None and network_id in view.legacy:
            # Made by an earlier version for a network this deployment has: adopt it.
            ls = view.legacy[network_id]
            out.adoptions.append(ls)
        if ls is None:
            if network_id in view.foreign:
                other = view.foreign[network_id].other_config.get(DEPLOYMENT_KEY)
                raise LeafRejected(f"leaf {view.leaf}: logical switch {LS_PREFIX}{network_id}"
                                   f" belongs to deployment {other}")
            if LS_PREFIX + network_id in view.ls_names:
                raise LeafRejected(f"leaf {view.leaf}: logical switch {LS_PREFIX}{network_id}"
                                   " exists without the project's marker")
            out.new_ls.append((network_id, want.vni))
        elif list(ls.tunnel_key) != [want.vni]:
            out.vni_updates.append((ls, want.vni))
        if ls is not None and list(getattr(ls, "replication_mode", [])) != [REPLICATION]:
            out.replication_updates.append(ls)
        _plan_bindings(view, ls, want, desired, claims, out)
        _plan_ucast(view, ls, want, out)
        _plan_flood(view, ls, want, out)
    return out


def _claims(view: LeafView, desired: Mapping[str, NetworkOnLeaf | None]) -> dict[Binding, str]:
    """(port, VLAN) -> network wanting it; rejects unknown ports and double claims."""
    claims: dict[Binding, str] = {}
    for network_id, want in desired.items():
        for port, vlan in sorted(want.bindings if want else ()):
            if port not in view.ports:
                raise LeafRejected(f"leaf {view.leaf}: has no port {port!r}")
            if not 0 <= vlan <= MAX_VLAN:
                raise LeafRejected(f"leaf {view.leaf}: port {port} VLAN {vlan} out of range")
            other = claims.setdefault((port, vlan), network_id)
            if other != network_id:
                raise LeafRejected(f"leaf {view.leaf}: port {port} VLAN {vlan} wanted by "
                                   f"networks {other} and {network_id}")
    return claims


def _plan_bindings(view: LeafView, ls: Row | None, want: NetworkOnLeaf,
                   desired: Mapping[str, NetworkOnLeaf | None],
                   claims: Mapping[Binding, str], out: Plan) -> None:
    """Set missing bindings (refusing to take foreign ones), drop unwanted ones."""
    current = view.bindings.get(ls.uuid, set()) if ls is not None else set()
    for port, vlan in sorted(want.bindings - current):
        holder = view.port_bindings[port].get(vlan)
        if holder is not None:
            _check_may_take(view, port, vlan, holder, desired)
        out.bind_sets.append((view.ports[port], vlan, want.network_id))
    for port, vlan in sorted(current - want.bindings):
        if (port, vlan) not in claims:   # else another network's setkey replaces it
            out.bind_dels.append((view.ports[port], vlan))


def _check_may_take(view: LeafView, port: str, vlan: int, holder: Row,
                    desired: Mapping[str, NetworkOnLeaf | None]) -> None:
    """A bound (port, VLAN) may be rebound only from one of our networks in this call."""
    config = holder.other_config
    if config.get(MARKER_KEY) != MARKER_VALUE:
        raise LeafRejected(f"leaf {view.leaf}: port {port} VLAN {vlan} is bound to "
                           f"logical switch {holder.name!r}, which the project does not own")
    owner = ownership.owner_of(config.get(DEPLOYMENT_KEY), view.deployment)
    if owner == ownership.FOREIGN:
        raise LeafRejected(f"leaf {view.leaf}: port {port} VLAN {vlan} is bound to network "
                           f"{config.get(NETWORK_ID_KEY)} of deployment "
                           f"{config.get(DEPLOYMENT_KEY)}; give the two deployments "
                           "disjoint VLAN ranges")
    if owner == ownership.LEGACY and desired.get(config.get(NETWORK_ID_KEY)) is None:
        raise LeafRejected(f"leaf {view.leaf}: port {port} VLAN {vlan} is bound to network "
                           f"{config.get(NETWORK_ID_KEY)}, made by an earlier version and "
                           "not adopted by this deployment")
    if config.get(NETWORK_ID_KEY) not in desired:
        raise LeafRejected(f"leaf {view.leaf}: port {port} VLAN {vlan} is bound to network "
                           f"{config.get(NETWORK_ID_KEY)}, which this call does not name")


def _plan_ucast(view: LeafView, ls: Row | None, want: NetworkOnLeaf, out: Plan) -> None:
    """Remote MACs: add missing, re-point moved ones, drop the rest."""
    wanted: dict[str, str] = {}
    for mac, ip in want.remote_macs:
        if wanted.setdefault(mac.lower(), ip) != ip:
            raise FabricError(f"network {want.network_id}: MAC {mac} on two tunnel IPs")
    seen: set[str] = set()
    for row in view.ucast.get(ls.uuid, []) if ls is not None else []:
        mac = row.MAC.lower()
        if mac not in wanted or mac in seen:
            out.ucast_dels.append(row)
            continue
        seen.add(mac)
        if row.locator.dst_ip != wanted[mac]:
            out.ucast_moves.append((row, wanted[mac]))
    out.ucast_new.extend((want.network_id, mac, ip)
                         for mac, ip in sorted(wanted.items()) if mac not in seen)


def _plan_flood(view: LeafView, ls: Row | None, want: NetworkOnLeaf, out: Plan) -> None:
    """One unknown-dst row whose locator set is exactly the flood list, or none."""
    rows = view.flood.get(ls.uuid, []) if ls is not None else []
    ips = tuple(sorted(want.flood_tunnel_ips))
    if not ips:
        out.flood_dels.extend(rows)
        return
    keep = rows[0] if rows else None
    out.flood_dels.extend(rows[1:])
    if keep is None or flood_ips(keep) != set(ips):
        out.flood_sets.append((want.network_id, keep, ips))


def _plan_removal(view: LeafView, network_id: str, ls: Row,
                  claims: Mapping[Binding, str], out: Plan) -> None:
    """MACs, flooding row and bindings go; the LS too unless the switch still uses it."""
    out.ucast_dels.extend(view.ucast.get(ls.uuid, []))
    out.flood_dels.extend(view.flood.get(ls.uuid, []))
    out.bind_dels.extend((view.ports[port], vlan)
                         for port, vlan in sorted(view.bindings.get(ls.uuid, ()))
                         if (port, vlan) not in claims)
    if ls.uuid in view.pinned:
        out.pending.add(network_id)
    else:
        out.ls_dels.append(ls)
