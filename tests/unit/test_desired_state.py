"""What each leaf must hold for a network whose VM moves (pure computation)."""
from networking_dvs_fabric.fabric.desired import desired_state, make_before_break
from networking_dvs_fabric.fabric.intent import BoundPort, NetworkIntent
from networking_dvs_fabric.topology import Topology

CLUSTER = "compute-c0"
HOSTS = {"esx-a": ("leaf1", "swp1"), "esx-b": ("leaf2", "swp1"), "esx-c": ("leaf3", "swp1")}
IPS = {"leaf1": "192.0.2.1", "leaf2": "192.0.2.2", "leaf3": "192.0.2.3"}
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


class Directory:
    """Stands in for vCenter's answers: one cluster of three ESXi hosts on one DVS."""

    def esxi_hosts(self, binding_host):
        return sorted(HOSTS) if binding_host == CLUSTER else (
            [binding_host] if binding_host in HOSTS else None)

    def physical_networks(self, esxi_host):
        return {"physnet-dvs": "DVS0"}

    def mapped_physical_networks(self):
        return frozenset({"physnet-dvs"})


def _topology():
    return Topology.from_dict({
        "leaves": [{"name": n, "ovsdb": f"tcp:127.0.0.1:{6640 + i}", "tunnel_ip": ip}
                   for i, (n, ip) in enumerate(IPS.items())],
        "hosts": [{"name": h, "attachments": [{"leaf": leaf, "port": port, "dvs": "DVS0"}]}
                  for h, (leaf, port) in HOSTS.items()]})


def _port(mac, host, destination=None):
    return BoundPort(port_id=mac, mac=mac, host=CLUSTER, physical_network="physnet-dvs",
                     vlan=100, active=True, vm_host=host, vm_destination=destination)


def _remote(desired, leaf):
    return dict(desired[leaf]["net"].remote_macs)


def _desired(*ports, mode="pre_provision"):
    intent = NetworkIntent("net", 5000, tuple(ports))
    return desired_state({"net": intent}, _topology(), Directory(), mode=mode)


def test_a_settled_vm_is_a_remote_mac_on_the_other_leaves():
    want = _desired(_port(MAC_A, "esx-a"), _port(MAC_B, "esx-b"))
    assert _remote(want, "leaf2")[MAC_A] == IPS["leaf1"]
    assert _remote(want, "leaf3")[MAC_A] == IPS["leaf1"]
    assert MAC_A not in _remote(want, "leaf1")


def test_a_migrating_vm_is_flooded_everywhere_until_it_arrives():
    moving = _desired(_port(MAC_A, "esx-a", destination="esx-c"), _port(MAC_B, "esx-b"))
    for leaf in IPS:
        assert MAC_A not in _remote(moving, leaf), leaf
    # Flooding reaches both the source and the destination leaf.
    assert moving["leaf2"]["net"].flood_tunnel_ips >= {IPS["leaf1"], IPS["leaf3"]}
    # The other VM keeps its entries.
    assert _remote(moving, "leaf1")[MAC_B] == IPS["leaf2"]
    arrived = _desired(_port(MAC_A, "esx-c"), _port(MAC_B, "esx-b"))
    assert _remote(arrived, "leaf2")[MAC_A] == IPS["leaf3"]


def test_on_demand_prepares_the_destination_while_flooding():
    moving = _desired(_port(MAC_A, "esx-a", destination="esx-c"), _port(MAC_B, "esx-b"),
                      mode="on_demand")
    assert moving["leaf3"]["net"] is not None
    assert ("swp1", 100) in moving["leaf3"]["net"].bindings
    assert IPS["leaf3"] in moving["leaf2"]["net"].flood_tunnel_ips
    step = make_before_break(moving, {})
    assert step["leaf1"]["net"].bindings == moving["leaf1"]["net"].bindings
