"""From Neutron's intent and the topology to what each leaf must hold, per network.

Pure computation, no I/O besides the topology's host directory (vCenter's
inventory, cached).  Every leaf of the topology gets an answer for every network
asked about: a :class:`NetworkOnLeaf`, or None where the network needs nothing -
which is how removals happen (level-triggered: the backend converges to this).
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Mapping

from networking_dvs_fabric.fabric.api import NetworkOnLeaf
from networking_dvs_fabric.fabric.intent import BoundPort, NetworkIntent
from networking_dvs_fabric.topology import HostDirectory, Placement, Topology

LOG = logging.getLogger(__name__)

DesiredByLeaf = dict[str, dict[str, NetworkOnLeaf | None]]
HeldByLeaf = Mapping[str, Mapping[str, NetworkOnLeaf]]


def desired_state(intents: Mapping[str, NetworkIntent | None], topology: Topology,
                  directory: HostDirectory | None,
                  mac_distribution: str = "controller",
                  mode: str = "pre_provision") -> DesiredByLeaf:
    """Per leaf, per network: what the leaf must hold (None: nothing).

    Raises whatever the directory raises (vCenter unreachable): an unknown host must
    not be read as a host that needs nothing.
    """
    result: DesiredByLeaf = {leaf: {} for leaf in topology.leaves}
    for network_id, intent in intents.items():
        per_leaf = _network(intent, topology, directory, mac_distribution, mode) \
            if intent else {}
        for leaf in topology.leaves:
            result[leaf][network_id] = per_leaf.get(leaf)
    return result


def _vm_leaf_ports(port: BoundPort, topology: Topology, directory: HostDirectory | None,
                   host: str | None) -> Placement | None:
    """Placement of the ESXi host a cluster-bound port's VM runs on (or goes to)."""
    if host is None:
        return None
    return topology.placement(host, directory, port.physical_network)


def _network(intent: NetworkIntent, topology: Topology, directory: HostDirectory | None,
             mac_distribution: str, mode: str) -> dict[str, NetworkOnLeaf]:
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
        where = placement
        if placement.location is None:
            # Bound to a cluster: the VM's real host, as the vCenter watcher saw it.
            where = _vm_leaf_ports(port, topology, directory, port.vm_host)
            going = _vm_leaf_ports(port, topology, directory, port.vm_destination)
            if mode == "on_demand" and port.active:
                # Only where a VM runs, plus where one is going (make before break).
                # (An inactive binding - a live migration's destination cluster - is
                # prepared on all its hosts below: which one DRS picks is not known.)
                for seat in (where, going):
                    for leaf_port in (seat.leaf_ports if seat else ()):
                        bindings[leaf_port.leaf].add((leaf_port.port, port.vlan))
            else:
                for leaf_port in placement.leaf_ports:
                    bindings[leaf_port.leaf].add((leaf_port.port, port.vlan))
        else:
            for leaf_port in placement.leaf_ports:
                bindings[leaf_port.leaf].add((leaf_port.port, port.vlan))
        moving = port.vm_destination is not None and port.vm_destination != port.vm_host
        if port.active and where is not None and where.leaf_ports and not moving:
            # A VM being migrated has no remote MAC anywhere: its frames are flooded to
            # every leaf of the network, so they reach it before and after the
            # switchover, whichever leaf it is behind; it gets its entries back, at
            # the destination's tunnel IP, once vCenter shows it arrived.
            macs[port.mac] = where.location or sorted(where.leaf_ports)[0].leaf
    controller = mac_distribution == "controller"
    result: dict[str, NetworkOnLeaf] = {}
    for leaf, leaf_bindings in bindings.items():
        own_ip = topology.tunnel_ip(leaf)
        remote = frozenset((mac, topology.tunnel_ip(at)) for mac, at in macs.items()
                           if at != leaf) if controller else frozenset()
        flood = frozenset(topology.tunnel_ip(other) for other in bindings
                          if other != leaf and topology.tunnel_ip(other) != own_ip) \
            if controller else frozenset()
        result[leaf] = NetworkOnLeaf(intent.network_id, intent.vni, frozenset(leaf_bindings),
                                     remote, flood)
    return result


def make_before_break(desired: DesiredByLeaf,
                      current: dict[str, dict[str, NetworkOnLeaf]]) -> DesiredByLeaf:
    """The first of two steps towards ``desired``: everything added, nothing taken away.

    Bindings and flooding entries are the union of what the leaf has and what it must
    have; remote MACs are already the new ones (a moved VM's MAC points at its new
    leaf); a network that must leave a leaf stays there for now.  A binding another
    network now wants (a VLAN given back and handed out again) is not kept.  The
    second step is ``desired`` itself.  So traffic always has a path while a VM moves.
    """
    step: DesiredByLeaf = {}
    for leaf, networks in desired.items():
        wanted = wanted_bindings(networks)
        step[leaf] = {}
        for network_id, want in networks.items():
            have = current.get(leaf, {}).get(network_id)
            if have is None:
                step[leaf][network_id] = want
                continue
            own = want.bindings if want is not None else frozenset()
            kept = frozenset(b for b in have.bindings if b in own or b not in wanted)
            if want is None:
                step[leaf][network_id] = NetworkOnLeaf(
                    network_id, have.vni, kept, have.remote_macs, have.flood_tunnel_ips)
            else:
                step[leaf][network_id] = NetworkOnLeaf(
                    network_id, want.vni, want.bindings | kept, want.remote_macs,
                    want.flood_tunnel_ips | have.flood_tunnel_ips)
    return step


def wanted_bindings(networks: Mapping[str, NetworkOnLeaf | None]) -> set[tuple[str, int]]:
    """Every (port, VLAN) the networks want on one leaf."""
    return {b for want in networks.values() if want is not None for b in want.bindings}


def holders(desired: DesiredByLeaf, current: HeldByLeaf) -> set[str]:
    """Networks of ours, not among ``desired``'s, that hold on some leaf a (port, VLAN)
    one of ``desired``'s networks wants there: a VLAN Neutron took back from them and
    handed out again, whose removal has not reached that leaf yet."""
    found: set[str] = set()
    for leaf, networks in desired.items():
        wanted = wanted_bindings(networks)
        found.update(n for n, have in current.get(leaf, {}).items()
                     if n not in networks and have.bindings & wanted)
    return found


def releases(desired: DesiredByLeaf, theirs: DesiredByLeaf,
             current: HeldByLeaf) -> DesiredByLeaf:
    """Per leaf, what to hand each holder (see :func:`holders`) in the same call as
    ``desired``, so that the (port, VLAN)s it no longer needs are simply rebound.

    ``theirs`` is the holders' own desired state.  A holder that needs nothing on the
    leaf any more gets None: it leaves the leaf, as its own journal entry would have
    it do.  One still needed there keeps what it has, less those (port, VLAN)s: it
    gains nothing, so it claims nothing new, which is why one round of looking for
    holders is enough.  A holder whose desired state still has every contested
    (port, VLAN) is not named: Neutron gives that VLAN to two networks, and the leaf
    refuses the taker as before.
    """
    out: DesiredByLeaf = {}
    for leaf, networks in desired.items():
        wanted = wanted_bindings(networks)
        out[leaf] = {}
        for network_id, have in current.get(leaf, {}).items():
            contested = have.bindings & wanted
            if network_id in networks or not contested:
                continue
            want = theirs.get(leaf, {}).get(network_id)
            if want is None:
                out[leaf][network_id] = None
            elif contested - want.bindings:
                out[leaf][network_id] = dataclasses.replace(
                    have, bindings=have.bindings - (contested - want.bindings))
    return out
