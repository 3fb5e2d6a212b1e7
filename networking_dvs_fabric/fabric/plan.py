"""The pure planner of the ``hardware_vtep`` backend: what one leaf must change.

:func:`plan` diffs a :class:`~networking_dvs_fabric.fabric.leaf_view.LeafView` (the
rows of one leaf for the networks asked about, read by ``leaf_view.read_view``)
against the desired networks and returns a :class:`Plan` of rows to create, change
and remove (no I/O, no transaction: the writer in ``hwvtep.py`` turns a plan into one
OVSDB transaction).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from networking_dvs_fabric import ownership
from networking_dvs_fabric.fabric.api import (DEPLOYMENT_KEY, MARKER_KEY, MARKER_VALUE,
                                              NETWORK_ID_KEY, FabricError, LeafRejected,
                                              NetworkOnLeaf)
# The reading half, offered here too.
from networking_dvs_fabric.fabric.leaf_view import (ENCAPSULATION, FLOOD_MAC,  # noqa: F401
                                                    LS_PREFIX, REPLICATION, Binding,
                                                    LeafView, Row, find_switch, flood_ips,
                                                    network_on_leaf, read_view)

MAX_VLAN = 4095


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
        holder = view.holder(port, vlan)
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
