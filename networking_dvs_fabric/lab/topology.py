"""The lab's fixed model: what the vCenter simulator holds and how hosts reach leaves.

The simulator's VPX model names things predictably (DC0, DC0_C0, DC0_C0_H0, DVS0);
this module writes those names down once so the launchers, the configs and the
tests agree.  Hosts of each cluster are spread over at least two leaves so a
vMotion inside a cluster can change leaf.
"""
from __future__ import annotations

import dataclasses

DATACENTER = "DC0"
DVS_NAME = "DVS0"
PHYSICAL_NETWORK = "physnet-dvs"
CLUSTERS = ("DC0_C0", "DC0_C1")
HOSTS_PER_CLUSTER = 3
VLAN_RANGE = (100, 3999)
LEAF_NAMES = ("leaf1", "leaf2", "leaf3")
# A KVM host outside vSphere (bottom level: Open vSwitch), on its own physical network,
# cabled to two leaves (a leaf pair); its ports come after the ESXi hosts' ports.
KVM_HOST = "kvm-1"
KVM_PHYSICAL_NETWORK = "physnet-kvm"
KVM_PORTS = (("leaf2", "swp9"), ("leaf3", "swp9"))
# The network node: Neutron's DHCP and L3 agents on Open vSwitch, on the KVM physical
# network, behind leaf3 (ESXi hosts of both clusters sit behind leaf1).
NETWORK_NODE = "net-1"
NETWORK_NODE_PORTS = (("leaf3", "swp10"),)
# The agent hosts (lab/agent_hosts.py): the KVM compute and the network node, each an
# Open vSwitch host with Neutron's agents; their links in the order they are cabled.
AGENT_HOSTS = {KVM_HOST: KVM_PORTS, NETWORK_NODE: NETWORK_NODE_PORTS}


def esxi_hosts(cluster: str) -> list[str]:
    return [f"{cluster}_H{i}" for i in range(HOSTS_PER_CLUSTER)]


def compute_host(cluster: str) -> str:
    """The binding host Nova's VMware driver would use for ``cluster``."""
    return f"compute-{cluster.lower().replace('_', '-')}"


@dataclasses.dataclass(frozen=True)
class Leaf:
    name: str
    tunnel_ip: str


@dataclasses.dataclass(frozen=True)
class Attachment:
    esxi_host: str
    leaf: str
    port: str


def leaves() -> list[Leaf]:
    return [Leaf(name, f"192.0.2.{i + 1}") for i, name in enumerate(LEAF_NAMES)]


def attachments() -> list[Attachment]:
    """Round-robin every ESXi host onto a leaf; ports are numbered per leaf."""
    result: list[Attachment] = []
    per_leaf: dict[str, int] = {}
    index = 0
    for cluster in CLUSTERS:
        for host in esxi_hosts(cluster):
            leaf = LEAF_NAMES[index % len(LEAF_NAMES)]
            per_leaf[leaf] = per_leaf.get(leaf, 0) + 1
            result.append(Attachment(host, leaf, f"swp{per_leaf[leaf]}"))
            index += 1
    return result


def leaf_ports() -> dict[str, list[str]]:
    """Every leaf's physical ports: the ESXi hosts' and the KVM host's."""
    ports: dict[str, list[str]] = {name: [] for name in LEAF_NAMES}
    for att in attachments():
        ports[att.leaf].append(att.port)
    for links in AGENT_HOSTS.values():
        for leaf, port in links:
            ports[leaf].append(port)
    return ports


def fabric_topology(leaf_endpoints: dict[str, str]) -> dict:
    """The ``[ml2_fabric] topology_file`` contents for the lab (leaf name -> OVSDB)."""
    return {
        "leaves": [{"name": leaf.name, "ovsdb": leaf_endpoints[leaf.name],
                    "tunnel_ip": leaf.tunnel_ip} for leaf in leaves()],
        "hosts": [{"name": a.esxi_host,
                   "attachments": [{"leaf": a.leaf, "port": a.port, "dvs": DVS_NAME}]}
                  for a in attachments()] + [
            {"name": host, "physical_network": KVM_PHYSICAL_NETWORK,
             "attachments": [{"leaf": leaf, "port": port} for leaf, port in links]}
            for host, links in AGENT_HOSTS.items()],
    }


def compute_hosts() -> dict[str, dict]:
    return {compute_host(c): {"cluster": c, "esxi_hosts": esxi_hosts(c)} for c in CLUSTERS}


def vlan_ranges(low: int = VLAN_RANGE[0], high: int = VLAN_RANGE[1]) -> str:
    """``[ml2_type_vlan] network_vlan_ranges``: the same VLANs on both physical networks."""
    return f"{PHYSICAL_NETWORK}:{low}:{high},{KVM_PHYSICAL_NETWORK}:{low}:{high}"
