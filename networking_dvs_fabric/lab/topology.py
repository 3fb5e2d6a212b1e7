"""The lab's fixed model: what the vCenter simulator holds and how hosts reach leaves.

The simulator's VPX model names things predictably (DC0, DC0_C0, DC0_C0_H0, DVS0);
this module writes those names down once so the launchers, the configs and the
tests agree.  Hosts of each cluster are spread over at least two leaves so a
vMotion inside a cluster can change leaf.

With the second DVS (``lab up --second-dvs``, ``lab/second_dvs.py``) cluster DC0_C1
leaves DVS0 for DVS1, on a physical network of its own with the same VLAN numbers:
beyond the ~4,000 networks one DVS can carry.  The functions below that depend on it
take ``second_dvs``; its default, False, is the one-DVS lab.
"""
from __future__ import annotations

import dataclasses

DATACENTER = "DC0"
DVS_NAME = "DVS0"
PHYSICAL_NETWORK = "physnet-dvs"
CLUSTERS = ("DC0_C0", "DC0_C1")
HOSTS_PER_CLUSTER = 3
VLAN_RANGE = (100, 3999)
# The second DVS (opt-in): DC0_C1's ESXi hosts move to it; C0's stay on DVS0.
SECOND_DVS_NAME = "DVS1"
SECOND_PHYSICAL_NETWORK = "physnet-dvs2"
SECOND_DVS_CLUSTERS = ("DC0_C1",)
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


def dvs_of_cluster(cluster: str, second_dvs: bool = False) -> str:
    """The DVS ``cluster``'s ESXi hosts are members of."""
    return SECOND_DVS_NAME if second_dvs and cluster in SECOND_DVS_CLUSTERS else DVS_NAME


def dvs_mappings(second_dvs: bool = False) -> dict[str, str]:
    """``[ml2_vsphere] dvs_mappings`` (and the status's ``vcenter.dvs``): physnet -> DVS."""
    mappings = {PHYSICAL_NETWORK: DVS_NAME}
    if second_dvs:
        mappings[SECOND_PHYSICAL_NETWORK] = SECOND_DVS_NAME
    return mappings


@dataclasses.dataclass(frozen=True)
class Leaf:
    name: str
    tunnel_ip: str


@dataclasses.dataclass(frozen=True)
class Attachment:
    esxi_host: str
    leaf: str
    port: str
    dvs: str = DVS_NAME         # the DVS the host is a member of


def leaves() -> list[Leaf]:
    return [Leaf(name, f"192.0.2.{i + 1}") for i, name in enumerate(LEAF_NAMES)]


def attachments(second_dvs: bool = False) -> list[Attachment]:
    """Round-robin every ESXi host onto a leaf; ports are numbered per leaf.

    The cabling is the same in both modes; ``second_dvs`` only changes ``dvs``."""
    result: list[Attachment] = []
    per_leaf: dict[str, int] = {}
    index = 0
    for cluster in CLUSTERS:
        for host in esxi_hosts(cluster):
            leaf = LEAF_NAMES[index % len(LEAF_NAMES)]
            per_leaf[leaf] = per_leaf.get(leaf, 0) + 1
            result.append(Attachment(host, leaf, f"swp{per_leaf[leaf]}",
                                     dvs_of_cluster(cluster, second_dvs)))
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


def fabric_topology(leaf_endpoints: dict[str, str], second_dvs: bool = False) -> dict:
    """The ``[ml2_fabric] topology_file`` contents for the lab (leaf name -> OVSDB)."""
    return {
        "leaves": [{"name": leaf.name, "ovsdb": leaf_endpoints[leaf.name],
                    "tunnel_ip": leaf.tunnel_ip} for leaf in leaves()],
        "hosts": [{"name": a.esxi_host,
                   "attachments": [{"leaf": a.leaf, "port": a.port, "dvs": a.dvs}]}
                  for a in attachments(second_dvs)] + [
            {"name": host, "physical_network": KVM_PHYSICAL_NETWORK,
             "attachments": [{"leaf": leaf, "port": port} for leaf, port in links]}
            for host, links in AGENT_HOSTS.items()],
    }


def compute_hosts() -> dict[str, dict]:
    return {compute_host(c): {"cluster": c, "esxi_hosts": esxi_hosts(c)} for c in CLUSTERS}


def vlan_ranges(low: int = VLAN_RANGE[0], high: int = VLAN_RANGE[1],
                second_dvs: bool = False) -> str:
    """``[ml2_type_vlan] network_vlan_ranges``: the same VLANs on every physical network."""
    physnets = [*dvs_mappings(second_dvs), KVM_PHYSICAL_NETWORK]
    return ",".join(f"{physnet}:{low}:{high}" for physnet in physnets)
