"""Neutron's own agents across the fabric (issue 14), with real packets.

One lab for the module (``lab up --agents``, MariaDB): a network node ``net-1`` with
Neutron's OVS, DHCP and L3 agents behind leaf3, a KVM compute ``kvm-1`` with its OVS
agent behind leaf2, vSphere VMs on ESXi host DC0_C0_H0 behind leaf1.  Every guest
gets its address from Neutron's dnsmasq on ``net-1`` (VLAN -> VXLAN -> VLAN).
"""
from __future__ import annotations

import concurrent.futures
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy

from networking_dvs_fabric.lab import dhcp_client, guests, netns, topology
from networking_dvs_fabric.lab.agent_hosts import AGENT_DOWN_TIME, alive_agents
from networking_dvs_fabric.lab.demo import PRECOPY_SECONDS
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.mariadb import MariaDB
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.dataplane import lab_tag
from networking_dvs_fabric.lab.procs import LabError, pid_alive, wait_until

from .conftest import lab_directory
from .lease_diagnosis import agent_missed_the_binding, why_no_lease

WHY_NOT = netns.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no dataplane here: {WHY_NOT}")


@pytest.fixture(scope="module")
def cloud(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_directory(request, tmp_path_factory, "lab-agents") as directory:
        lab = Lab(directory)
        try:
            lab.up(db="mariadb", agents=True)
            yield lab
        finally:
            dnsmasq = [int(p.read_text()) for p in
                       directory.glob("agent-hosts/*/state/dhcp/*/pid")]
            ours = {f"qdhcp-{p.name}" for p in directory.glob("agent-hosts/*/state/dhcp/*")}
            try:
                ours |= {f"qrouter-{r['id']}" for r in
                         guests.neutron_of(lab)._call("GET", "routers")["routers"]}
            except Exception:  # noqa: BLE001 - the lab may not have come up
                pass
            lab.down()
        # Nothing left: no dnsmasq (it leaves the agents' process groups), no namespace
        # of the lab's, nor of its agents (qdhcp-/qrouter- named by Neutron's ids).
        assert not [pid for pid in dnsmasq if pid_alive(pid)]
        tag = lab_tag(directory)
        left = [ns for ns in netns.list_ns() if ns.startswith(f"dvsf-{tag}-") or ns in ours]
        assert not left, f"namespaces left after lab down: {left}"


@pytest.fixture(scope="module")
def nova(cloud: Lab) -> Iterator[FakeNova]:
    with FakeNova(cloud.status()["vcenter"]) as fake:
        yield fake


def _network(neutron, cidr: str, gateway: bool = False) -> tuple[dict, dict]:
    net = neutron.create_network(f"agents-{uuid.uuid4().hex[:6]}")
    return net, neutron.create_subnet(net["id"], cidr, gateway=gateway)


def _dhcp_port(neutron, network_id: str) -> dict:
    def find():
        return [p for p in neutron.list_ports(network_id)
                if p["device_owner"] == "network:dhcp" and p["status"] == "ACTIVE"]
    wait_until(lambda: bool(find()), 60, "the network's DHCP port to be ACTIVE")
    return find()[0]


def test_a_vsphere_vm_leases_its_address_from_the_network_node_and_pings_a_kvm_vm(
        cloud: Lab, nova: FakeNova) -> None:
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.1.0/24")
    dhcp = _dhcp_port(neutron, net["id"])
    # The DHCP port: VXLAN at the top, a VLAN on the KVM physical network below,
    # bound by the network node's OVS agent.
    assert dhcp["binding:host_id"] == topology.NETWORK_NODE
    assert dhcp["binding:vif_type"] == "ovs"
    vm = guests.boot_vsphere_vm(cloud, nova, neutron, net["id"], "agents-vm-a")
    lease = guests.wait_lease(cloud, vm)
    assert lease["server"] == dhcp["fixed_ips"][0]["ip_address"]
    assert lease["mtu"] == "1450"
    assert lease["bound_at"] - vm.attached_at < 30
    kvm = guests.boot_kvm_vm(cloud, neutron, net["id"], "agents-kvm-a")
    guests.wait_lease(cloud, kvm)
    # The lease can come between the OVS agent's wiring and its report (and the
    # leaves' completion of the port's provisioning): ACTIVE follows within seconds.
    wait_until(lambda: neutron.get_port(kvm.port["id"])["status"] == "ACTIVE", 60,
               "the KVM VM's port to be ACTIVE")
    assert neutron.get_port(kvm.port["id"])["binding:vif_type"] == "ovs"
    # leaf1 (ESXi) <-> leaf2 (kvm-1): every ping answered, both ways.
    sent, received = netns.ping(vm.ns, kvm.address, count=5)
    assert received == sent == 5
    sent, received = netns.ping(kvm.ns, vm.address, count=5)
    assert received == sent == 5


def test_one_security_group_holds_on_both_sides(cloud: Lab, nova: FakeNova) -> None:
    """Group G allows ICMP only among its members, in and out (its default egress
    rules removed: the DVS's stateless filters would otherwise let any ICMP in, see
    docs/security.md); H keeps only the defaults.  vm-g (vSphere, G, filtered by the
    DVS) and kvm-g (kvm-1, G, filtered by the OVS agent's firewall) answer each other;
    vm-h (vSphere, H) reaches neither and neither reaches it.  Then a rule admitting
    vm-h's address opens both sides alike: one group, members on both sides, enforced
    on both sides."""
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.8.0/24")
    _dhcp_port(neutron, net["id"])
    tag = uuid.uuid4().hex[:4]
    g = neutron.create_security_group(f"agents-g-{tag}")
    for rule in g["security_group_rules"]:
        neutron.delete_security_group_rule(rule["id"])
    for direction in ("ingress", "egress"):
        neutron.create_security_group_rule(g["id"], direction, protocol="icmp",
                                           remote_group_id=g["id"])
    h = neutron.create_security_group(f"agents-h-{tag}")     # the default egress only
    vm_g = guests.boot_vsphere_vm(cloud, nova, neutron, net["id"], f"agents-vm-g-{tag}",
                                  security_groups=[g["id"]])
    vm_h = guests.boot_vsphere_vm(cloud, nova, neutron, net["id"], f"agents-vm-h-{tag}",
                                  esxi_host="DC0_C0_H2", security_groups=[h["id"]])
    kvm_g = guests.boot_kvm_vm(cloud, neutron, net["id"], f"agents-kvm-g-{tag}",
                               security_groups=[g["id"]])
    for guest in (vm_g, vm_h, kvm_g):
        guests.wait_lease(cloud, guest)

    def answered(src: guests.Guest, dst: guests.Guest) -> bool:
        return netns.ping(src.ns, dst.address, count=2, interval=0.2)[1] > 0
    # Members admitted across the fabric, both ways (the filters follow the members).
    wait_until(lambda: answered(vm_g, kvm_g), 60, "kvm-g (OVS firewall) to answer vm-g")
    wait_until(lambda: answered(kvm_g, vm_g), 60, "vm-g (DVS filter) to answer kvm-g")
    # A non-member is refused by both sides' filters.
    assert netns.ping(vm_h.ns, kvm_g.address, count=5)[1] == 0
    assert netns.ping(vm_h.ns, vm_g.address, count=5)[1] == 0
    assert netns.ping(kvm_g.ns, vm_h.address, count=5)[1] == 0
    assert netns.ping(vm_g.ns, vm_h.address, count=5)[1] == 0
    # The path itself is open: vm-h is answered on both sides once G admits it.
    neutron.create_security_group_rule(g["id"], protocol="icmp",
                                       remote_ip_prefix=vm_h.address + "/32")
    wait_until(lambda: answered(vm_h, kvm_g), 60, "kvm-g to admit vm-h by its address")
    wait_until(lambda: answered(vm_h, vm_g), 60, "vm-g to admit vm-h by its address")


def test_a_vmotion_during_a_ping_to_a_kvm_vm_loses_at_most_two(
        cloud: Lab, nova: FakeNova) -> None:
    """The vSphere VM moves from DC0_C0_H0 (leaf1) to DC0_C0_H2 (leaf3), announced as
    vCenter does, while it pings the KVM VM (kvm-1, leaf2) every 100 ms."""
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.7.0/24")
    vm = guests.boot_vsphere_vm(cloud, nova, neutron, net["id"], "agents-vm-move")
    kvm = guests.boot_kvm_vm(cloud, neutron, net["id"], "agents-kvm-move")
    guests.wait_lease(cloud, vm)
    guests.wait_lease(cloud, kvm)
    assert netns.ping(vm.ns, kvm.address, count=3)[1] == 3
    pinger = netns.PingRun(vm.ns, kvm.address, 0.1)
    try:
        time.sleep(1.0)
        nova.announce_migration("agents-vm-move", "DC0_C0_H2")
        time.sleep(PRECOPY_SECONDS)          # the memory copy; the fabric prepares
        nova.vmotion("agents-vm-move", "DC0_C0_H2")
        time.sleep(4.0)
    finally:
        sent, received = pinger.stop()
    assert sent >= 60
    assert sent - received <= 2, f"{sent - received} of {sent} pings lost"


BLOCKS_SQL = sqlalchemy.text(
    "SELECT b.entity FROM provisioningblocks b JOIN ports p "
    "ON p.standard_attr_id = b.standard_attr_id WHERE p.id = :port")


def _blocks(lab: Lab, port_id: str) -> set[str]:
    """Who still holds the port DOWN (Neutron's provisioning blocks, from MariaDB)."""
    engine = sqlalchemy.create_engine(MariaDB.from_json(lab.state()["services"]["mariadb"]).url)
    try:
        with engine.connect() as conn:
            return {row[0] for row in conn.execute(BLOCKS_SQL, {"port": port_id})}
    finally:
        engine.dispose()


def test_a_port_only_its_agent_reports_up_waits_for_that_agent(cloud: Lab) -> None:
    """Neutron gives some ports no agent block (router interfaces, DHCP ports, ports
    with no owner): its agent's report makes them ACTIVE.  The fabric's block must not
    make one ACTIVE before that (a router interface was ACTIVE before net-1's agent
    tagged it, and a ping through the router was lost).  A port with no owner, bound
    to kvm-1 and not plugged: once the leaves carry it, only the agent's block is
    left and it stays DOWN; plugged, the agent wires it and it turns ACTIVE."""
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.7.0/24")
    _dhcp_port(neutron, net["id"])
    port = neutron.create_port(net["id"], topology.KVM_HOST, name="agents-no-owner",
                               device_owner="", device_id=str(uuid.uuid4()))
    assert port["binding:vif_type"] == "ovs"
    wait_until(lambda: _blocks(cloud, port["id"]) == {"L2"}, 60,
               "the fabric's block lifted, the agent's left")
    time.sleep(2)       # the fabric's completion has run: nothing turns it ACTIVE now
    assert neutron.get_port(port["id"])["status"] == "DOWN"
    cloud.plug_kvm_vm(port)
    wait_until(lambda: neutron.get_port(port["id"])["status"] == "ACTIVE", 60,
               "the port ACTIVE once kvm-1's agent wired it")
    assert not _blocks(cloud, port["id"])


def test_two_networks_joined_by_a_router_on_the_network_node(
        cloud: Lab, nova: FakeNova) -> None:
    neutron = guests.neutron_of(cloud)
    net_a, sub_a = _network(neutron, "10.14.2.0/24", gateway=True)
    net_b, sub_b = _network(neutron, "10.14.3.0/24", gateway=True)
    router = neutron.create_router("agents-router")
    for sub in (sub_a, sub_b):
        neutron.add_router_interface(router["id"], sub["id"])
    vm_a = guests.boot_vsphere_vm(cloud, nova, neutron, net_a["id"], "agents-vm-ra")
    vm_b = guests.boot_vsphere_vm(cloud, nova, neutron, net_b["id"], "agents-vm-rb",
                                  esxi_host="DC0_C1_H1")
    lease = guests.wait_lease(cloud, vm_a)
    guests.wait_lease(cloud, vm_b)
    assert lease["router"] == sub_a["gateway_ip"]
    # The router's interfaces are ports on net-1, bound through the fabric.
    ports = neutron.router_ports(router["id"])
    assert len(ports) == 2
    for port in ports:
        wait_until(lambda p=port: neutron.get_port(p["id"])["status"] == "ACTIVE", 60,
                   f"router port {port['id']} ACTIVE")
        assert neutron.get_port(port["id"])["binding:host_id"] == topology.NETWORK_NODE
    sent, received = netns.ping(vm_a.ns, sub_a["gateway_ip"], count=3)
    assert received == sent
    sent, received = netns.ping(vm_a.ns, vm_b.address, count=5)
    assert received == sent == 5, "no path through the router"


def test_a_host_missing_from_the_topology_fails_to_bind_and_the_log_says_why(
        cloud: Lab) -> None:
    """An OVS agent alive on a host the topology file does not name: its port fails to
    bind, and Neutron's log names the host and the file."""
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.4.0/24")
    _dhcp_port(neutron, net["id"])     # the network now has the fabric's VLAN segment
    host = "kvm-9"
    from .test_message_bus import _report
    _report(cloud.status()["message_bus"]["transport_url"], host,
            {"bridge_mappings": {topology.KVM_PHYSICAL_NETWORK: "br-phys"},
             "tunnel_types": [], "datapath_type": "netdev"})
    wait_until(lambda: (host, "ovs") in alive_agents(cloud.status()["neutron"]["url"]), 30,
               f"the agent of {host} alive")
    port = neutron.create_port(net["id"], host, device_id=str(uuid.uuid4()))
    assert port["binding:vif_type"] == "binding_failed"
    topology_file = Path(cloud.state()["config_files"][0]).parent / "fabric-topology.yaml"
    logs = "".join(p.read_text(errors="replace")
                   for p in (cloud.dir / "logs").glob("neutron-*.log"))
    said = [line for line in logs.splitlines()
            if "not in the fabric topology file" in line and host in line]
    assert said and str(topology_file) in said[0]


def test_an_ovs_agent_down_refuses_the_bind_and_the_port_binds_when_it_is_back(
        cloud: Lab) -> None:
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.5.0/24")
    url = cloud.status()["neutron"]["url"]
    cloud.stop_agent(topology.KVM_HOST, "ovs")
    try:
        wait_until(lambda: (topology.KVM_HOST, "ovs") not in alive_agents(url), 60,
                   "Neutron to see kvm-1's OVS agent dead")
        kvm = guests.boot_kvm_vm(cloud, neutron, net["id"], "agents-kvm-down")
        assert kvm.port["binding:vif_type"] == "binding_failed"
    finally:
        cloud.start_agent(topology.KVM_HOST, "ovs")
    # Back: the agent finds the plugged tap, asks for its details, ML2 binds it.
    guests.wait_lease(cloud, kvm, timeout=90)
    # The agent wires the port, then reports it up: the guest may lease in between,
    # and the port turns ACTIVE when the agent's report and the fabric's are both in.
    port: dict = {}
    wait_until(lambda: port.update(neutron.get_port(kvm.port["id"])) or
               port["status"] == "ACTIVE", 60, "the port back on kvm-1 to be ACTIVE")
    assert port["binding:vif_type"] == "ovs"


def test_rabbitmq_restarted_the_agents_reconnect_and_nothing_is_lost(
        cloud: Lab, nova: FakeNova) -> None:
    """The bus is down longer than Neutron's agent_down_time: a port created meanwhile
    is wired after it, and a VM's DHCP request is still answered.  (Neutron's agents
    recover what they missed by a full sync when the server tells them they were
    revived; a notification published into a connection the broker has just closed is
    lost, AMQP without publisher confirms, so the outage outlasts agent_down_time.)"""
    neutron = guests.neutron_of(cloud)
    net, _ = _network(neutron, "10.14.6.0/24")
    _dhcp_port(neutron, net["id"])
    before = guests.boot_vsphere_vm(cloud, nova, neutron, net["id"],
                                    f"agents-vm-bus-{uuid.uuid4().hex[:4]}")
    guests.wait_lease(cloud, before)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        created: list[concurrent.futures.Future] = []

        def outage() -> None:
            created.append(pool.submit(neutron.create_port, net["id"], topology.KVM_HOST,
                                       name="agents-kvm-bus", device_id=str(uuid.uuid4())))
            time.sleep(AGENT_DOWN_TIME + 5)
        cloud.restart_rabbitmq(while_down=outage)
        port = created[0].result(timeout=120)
    url = cloud.status()["neutron"]["url"]
    expected = {(h, a) for h, agents in cloud.status()["agent_hosts"].items() for a in agents}
    wait_until(lambda: expected <= alive_agents(url), 120, "every agent alive again")
    ns = cloud.plug_kvm_vm(port)
    during = guests.Guest("agents-kvm-bus", port, ns, time.time(),
                          client=dhcp_client.start(ns, cloud.dataplane().leases_dir))
    try:
        guests.wait_lease(cloud, during, timeout=90)
    except LabError as exc:         # each link of the chain, for a failure far away (CI)
        if not agent_missed_the_binding(cloud, neutron, port):
            raise AssertionError(f"{exc}\n{why_no_lease(cloud, neutron, port)}") from exc
        # Neutron's own gap, not the fabric's (docs/reliability.md): the agent's port
        # cache missed the bound port's push.  The operator's remedy: restart the agent.
        warnings.warn(f"{topology.KVM_HOST}'s OVS agent still skips port {port['id']}, "
                      "bound during the bus outage (its cache missed the push); "
                      "restarting the agent")
        cloud.stop_agent(topology.KVM_HOST, "ovs")
        cloud.start_agent(topology.KVM_HOST, "ovs")
        try:
            guests.wait_lease(cloud, during, timeout=90)
        except LabError as again:
            raise AssertionError(f"{again} (after the OVS agent's restart)\n"
                                 f"{why_no_lease(cloud, neutron, port)}") from again
    # As on kvm-1 above, the lease can come between the agent's wiring and its report.
    wait_until(lambda: neutron.get_port(port["id"])["status"] == "ACTIVE", 60,
               "the port created during the outage to be ACTIVE")
    # The VM from before asks again (a new DISCOVER) and is answered with its address.
    dhcp_client.start(before.ns, cloud.dataplane().leases_dir)
    guests.wait_lease(cloud, before)
    sent, received = netns.ping(before.ns, during.address, count=3)
    assert received == sent
