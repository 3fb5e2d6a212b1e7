"""What Neutron says the fabric must carry for some networks, read from its database.

For each network: its first VXLAN segment (the VNI, ``first_vxlan_segments``) and
every port binding that went through ``fabric_hwvtep`` - the binding host, the VLAN
segment allocated below it, the port's MAC and whether the binding is the active one.
A binding made straight into one of the fabric's dynamic VLAN segments at the top
level counts too: ML2 does that when the level under ``fabric_hwvtep`` refused and a
bottom driver, asked next at the top level, accepted the network's VLAN segment (an
agent that came back alive between the two asks); the VLAN is the fabric's all the
same, and only the leaves make it reach the VXLAN network. Only a dynamic VLAN segment
on one of the fabric's physical networks is: another top-level driver's segments are
its own. Inactive bindings (a live migration's destination) count for VLAN bindings,
so the destination is ready before the port moves; MACs are placed only from active
bindings.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Collection, Iterable

from neutron.db import models_v2
from neutron.db.models import segment as segment_models
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib import constants as n_const
from neutron_lib.db import api as db_api

from networking_dvs_fabric import names
from networking_dvs_fabric.db import locations
from networking_dvs_fabric.levels import pairs_below


@dataclasses.dataclass(frozen=True)
class BoundPort:
    port_id: str
    mac: str
    host: str
    physical_network: str
    vlan: int
    active: bool
    # Where vCenter says the port's VM runs (the watcher), and where a started
    # migration takes it; None when not seen (powered off, not a vSphere VM).
    vm_host: str | None = None
    vm_destination: str | None = None


@dataclasses.dataclass(frozen=True)
class NetworkIntent:
    network_id: str
    vni: int
    ports: tuple[BoundPort, ...]


def read_intents(context, network_ids: Iterable[str], physical_networks: Collection[str],
                 driver: str = names.FABRIC_DRIVER) -> dict[str, NetworkIntent | None]:
    """Intent per network; None for a network that is gone or has no VXLAN segment.
    ``physical_networks``: the fabric's (``Topology.physical_networks``)."""
    ids = sorted(set(network_ids))
    result: dict[str, NetworkIntent | None] = {i: None for i in ids}
    if not ids:
        return result
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        # Columns, not the ORM entity: a NetworkSegment loads its relationships
        # (selectin) too, and that was half of a leaf repair's time.
        segment = segment_models.NetworkSegment
        segments = {s.id: s for s in session.query(
            segment.id, segment.network_id, segment.network_type, segment.physical_network,
            segment.segmentation_id, segment.is_dynamic, segment.segment_index).filter(
            segment.network_id.in_(ids))}
        ports = {p.id: p for p in session.query(
            models_v2.Port.id, models_v2.Port.network_id, models_v2.Port.mac_address).filter(
            models_v2.Port.network_id.in_(ids))}
        levels = session.query(
            ml2_models.PortBindingLevel.port_id, ml2_models.PortBindingLevel.host,
            ml2_models.PortBindingLevel.level, ml2_models.PortBindingLevel.driver,
            ml2_models.PortBindingLevel.segment_id).join(
            models_v2.Port, models_v2.Port.id == ml2_models.PortBindingLevel.port_id).filter(
            models_v2.Port.network_id.in_(ids)).all()
        statuses = {(b.port_id, b.host): b.status for b in session.query(
            ml2_models.PortBinding.port_id, ml2_models.PortBinding.host,
            ml2_models.PortBinding.status).join(
            models_v2.Port, models_v2.Port.id == ml2_models.PortBinding.port_id).filter(
            models_v2.Port.network_id.in_(ids))}
    seen = locations.of_networks(context, ids)
    by_binding: dict[tuple[str, str], list] = defaultdict(list)
    for row in levels:
        by_binding[(row.port_id, row.host)].append(row)
    vnis: dict[str, int] = {}
    bound: dict[str, list[BoundPort]] = defaultdict(list)
    vxlan_of = first_vxlan_segments(segments.values())
    for (port_id, host), rows in by_binding.items():
        rows.sort(key=lambda r: r.level)
        found = _through_fabric(rows, segments, driver) or \
            _straight_into_fabric_vlan(rows, segments, vxlan_of, physical_networks)
        if found is None:
            continue
        _, bottom = found
        port = ports[port_id]
        vnis[port.network_id] = int(vxlan_of[port.network_id].segmentation_id)
        active = statuses.get((port_id, host)) == n_const.ACTIVE
        where = seen.get(port_id) if active else None
        bound[port.network_id].append(BoundPort(
            port_id=port_id, mac=port.mac_address, host=host,
            physical_network=bottom.physical_network, vlan=int(bottom.segmentation_id),
            active=active, vm_host=where.esxi_host if where else None,
            vm_destination=where.destination_host if where else None))
    for network_id in ids:
        if network_id in vnis:
            result[network_id] = NetworkIntent(
                network_id, vnis[network_id],
                tuple(sorted(bound[network_id], key=lambda b: (b.port_id, b.host))))
    return result


def first_vxlan_segments(segments) -> dict:
    """Each network's first VXLAN segment (lowest segment index, then id): the one ML2
    offers first, which fabric_hwvtep binds.  A network is one logical switch, so one
    VNI, whichever of its ports' bindings is read first."""
    first: dict = {}
    for s in sorted(segments, key=lambda s: (s.segment_index or 0, s.id)):
        if s.network_type == n_const.TYPE_VXLAN:
            first.setdefault(s.network_id, s)
    return first


def _through_fabric(rows, segments, driver):
    """(VXLAN segment, VLAN segment) of a binding with ``driver``'s level over a VLAN one."""
    for upper, lower in pairs_below(rows, driver, lambda r: r.driver):
        top, bottom = segments.get(upper.segment_id), segments.get(lower.segment_id)
        if top is not None and bottom is not None and \
                top.network_type == n_const.TYPE_VXLAN and bottom.network_type == n_const.TYPE_VLAN:
            return top, bottom
    return None


def _straight_into_fabric_vlan(rows, segments, vxlan_of, physical_networks):
    """(VXLAN segment, VLAN segment) of a one-level binding into a dynamic VLAN segment
    on one of the fabric's physical networks, of a VXLAN network (module doc); a static
    VLAN segment of a multi-segment network is a provider's, not the fabric's."""
    if len(rows) != 1:
        return None
    bottom = segments.get(rows[0].segment_id)
    if bottom is None or not bottom.is_dynamic or bottom.network_type != n_const.TYPE_VLAN \
            or bottom.physical_network not in physical_networks:
        return None
    top = vxlan_of.get(bottom.network_id)
    return (top, bottom) if top is not None else None
