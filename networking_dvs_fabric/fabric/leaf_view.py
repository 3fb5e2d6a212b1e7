"""Reading one leaf's replica: what the planner (``plan.py``) and ``read`` need.

:func:`read_view` gathers, for the networks it is asked about, the rows of one leaf
into a :class:`LeafView`: their logical switches (ours, legacy, another
deployment's), the bindings, remote MACs and flooding rows of those switches, the
switches holding the (port, VLAN)s asked about, and the leaf's locators.  Through
the :class:`~networking_dvs_fabric.fabric.leaf_index.LeafIndex` that costs what the
networks asked about hold, not what the leaf holds; asked about none in particular
(``network_ids`` None: the audit, ``dvs-fabric sync``) it reads every network.
Also here: reading a network back (:func:`network_on_leaf`) and the names and values
of the rows the project owns.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Collection, Iterable, Mapping

from ovs.db import idl as ovs_idl

from networking_dvs_fabric import ownership
from networking_dvs_fabric.fabric.api import (DEPLOYMENT_KEY, MARKER_KEY, MARKER_VALUE,
                                              NETWORK_ID_KEY, LeafRejected, LeafUnreachable,
                                              NetworkOnLeaf)
from networking_dvs_fabric.fabric.leaf_index import LeafIndex

LS_PREFIX = "dvsf-"
FLOOD_MAC = "unknown-dst"
# Our flooding list names every other leaf of the network: the leaf itself copies BUM
# frames to each (head-end replication).  Unset, the schema's default is
# "service_node" - one copy to the first entry only - which loses frames with 3+ leaves.
REPLICATION = "source_node"
ENCAPSULATION = "vxlan_over_ipv4"
Row = ovs_idl.Row
Binding = tuple[str, int]


@dataclasses.dataclass
class LeafView:
    """The rows of one leaf that planning and reading need, for some networks.

    ``bindings``, ``ucast``, ``flood`` and ``pinned`` cover the logical switches in
    ``owned``, ``legacy`` and ``foreign``; ``holder`` answers for any (port, VLAN).
    """

    leaf: str
    ports: dict[str, Row]
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
    tables: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    index: LeafIndex | None = dataclasses.field(default=None, repr=False)

    def holder(self, port: str, vlan: int) -> Row | None:
        """The logical switch ``vlan`` of this leaf's ``port`` is bound to, if any."""
        assert self.index is not None
        return self.index.holder(self.tables, self.ports[port], vlan)


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


def read_view(tables: Mapping[str, Any], index: LeafIndex, leaf: str,
              deployment: str | None = None, network_ids: Collection[str] | None = None,
              holding: Iterable[Binding] = ()) -> LeafView:
    """The view of ``leaf`` for ``network_ids`` (None: every network) and for the
    holders of the (port, VLAN)s in ``holding`` (call with the connection lock held).

    ``deployment``: ours; marked switches of other deployments and legacy ones (no
    id) are kept apart (``ownership.py``).
    """
    index = index.fresh(tables)
    switch = find_switch(tables, leaf)
    ports = {p.name: p for p in switch.ports}
    view = LeafView(leaf, ports, {}, set(), {}, {}, {}, {}, set(), deployment,
                    tables=tables, index=index)
    if network_ids is None:
        switches: Iterable[Row] = index.switches(tables)
    else:
        switches = [ls for ls in (index.switch_named(tables, LS_PREFIX + n)
                                  for n in network_ids) if ls is not None]
        switches += [ls for ls in (view.holder(port, vlan) for port, vlan in holding
                                   if port in ports) if ls is not None]
    kinds = {ownership.OURS: view.owned, ownership.LEGACY: view.legacy,
             ownership.FOREIGN: view.foreign}
    seen: set[uuid.UUID] = set()
    mine = {p.uuid: name for name, p in ports.items()}
    for ls in switches:
        if ls.uuid in seen:
            continue
        seen.add(ls.uuid)
        view.ls_names.add(ls.name)
        config = ls.other_config
        if config.get(MARKER_KEY) != MARKER_VALUE or not config.get(NETWORK_ID_KEY):
            continue
        owner = ownership.owner_of(config.get(DEPLOYMENT_KEY), deployment)
        kinds[owner][config[NETWORK_ID_KEY]] = ls
        for port_uuid, vlan in index.bound_to(ls.uuid):
            if port_uuid in mine:
                view.bindings.setdefault(ls.uuid, set()).add((mine[port_uuid], vlan))
            else:
                view.pinned.add(ls.uuid)      # bound on another switch of this database
        view.ucast[ls.uuid] = index.macs_of(tables, "Ucast_Macs_Remote", ls.uuid)
        view.flood[ls.uuid] = [r for r in index.macs_of(tables, "Mcast_Macs_Remote", ls.uuid)
                               if r.MAC == FLOOD_MAC]
    for loc in tables["Physical_Locator"].rows.values():
        if loc.encapsulation_type == ENCAPSULATION and not loc.tunnel_key:
            view.locators.setdefault(loc.dst_ip, loc)
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
