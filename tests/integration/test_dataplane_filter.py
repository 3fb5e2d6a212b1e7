"""The lab's ESXi host switch enforces what vCenter holds on each port group: real packets.

A lab with the dataplane; two VMs booted as Nova does on ports of one network, on
hosts behind different leaves.  Each VM's NIC sits on a port group of the test's own
(the network's marker with another deployment's id: the project never changes or
deletes it, so nothing but this test writes its policy).  Policies are written
straight into vCenter (``ReconfigureDVPortgroup_Task`` with ``vim_spec.port_setting``);
the dataplane agent reads them back from vCenter and must enforce them as ESXi would:
traffic rules (stateless, first match wins), forged transmits, ``blocked``, and a NIC
moved to another port group by ``ReconfigVM_Task``.

The ML2 side that will write these policies from Neutron's security groups is not
used here: the test owns the port groups, so what the switch enforces can only come
from what the test wrote into vCenter.
"""
from __future__ import annotations

import math
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from networking_dvs_fabric.lab import netns, topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.dataplane import host_bridge, lab_tag
from networking_dvs_fabric.lab.dataplane_filter import link_cookie
from networking_dvs_fabric.lab.demo import remote_macs
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.security.model import (ACCEPT, DROP, INCOMING, OUTGOING,
                                                  FilterRule, PortGroupPolicy, PortRange)
from networking_dvs_fabric.security.vim_spec import port_setting
from networking_dvs_fabric.vcenter import naming
from networking_dvs_fabric.lab.vm_traffic import CONNECT, PYTHON, SERVER, in_vm, wait_for
from tests.integration.conftest import lab_directory, unique

WHY_NOT = netns.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no dataplane here: {WHY_NOT}")

CLUSTER = topology.CLUSTERS[0]
HOST_A, HOST_B = f"{CLUSTER}_H0", f"{CLUSTER}_H1"      # behind different leaves
HOST_B_TO = f"{CLUSTER}_H2"                              # behind a third leaf
PRECOPY_SECONDS = 5.0        # a vMotion's memory copy, as the demo has it
SUBNET = "10.30.0.0/24"
OTHER_DEPLOYMENT = "0ddba11-0000-4000-8000-00000000d0d0"  # not the lab's: hands off
OPEN_PORT, CLOSED_PORT = 8080, 9090
# A policy change must reach the switch within this (the agent polls every 0.5 s).
CHANGE_BOUND = 2.5

# Connects every 50 ms for argv[3] seconds; prints "<time> ok|fail" per attempt.
PROBE = """
import socket, sys, time
end = time.time() + float(sys.argv[3])
while time.time() < end:
    t = time.time()
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.15).close()
        ok = "ok"
    except OSError:
        ok = "fail"
    print(f"{t:.3f} {ok}", flush=True)
    time.sleep(max(0.0, 0.05 - (time.time() - t)))
"""
# Counts, for argv[2] seconds, frames arriving on eth0 from source MAC argv[1].
SNIFF = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); s.bind(("eth0", 0))
end = time.time() + float(sys.argv[2]); mac = bytes.fromhex(sys.argv[1].replace(":", ""))
seen = 0
while time.time() < end:
    s.settimeout(max(0.01, end - time.time()))
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    if addr[2] != socket.PACKET_OUTGOING and data[6:12] == mac:
        seen += 1
