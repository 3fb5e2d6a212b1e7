"""Which of a port's bindings go through the fabric, read from ML2's port context.

Pure reads of a :class:`PortContext` (and, for the fabric's dynamic segments, one
query): the driver (``fabric_hwvtep``) asks them in its pre- and postcommit hooks.
"""
from __future__ import annotations

from neutron.db import segments_db
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api

from networking_dvs_fabric import levels, names

DRIVER_NAME = names.FABRIC_DRIVER


def fabric_vlan(context: api.PortContext, binding_levels: list[dict] | None,
                physical_networks: frozenset[str]) -> str | None:
    """The id of the fabric's VLAN segment a binding uses, None if it uses none: the
    segment bound under our level, or a dynamic VLAN segment of this VXLAN network, on
    one of the fabric's ``physical_networks``, that a bottom driver bound at the top
    level (another top-level driver's dynamic segments are on physical networks of
    its own).  ML2 does that when the level under ours refused and the bottom driver,
    asked next at the top level where the network's segments are all offered,
    accepted (an agent that came back alive between the two asks).  The leaves must
    carry such a port as any other (``fabric/intent.py``)."""
    below = segment_below_us(binding_levels)
    if below is not None or not binding_levels or len(binding_levels) != 1:
        return below
    segment = binding_levels[0].get(api.BOUND_SEGMENT) or {}
    if segment.get(api.NETWORK_TYPE) != n_const.TYPE_VLAN or not has_vxlan(context) or \
            segment.get(api.PHYSICAL_NETWORK) not in physical_networks or \
            static_segment(context.network.current, segment):
        return None
    return segment.get(api.ID) if segment.get(api.ID) in dynamic_segment_ids(context) \
        else None


def dynamic_segment_ids(context: api.PortContext) -> set[str]:
    """The ids of the network's dynamic segments (one query)."""
    return {s[api.ID] for s in segments_db.get_network_segments(
        context.plugin_context, context.network.current["id"], filter_dynamic=True)}


def static_segment(network: dict, segment: dict) -> bool:
    """Is ``segment`` one of the network's static (provider) segments?  Read from the
    network's own dict, no query: a port of a VXLAN + provider VLAN network costs its
    status updates nothing here."""
    def key(item: dict) -> tuple:
        return (item.get(api.NETWORK_TYPE), item.get(api.PHYSICAL_NETWORK),
                item.get(api.SEGMENTATION_ID))
    static = [{api.NETWORK_TYPE: s.get("provider:network_type"),
               api.PHYSICAL_NETWORK: s.get("provider:physical_network"),
               api.SEGMENTATION_ID: s.get("provider:segmentation_id")}
              for s in network.get("segments") or [network]]
    return any(key(s) == key(segment) for s in static)


def bound_elsewhere(context: api.PortContext) -> bool:
    """This update is a new binding of a VXLAN network's port made by other drivers
    alone (after our bind_port's ask, whose level below refused)."""
    return bool(context.binding_levels) and \
        not levels.bound_by(context.binding_levels, DRIVER_NAME) and \
        level_ids(context.binding_levels) != level_ids(context.original_binding_levels) \
        and has_vxlan(context)


def level_ids(binding_levels: list[dict] | None) -> list[tuple]:
    return [(level.get(api.BOUND_DRIVER), (level.get(api.BOUND_SEGMENT) or {}).get(api.ID))
            for level in binding_levels or []]


_STATUS_FIELDS = ("status", "revision_number", "updated_at")


def only_status_changed(context: api.PortContext) -> bool:
    """Only the port's status (and its revision) changed: nothing the leaves hold
    depends on it."""
    original = context.original
    if original is None or \
            level_ids(context.binding_levels) != level_ids(context.original_binding_levels):
        return False
    return ({k: v for k, v in original.items() if k not in _STATUS_FIELDS} ==
            {k: v for k, v in context.current.items() if k not in _STATUS_FIELDS})


def activated_without_bind(context: api.PortContext) -> bool:
    """ML2 made an already bound binding the active one (a live migration's
    activation): the port is DOWN now and bind_port did not run for it."""
    return (context.current.get("status") == n_const.PORT_STATUS_DOWN
            and context.original_vif_type not in (portbindings.VIF_TYPE_UNBOUND,
                                                  portbindings.VIF_TYPE_BINDING_FAILED)
            and level_ids(context.binding_levels) !=
            level_ids(context.original_binding_levels))


def segment_below_us(binding_levels: list[dict] | None) -> str | None:
    """The id of the segment bound at the level under ours (the dynamic VLAN one)."""
    return levels.segment_id_below(binding_levels, DRIVER_NAME)


def has_vxlan(context: api.PortContext) -> bool:
    """Has the port's network a VXLAN segment (is it one the fabric may carry)?"""
    return any(s.get(api.NETWORK_TYPE) == n_const.TYPE_VXLAN
               for s in context.network.network_segments or [])
