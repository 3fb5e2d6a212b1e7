"""Tenant isolation on vSphere ports, with real packets (issue 13).

A lab with the dataplane.  Neutron's security groups, port security and admin
state go through ``vsphere_dvs`` (the port group of each port's set, its filter
kept current by the policy worker) into vCenter; the lab's ESXi host switch
enforces only what it reads back from vCenter.  Three VMs on one network, booted
as Nova does on hosts behind different leaves:

- ``vm-a``: default group + ``ssh`` (no rules at first);
- ``vm-b``: default group;
- ``vm-c``: ``outsider`` (egress anywhere, nothing in).

Every check is a real TCP connection, ping or spoofed frame between namespaces.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from networking_dvs_fabric.lab import netns, topology
from networking_dvs_fabric.lab.client import NeutronClient, NeutronError
from networking_dvs_fabric.lab.dataplane import lab_tag
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from tests.integration.conftest import lab_directory, unique
from networking_dvs_fabric.lab.vm_traffic import Servers, connects, pings, wait_for

WHY_NOT = netns.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no dataplane here: {WHY_NOT}")

CLUSTER = topology.CLUSTERS[0]
HOSTS = {"vm-a": f"{CLUSTER}_H0", "vm-b": f"{CLUSTER}_H1", "vm-c": f"{CLUSTER}_H1"}
SUBNET = "10.40.0.0/24"
SSH, APP = 22, 9090
# How long a change in Neutron may take to be enforced: API -> journal -> policy
# worker -> vCenter -> lab agent (polls port groups every 0.5 s) -> flows.
ENFORCED_WITHIN = 20.0


class Cloud:
    def __init__(self, lab: Lab) -> None:
        status = lab.status()
        self.lab = lab
        self.neutron = NeutronClient(status["neutron"]["url"])
        self.nova = FakeNova(status["vcenter"])
        self.plane = lab.dataplane()
        self.servers = Servers()
        self.vms: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}

    def ns(self, vm: str) -> str:
        return self.plane.vm_ns(self.vms[vm]["moid"])

    def ip(self, vm: str) -> str:
        return self.vms[vm]["port"]["fixed_ips"][0]["ip_address"]

    def port(self, vm: str) -> dict[str, Any]:
        return self.neutron.get_port(self.vms[vm]["port"]["id"])

    def connects(self, src: str, dst: str, port: int) -> bool:
        return connects(self.ns(src), self.ip(dst), port)

    def until(self, check, what: str) -> float:
        """Seconds until ``check()`` holds (fails past ENFORCED_WITHIN)."""
        started = time.monotonic()
        wait_for(check, ENFORCED_WITHIN, what, step=0.1)
        return time.monotonic() - started

    def close(self) -> None:
        self.servers.stop()
        self.nova.close()


@pytest.fixture(scope="module")
def cloud(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    with lab_directory(request, tmp_path_factory, "lab-secgroups") as directory:
        lab = Lab(directory)
        try:
            lab.up(dataplane=True)
            cloud = Cloud(lab)
            try:
                _build(cloud)
                yield cloud
            finally:
                cloud.close()
                print("timings (s):", cloud.timings)
        finally:
            lab.down()
        ours = f"dvsf-{lab_tag(Path(directory))}-"
        assert not [ns for ns in netns.list_ns() if ns.startswith(ours)]


def _build(cloud: Cloud) -> None:
    neutron = cloud.neutron
    network = neutron.create_network(unique("sg-net"))
    neutron.create_subnet(network["id"], SUBNET)
    default = neutron.security_groups("default")[0]
    cloud.groups = {"default": default, "ssh": neutron.create_security_group(unique("ssh")),
                    "outsider": neutron.create_security_group(unique("outsider")),
                    "clients": neutron.create_security_group(unique("clients"))}
    groups = {"vm-a": ["default", "ssh"], "vm-b": ["default"], "vm-c": ["outsider"]}
    compute = topology.compute_host(CLUSTER)
    for vm, host in HOSTS.items():
        port = neutron.create_port(network["id"], host=compute, name=vm,
                                   security_groups=[cloud.groups[g]["id"]
                                                    for g in groups[vm]])
        assert port["binding:vif_type"] == "dvs", port
        machine = cloud.nova.boot(vm, host, [port])
        cloud.vms[vm] = {"port": port, "moid": machine._moId}
    for vm in cloud.vms:
        wait_for(lambda vm=vm: cloud.ns(vm) in netns.list_ns() and cloud.ip(vm) in netns.ip(
            "-o", "addr", "show", "dev", "eth0", ns=cloud.ns(vm), check=False), 90,
            f"the dataplane agent plugging {vm}")
    for vm in cloud.vms:
        cloud.servers.start(cloud.ns(vm), SSH, APP)
    # Members of the default group talk (the first answer waits for the fabric).
    wait_for(lambda: pings(cloud.ns("vm-b"), cloud.ip("vm-a"), 1)[1] == 1, 90,
             "a first ping b -> a")


def test_default_group_lets_members_talk_and_keeps_others_out(cloud: Cloud) -> None:
    assert cloud.connects("vm-b", "vm-a", APP)
    assert cloud.connects("vm-a", "vm-b", APP)
    assert pings(cloud.ns("vm-a"), cloud.ip("vm-b"))[1] == 3
    # vm-c may send anywhere, but nothing of the default group lets it in.
    assert not cloud.connects("vm-c", "vm-a", APP)
    assert not cloud.connects("vm-c", "vm-b", SSH)
    # And vm-c's own group lets nothing in either.
    assert not cloud.connects("vm-a", "vm-c", APP)


def test_a_rule_opening_tcp_22_from_a_cidr_lets_exactly_that_in(cloud: Cloud) -> None:
    assert not cloud.connects("vm-c", "vm-a", SSH)
    rule = cloud.neutron.create_security_group_rule(
        cloud.groups["ssh"]["id"], protocol="tcp", port_range_min=SSH, port_range_max=SSH,
        remote_ip_prefix=f"{cloud.ip('vm-c')}/32")
    cloud.timings["rule_added"] = cloud.until(lambda: cloud.connects("vm-c", "vm-a", SSH),
                                              "the new rule letting vm-c in on 22")
    assert not cloud.connects("vm-c", "vm-a", APP)        # exactly that port
    cloud.neutron.delete_security_group_rule(rule["id"])
    cloud.timings["rule_removed"] = cloud.until(
        lambda: not cloud.connects("vm-c", "vm-a", SSH), "the removed rule closing 22")


def test_a_rule_the_dvs_cannot_express_is_refused_at_the_api(cloud: Cloud) -> None:
    with pytest.raises(NeutronError) as refused:
        cloud.neutron.create_security_group_rule(cloud.groups["ssh"]["id"], protocol="icmp",
                                                 port_range_min=8, port_range_max=0)
    assert "HTTP 400" in str(refused.value)
    assert "ICMP type 8 code 0" in str(refused.value)


def test_remote_group_follows_membership_and_the_nic_moves(cloud: Cloud) -> None:
    clients = cloud.groups["clients"]["id"]
    cloud.neutron.create_security_group_rule(
        cloud.groups["ssh"]["id"], protocol="tcp", port_range_min=APP, port_range_max=APP,
        remote_group_id=clients)
    time.sleep(2)
    assert not cloud.connects("vm-c", "vm-a", APP)
    before = cloud.port("vm-c")["binding:vif_details"]
    # vm-c joins "clients": its set changes (its NIC moves to the new set's port
    # group) and vm-a's port group lets the new member in.
    cloud.neutron.update_port(cloud.vms["vm-c"]["port"]["id"],
                              security_groups=[cloud.groups["outsider"]["id"], clients])
    cloud.timings["member_joined"] = cloud.until(
        lambda: cloud.connects("vm-c", "vm-a", APP), "vm-c let in as a member of clients")
    after = cloud.port("vm-c")["binding:vif_details"]
    assert after["pg_id"] != before["pg_id"]
    assert after["dvs_port_group_set"] != before["dvs_port_group_set"]
    # It leaves the group again: shut out again.
    cloud.neutron.update_port(cloud.vms["vm-c"]["port"]["id"],
                              security_groups=[cloud.groups["outsider"]["id"]])
    cloud.timings["member_left"] = cloud.until(
        lambda: not cloud.connects("vm-c", "vm-a", APP), "vm-c shut out after leaving")


def spoofed_ping(ns: str, source: str, address: str, count: int) -> int:
    """Echo replies received for pings sent from ``source`` (not the port's address)."""
    out = netns.run(netns.in_ns(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                                "-I", source, address), check=False)
    return netns.parse_ping(out)[1]


def macs_spoofed_ping(ns: str, mac: str, address: str) -> int:
    """Echo replies received while the VM's NIC sends from another MAC (then put back)."""
    real = netns.ip("-o", "link", "show", "dev", "eth0", ns=ns).split("link/ether ")[1].split()[0]
    netns.ip("link", "set", "dev", "eth0", "address", mac, ns=ns)
    try:
        return pings(ns, address, 3)[1]
    finally:
        netns.ip("link", "set", "dev", "eth0", "address", real, ns=ns)


def test_spoofed_source_ip_and_mac_dropped_with_port_security_pass_without(
        cloud: Cloud) -> None:
    ns, fake_mac = cloud.ns("vm-b"), "fa:16:3e:0b:ad:01"
    # An address of the subnet no port holds (Neutron picks the VMs' own at random).
    taken = {ip["ip_address"] for port in cloud.neutron.list_ports(
        cloud.port("vm-b")["network_id"]) for ip in port["fixed_ips"]}
    spoofed = next(address for address in (f"10.40.0.{n}" for n in range(250, 1, -1))
                   if address not in taken)
    netns.ip("addr", "add", f"{spoofed}/24", "dev", "eth0", ns=ns)
    try:
        # From an address no port of vm-b's set has: the switch drops it; from another
        # MAC than its vNIC's likewise (forged transmits off).
        assert spoofed_ping(ns, spoofed, cloud.ip("vm-a"), 3) == 0
        assert macs_spoofed_ping(ns, fake_mac, cloud.ip("vm-a")) == 0
        port_id = cloud.vms["vm-b"]["port"]["id"]
        cloud.neutron.update_port(port_id, security_groups=[], port_security_enabled=False)
        cloud.timings["port_security_off"] = cloud.until(
            lambda: spoofed_ping(ns, spoofed, cloud.ip("vm-a"), 1) == 1,
            "the spoofed address passing with port security off")
        assert cloud.port("vm-b")["binding:vif_details"]["dvs_port_group_set"] == "open"
        assert macs_spoofed_ping(ns, fake_mac, cloud.ip("vm-a")) >= 2
    finally:
        netns.ip("addr", "del", f"{spoofed}/24", "dev", "eth0", ns=ns, check=False)
        # vm-a learnt vm-b's address at the fake MAC: forget it, as a real guest would
        # after its ARP entry aged out.
        netns.ip("neigh", "flush", "all", ns=cloud.ns("vm-a"))
        cloud.neutron.update_port(cloud.vms["vm-b"]["port"]["id"], port_security_enabled=True,
                                  security_groups=[cloud.groups["default"]["id"]])
    cloud.until(lambda: cloud.port("vm-b")["binding:vif_details"]["dvs_port_group_set"]
                .startswith("sg-") and cloud.connects("vm-b", "vm-a", APP),
                "vm-b back in the default group")


def test_admin_down_cuts_the_vm_off_and_admin_up_restores_it(cloud: Cloud) -> None:
    port_id = cloud.vms["vm-b"]["port"]["id"]
    assert cloud.connects("vm-a", "vm-b", APP)
    cloud.neutron.update_port(port_id, admin_state_up=False)
    cloud.timings["admin_down"] = cloud.until(
        lambda: not cloud.connects("vm-a", "vm-b", APP) and
        pings(cloud.ns("vm-b"), cloud.ip("vm-a"), 1)[1] == 0, "vm-b cut off")
    assert cloud.port("vm-b")["status"] == "DOWN"
    cloud.neutron.update_port(port_id, admin_state_up=True)
    cloud.timings["admin_up"] = cloud.until(
        lambda: cloud.connects("vm-a", "vm-b", APP) and cloud.connects("vm-b", "vm-a", APP),
        "vm-b back")
    wait_for(lambda: cloud.port("vm-b")["status"] == "ACTIVE", 10, "vm-b ACTIVE again")


def test_a_port_whose_groups_change_keeps_working_through_the_move(cloud: Cloud) -> None:
    """vm-a's NIC moves to the port group of its new set while vm-b pings it."""
    port_id = cloud.vms["vm-a"]["port"]["id"]
    before = cloud.port("vm-a")["binding:vif_details"]
    pinger = netns.PingRun(cloud.ns("vm-b"), cloud.ip("vm-a"), 0.1)
    try:
        time.sleep(1.0)
        cloud.neutron.update_port(port_id, security_groups=[
            cloud.groups[g]["id"] for g in ("default", "ssh", "clients")])
        cloud.timings["moved"] = cloud.until(
            lambda: cloud.port("vm-a")["binding:vif_details"]["pg_id"] != before["pg_id"],
            "vm-a's binding naming its new port group")
        time.sleep(3.0)
    finally:
        sent, received = pinger.stop()
    assert sent >= 30, (sent, received)
    assert sent - received <= 3, (sent, received)
    assert cloud.connects("vm-b", "vm-a", APP)