print(seen)
"""



class World:
    """The lab, the network, two VMs and the test's port groups in vCenter."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        status = lab.status()
        self.neutron = NeutronClient(status["neutron"]["url"])
        self.nova = FakeNova(status["vcenter"])
        self.plane = lab.dataplane()
        self.agent_log = lab.dir / "logs" / "dataplane-agent.log"
        self.vms: dict[str, dict[str, Any]] = {}
        self.port_groups: dict[str, Any] = {}     # name -> vim port group
        self.policies: dict[str, PortGroupPolicy] = {}
        self.servers: list[subprocess.Popen] = []
        self.network: dict[str, Any] = {}
        self.dvs_uuid = ""
        self.vlan = 0

    # -- vCenter, written directly -------------------------------------------------------
    def add_port_group(self, name: str, policy: PortGroupPolicy) -> str:
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=name, type="earlyBinding", numPorts=8, autoExpand=True,
            description=naming.marker(self.network["id"], OTHER_DEPLOYMENT),
            defaultPortConfig=port_setting(policy, self.vlan))
        WaitForTask(self._dvs().AddDVPortgroup_Task([spec]))
        pg = next(p for p in self._dvs().portgroup if p.name == name)
        self.port_groups[name] = pg
        self.policies[name] = policy
        return pg.key

    def _dvs(self) -> Any:
        view = self.nova.content.viewManager.CreateContainerView(
            self.nova.content.rootFolder, [vim.DistributedVirtualSwitch], True)
        try:
            return next(d for d in view.view if d.uuid == self.dvs_uuid)
        finally:
            view.Destroy()

    def set_policy(self, name: str, policy: PortGroupPolicy, wait: bool = True) -> float:
        """Reconfigure the port group (its whole setting, VLAN included); when ``wait``,
        until the agent says it re-filtered the port group's NICs.  The time the
        reconfigure task ended."""
        pg = self.port_groups[name]
        changed = not self.policies[name].same_as(policy)
        offset = self.agent_log.stat().st_size
        config = pg.config
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=config.name, type=config.type, numPorts=config.numPorts,
            autoExpand=config.autoExpand, description=config.description,
            configVersion=config.configVersion,
            defaultPortConfig=port_setting(policy, self.vlan))
        WaitForTask(pg.ReconfigureDVPortgroup_Task(spec))
        done = time.time()
        self.policies[name] = policy
        nics = sum(1 for vm in self.vms.values() if vm["pg"] == name)
        if wait and changed and nics:
            wait_for(lambda: self.log_since(offset).count(
                f"port group {pg.key} changed in vCenter") >= nics, 10,
                f"the agent re-filtering port group {name}")
        return done

    def move_nic(self, vm: str, name: str) -> None:
        """Nova/the worker moving a NIC to another port group: ReconfigVM_Task."""
        machine = self.nova.vm(vm)
        card = next(d for d in machine.config.hardware.device
                    if isinstance(d, vim.vm.device.VirtualEthernetCard))
        card.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=self.dvs_uuid,
                                        portgroupKey=self.port_groups[name].key))
        WaitForTask(machine.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="edit", device=card)])))
        self.vms[vm]["pg"] = name

    def log_since(self, offset: int) -> str:
        with open(self.agent_log, encoding="utf-8", errors="replace") as log:
            log.seek(offset)
            return log.read()

    # -- VMs ------------------------------------------------------------------------------
    def ns(self, vm: str) -> str:
        return self.plane.vm_ns(self.vms[vm]["moid"])

    def ip(self, vm: str) -> str:
        return self.vms[vm]["port"]["fixed_ips"][0]["ip_address"]

    def mac(self, vm: str) -> str:
        return self.vms[vm]["port"]["mac_address"].lower()

    def ping(self, src: str, dst: str, count: int = 3) -> tuple[int, int]:
        netns.ip("neigh", "flush", "all", ns=self.ns(src))
        # ping's deadline (-w) takes whole seconds only.
        return netns.ping(self.ns(src), self.ip(dst), count, interval=0.2,
                          deadline=math.ceil(count * 0.2) + 1)

    def connects(self, src: str, dst: str, port: int) -> bool:
        out = in_vm(self.ns(src), CONNECT, self.ip(dst), port, 1.0)
        return out.returncode == 0 and out.stdout.strip() == f"port {port}"

    def serve(self, vm: str, *ports: int) -> None:
        proc = subprocess.Popen(netns.in_ns(self.ns(vm), PYTHON, "-c", SERVER,
                                            *map(str, ports)),
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"

    def close(self) -> None:
        for proc in self.servers:
            proc.terminate()
            proc.wait(timeout=10)
        self.nova.close()


OPEN = PortGroupPolicy(filtered=False)
STRICT_MAC = PortGroupPolicy(filtered=False, forged_transmits=False, mac_changes=False)


def web_only(icmp: bool) -> PortGroupPolicy:
    """To the VM: TCP 8080 from the subnet (and ICMP if asked), nothing else."""
    rules = [FilterRule(OUTGOING, ACCEPT, protocol=6, source=SUBNET,
                        destination_ports=PortRange(OPEN_PORT, OPEN_PORT))]
    if icmp:
        rules.append(FilterRule(OUTGOING, ACCEPT, protocol=1))
    rules.append(FilterRule(OUTGOING, DROP))
    return PortGroupPolicy(filtered=True, rules=tuple(rules), forged_transmits=False,
                           mac_changes=False)


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with lab_directory(request, tmp_path_factory, "lab-filter") as directory:
        lab = Lab(directory)
        try:
            lab.up(dataplane=True)
            world = World(lab)
            try:
                _build(world)
                yield world
            finally:
                world.close()
        finally:
            lab.down()
        ours = f"dvsf-{lab_tag(directory)}-"
        assert not [ns for ns in netns.list_ns() if ns.startswith(ours)], \
            "the lab left namespaces behind"


def _build(world: World) -> None:
    compute = topology.compute_host(CLUSTER)
    world.network = world.neutron.create_network(unique("filter-net"))
    world.neutron.create_subnet(world.network["id"], SUBNET)
    ports = {}
    for vm in ("vm-a", "vm-b"):
        ports[vm] = world.neutron.create_port(world.network["id"], host=compute, name=vm)
        assert ports[vm]["binding:vif_type"] == "dvs", ports[vm]
    details = ports["vm-a"]["binding:vif_details"]
    world.dvs_uuid = details["dvs_id"]
    neutron_pg = next(p for p in world._dvs().portgroup if p.key == details["pg_id"])
    world.vlan = neutron_pg.config.defaultPortConfig.vlan.vlanId
    for vm, host in (("vm-a", HOST_A), ("vm-b", HOST_B)):
        name = unique(f"test-{vm}")
        key = world.add_port_group(name, OPEN)
        # Booted straight onto the test's port group: Nova takes pg_id from vif_details.
        port = dict(ports[vm], **{"binding:vif_details": dict(details, pg_id=key)})
        machine = world.nova.boot(vm, host, [port])
        world.vms[vm] = {"port": ports[vm], "moid": machine._moId, "pg": name}
    world.add_port_group(unique("test-spare"), OPEN)
    for vm in world.vms:
        wait_for(lambda vm=vm: world.ip(vm) in netns.ip(
            "-o", "addr", "show", "dev", "eth0", ns=world.ns(vm), check=False)
            if world.ns(vm) in netns.list_ns() else False, 60,
            f"the agent plugging {vm}")
    # ovs-vtep reads its database once a second: the first answer may take a moment.
    wait_for(lambda: world.ping("vm-a", "vm-b", 1)[1] == 1, 60, "a first ping a -> b")
    world.serve("vm-b", OPEN_PORT, CLOSED_PORT)


def pg_of(world: World, vm: str) -> str:
    return world.vms[vm]["pg"]


def test_outgoing_rules_open_one_tcp_port_and_icmp_as_written(world: World) -> None:
    assert world.connects("vm-a", "vm-b", OPEN_PORT)
    assert world.connects("vm-a", "vm-b", CLOSED_PORT)       # open policy: both
    world.set_policy(pg_of(world, "vm-b"), web_only(icmp=False))
    assert world.connects("vm-a", "vm-b", OPEN_PORT)
    assert not world.connects("vm-a", "vm-b", CLOSED_PORT)
    assert world.ping("vm-a", "vm-b")[1] == 0                 # no rule lets ICMP in
    world.set_policy(pg_of(world, "vm-b"), web_only(icmp=True))
    sent, received = world.ping("vm-a", "vm-b")
    assert sent > 0 and received == sent
    assert not world.connects("vm-a", "vm-b", CLOSED_PORT)
    # An INCOMING rule: b may not send ICMP, so its echo replies die on the way out.
    replies_dropped = PortGroupPolicy(filtered=True, rules=(
        FilterRule(INCOMING, DROP, protocol=1),) + web_only(icmp=True).rules)
    world.set_policy(pg_of(world, "vm-b"), replies_dropped)
    assert world.ping("vm-a", "vm-b")[1] == 0
    assert world.connects("vm-a", "vm-b", OPEN_PORT)
    world.set_policy(pg_of(world, "vm-b"), OPEN)
    assert world.connects("vm-a", "vm-b", CLOSED_PORT)


def test_forged_source_mac_dropped_unless_forged_transmits_allowed(world: World) -> None:
    ns, spoofed = world.ns("vm-a"), "fa:16:3e:de:ad:01"
    world.set_policy(pg_of(world, "vm-a"), STRICT_MAC)
    assert world.ping("vm-a", "vm-b")[1] > 0                 # its own MAC passes
    netns.ip("link", "set", "eth0", "address", spoofed, ns=ns)
    try:
        netns.ip("neigh", "flush", "all", ns=world.ns("vm-b"))
        assert world.ping("vm-a", "vm-b")[1] == 0
        world.set_policy(pg_of(world, "vm-a"), OPEN)        # forged transmits allowed
        netns.ip("neigh", "flush", "all", ns=world.ns("vm-b"))
        wait_for(lambda: world.ping("vm-a", "vm-b", 2)[1] > 0, 15,
                 "a ping from a spoofed MAC with forged transmits allowed")
    finally:
        netns.ip("link", "set", "eth0", "address", world.mac("vm-a"), ns=ns)
        netns.ip("neigh", "flush", "all", ns=world.ns("vm-b"))
    wait_for(lambda: world.ping("vm-a", "vm-b", 2)[1] > 0, 15, "a ping with a's own MAC")


def _frames_seen(world: World, at: str, sender: str, action: Callable[[], Any]) -> int:
    """Frames from ``sender``'s MAC that reach ``at``'s NIC while ``action`` runs."""
    sniffer = subprocess.Popen(netns.in_ns(world.ns(at), PYTHON, "-c", SNIFF,
                                           world.mac(sender), "4"),
                               stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    action()
    out, _ = sniffer.communicate(timeout=30)
    return int(out.strip())


def test_blocked_port_group_cuts_the_vm_off_both_ways_until_unblocked(world: World) -> None:
    world.set_policy(pg_of(world, "vm-b"), OPEN)
    assert world.ping("vm-a", "vm-b")[1] > 0
    world.set_policy(pg_of(world, "vm-b"), PortGroupPolicy(filtered=False, blocked=True))
    # Nothing reaches b, not even a's ARP broadcasts; nothing of b's leaves.
    assert _frames_seen(world, "vm-b", "vm-a",
                        lambda: world.ping("vm-a", "vm-b", 5)) == 0
    assert _frames_seen(world, "vm-a", "vm-b",
                        lambda: world.ping("vm-b", "vm-a", 5)) == 0
    assert not world.connects("vm-a", "vm-b", OPEN_PORT)
    world.set_policy(pg_of(world, "vm-b"), OPEN)
    sent, received = world.ping("vm-a", "vm-b")
    assert received == sent > 0
    assert world.ping("vm-b", "vm-a")[1] > 0


def test_a_nic_moved_to_another_port_group_gets_its_policy(world: World) -> None:
    home = pg_of(world, "vm-b")
    spare = next(name for name in world.port_groups if name.startswith("test-spare"))
    world.set_policy(home, OPEN)
    world.set_policy(spare, web_only(icmp=False))
    offset = world.agent_log.stat().st_size
    world.move_nic("vm-b", spare)
    wait_for(lambda: f"moved from port group {world.port_groups[home].key}"
             in world.log_since(offset), 10, "the agent seeing b's NIC move")
    assert world.ping("vm-a", "vm-b")[1] == 0
    assert world.connects("vm-a", "vm-b", OPEN_PORT)
    assert not world.connects("vm-a", "vm-b", CLOSED_PORT)
    world.move_nic("vm-b", home)
    wait_for(lambda: world.connects("vm-a", "vm-b", CLOSED_PORT), 10,
             "b back on its open port group")


def test_policy_changes_in_vcenter_take_effect_within_the_bound(world: World) -> None:
    """Measured with a connection attempt every 50 ms: close TCP 8080, open it again."""
    name = pg_of(world, "vm-b")
    world.set_policy(name, web_only(icmp=True))
    closed = PortGroupPolicy(filtered=True, rules=(FilterRule(OUTGOING, DROP, protocol=6),))
    probe = subprocess.Popen(netns.in_ns(world.ns("vm-a"), PYTHON, "-c", PROBE,
                                         world.ip("vm-b"), str(OPEN_PORT), "9"),
                             stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)
    t_close = world.set_policy(name, closed, wait=False)
    time.sleep(4.0)
    t_open = world.set_policy(name, web_only(icmp=True), wait=False)
    out, _ = probe.communicate(timeout=60)
    attempts = [(float(t), state) for t, state in (line.split() for line in out.splitlines())]
    assert all(state == "ok" for t, state in attempts if t < t_close)
    first_fail = next(t for t, state in attempts if t >= t_close and state == "fail")
    first_ok = next(t for t, state in attempts if t >= t_open and state == "ok")
    # Attempts between the two changes once closed all fail (nothing flaps back).
    assert all(state == "fail" for t, state in attempts if first_fail <= t < t_open)
    closing, opening = first_fail - t_close, first_ok - t_open
    print(f"\npolicy change -> enforced: closing {closing * 1000:.0f} ms, "
          f"opening {opening * 1000:.0f} ms (attempts every 50 ms)", file=sys.stderr)
    assert closing < CHANGE_BOUND and opening < CHANGE_BOUND


def _flows_of(world: World, vm: str, host: str) -> list[str]:
    link = world.plane.vm_link(world.vms[vm]["moid"])
    cookie = f"cookie={link_cookie(link):#x}"
    return [line for line in world.plane.ofctl("dump-flows", host_bridge(host)).splitlines()
            if cookie in line]


def test_the_filter_follows_a_vmotion_without_a_gap(world: World) -> None:
    """b moves to a host behind a third leaf while a pings it every 100 ms: its flows
    are on the destination's bridge before the switchover and gone from the source's."""
    world.set_policy(pg_of(world, "vm-b"), web_only(icmp=True))
    assert _flows_of(world, "vm-b", HOST_B) and not _flows_of(world, "vm-b", HOST_B_TO)
    switch = f"dvsf-{world.network['id']}"
    to_leaf = next(a for a in topology.attachments() if a.esxi_host == HOST_B_TO).leaf
    to_ip = next(leaf.tunnel_ip for leaf in topology.leaves() if leaf.name == to_leaf)
    pinger = netns.PingRun(world.ns("vm-a"), world.ip("vm-b"), 0.1)
    time.sleep(1.0)
    world.nova.announce_migration("vm-b", HOST_B_TO)
    time.sleep(PRECOPY_SECONDS)
    offset = world.agent_log.stat().st_size
    world.nova.vmotion("vm-b", HOST_B_TO)
    wait_for(lambda: f"moved from {HOST_B}" in world.log_since(offset), 20,
             "the agent moving b's link")
    wait_for(lambda: all(entries.get(world.mac("vm-b")) == to_ip for leaf, entries in
                         remote_macs(world.lab, switch).items() if leaf != to_leaf), 30,
             "b's MAC pointing at its new leaf")
    time.sleep(2.0)
    sent, received = pinger.stop()
    print(f"\nvMotion with a filtered port: {received}/{sent} pings answered", file=sys.stderr)
    assert sent >= 40 and sent - received <= 2, (sent, received)
    assert _flows_of(world, "vm-b", HOST_B_TO) and not _flows_of(world, "vm-b", HOST_B)
    assert world.connects("vm-a", "vm-b", OPEN_PORT)
    assert not world.connects("vm-a", "vm-b", CLOSED_PORT)
