"""From Neutron's intent and the topology to what each leaf must hold, per network.

Pure computation, no I/O besides the topology's host directory (vCenter's
inventory, cached).  Every leaf of the topology gets an answer for every network
asked about: a :class:`NetworkOnLeaf`, or None where the network needs nothing -
which is how removals happen (level-triggered: the backend converges to this).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Mapping

from networking_dvs_fabric.fabric.api import NetworkOnLeaf
from networking_dvs_fabric.fabric.intent import NetworkIntent
from networking_dvs_fabric.topology import HostDirectory, Topology

LOG = logging.getLogger(__name__)

DesiredByLeaf = dict[str, dict[str, NetworkOnLeaf | None]]


def desired_state(intents: Mapping[str, NetworkIntent | None], topology: Topology,
                  directory: HostDirectory | None,
                  mac_distribution: str = "controller") -> DesiredByLeaf:
    """Per leaf, per network: what the leaf must hold (None: nothing).

    Raises whatever the directory raises (vCenter unreachable): an unknown host must
    not be read as a host that needs nothing.
    """
    result: DesiredByLeaf = {leaf: {} for leaf in topology.leaves}
    for network_id, intent in intents.items():
        per_leaf = _network(intent, topology, directory, mac_distribution) if intent else {}
        for leaf in topology.leaves:
            result[leaf][network_id] = per_leaf.get(leaf)
    return result


def _network(intent: NetworkIntent, topology: Topology, directory: HostDirectory | None,
             mac_distribution: str) -> dict[str, NetworkOnLeaf]:
    bindings: dict[str, set[tuple[str, int]]] = defaultdict(set)
    macs: dict[str, str] = {}        # MAC -> leaf it lives behind
    for port in intent.ports:
        placement = topology.placement(port.host, directory, port.physical_network)
        if placement is None:
            LOG.warning("fabric: port %(port)s of network %(net)s is bound to host %(host)s, "
                        "which the topology does not place on %(physnet)s; no leaf "
                        "programmed for it", {"port": port.port_id, "net": intent.network_id,
                                              "host": port.host,
                                              "physnet": port.physical_network})
            continue
        for leaf_port in placement.leaf_ports:
            bindings[leaf_port.leaf].add((leaf_port.port, port.vlan))
        if port.active and placement.location is not None:
            macs[port.mac] = placement.location
    controller = mac_distribution == "controller"
    result: dict[str, NetworkOnLeaf] = {}
    for leaf, leaf_bindings in bindings.items():
        own_ip = topology.tunnel_ip(leaf)
        remote = frozenset((mac, topology.tunnel_ip(where)) for mac, where in macs.items()
                           if where != leaf) if controller else frozenset()
        flood = frozenset(topology.tunnel_ip(other) for other in bindings
                          if other != leaf and topology.tunnel_ip(other) != own_ip) \
            if controller else frozenset()
        result[leaf] = NetworkOnLeaf(intent.network_id, intent.vni, frozenset(leaf_bindings),
                                     remote, flood)
    return result
