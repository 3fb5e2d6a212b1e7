"""``make demo`` / ``dvs-fabric lab demo``: the three founding workflows on the lab.

1. Create a network: Neutron allocates a VNI; nothing touches vCenter yet.
2. Boot two VMs as Nova's VMware driver does: each port bound to the cluster's
   compute host, the VM given a NIC on the port group (the port's MAC, the port id in
   ``nvp.iface-id.0``), on ESXi hosts behind different leaves.  Shown: the port
   group and its VLAN, the VNI, the leaf bindings, the remote MACs; with the
   dataplane, a ping between the two VMs through the fabric.
   vm-a's security group opens one TCP port: a connection to it works, one to another
   port is refused by the port group's filter (with the dataplane).
3. Migrate one VM with a vMotion to a host behind a third leaf, announcing the start
   as vCenter does, while the other VM pings it every 100 ms; the loss is reported.

Where network namespaces work the lab also runs Neutron's own agents (``lab up
--agents``, MariaDB): the VMs lease their addresses from dnsmasq on ``net-1``, and
``demo_agents`` adds a KVM VM on ``kvm-1`` pinged from vm-a, and a router on
``net-1`` to a second network (vm-c), pinged through from vm-b.

Then everything is deleted and shown gone.  With ``--json`` the last line is the
summary (see the README).  The vMotion's memory copy is ``PRECOPY_SECONDS`` between
the start event and the switchover, as a real vMotion takes seconds between the two.
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from networking_dvs_fabric.lab import demo_agents, demo_security, netns, topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.dataplane import host_bridge
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.probe import VCenterProbe
from networking_dvs_fabric.lab.procs import LabError

CONVERGE_TIMEOUT = 60.0
PRECOPY_SECONDS = 5.0
PING_INTERVAL = 0.1
SUBNET = "10.10.0.0/24"
CLUSTER = topology.CLUSTERS[0]
HOST_A, HOST_B, HOST_A_TO = (f"{CLUSTER}_H0", f"{CLUSTER}_H1", f"{CLUSTER}_H2")


def _wait(check: Callable[[], Any], timeout: float = CONVERGE_TIMEOUT,
          what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            if not result and what:
                raise LabError(f"demo: {what} did not happen within {timeout:.0f} s")
            return result
        time.sleep(0.1)


def _attachment(host: str) -> topology.Attachment:
    return next(a for a in topology.attachments() if a.esxi_host == host)


def leaf_bindings(lab: Lab, switch: str) -> dict[tuple[str, str], int]:
    """(leaf, port) -> VLAN of every binding to logical switch ``switch``."""
    found = {}
    for leaf_name in topology.LEAF_NAMES:
        leaf = lab.leaf(leaf_name)
        for port in leaf.ports:
            found.update({(leaf_name, port): vlan
                          for vlan, name in leaf.bindings(port).items() if name == switch})
    return found


def remote_macs(lab: Lab, switch: str) -> dict[str, dict[str, str]]:
    """leaf -> {MAC: tunnel IP} of the remote MACs of ``switch`` on every leaf."""
    found: dict[str, dict[str, str]] = {}
    for leaf_name in topology.LEAF_NAMES:
        leaf = lab.leaf(leaf_name)
        if switch in leaf.vtep_ctl("list-ls").split():
            found[leaf_name] = {mac.lower(): ip
                                for mac, ip in leaf.remote_macs(switch).items()}
    return found


class Demo:
    def __init__(self, lab: Lab, as_json: bool = False) -> None:
        self.lab = lab
        self.as_json = as_json

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    def run(self, mode: str = "pre_provision", dataplane: bool | None = None) -> int:
        agents = dataplane is not False and netns.unavailable() is None
        status = self.lab.up(mode=mode, dataplane=dataplane, agents=agents,
                             db="mariadb" if agents else "sqlite")
        try:
            summary = self._workflows(status, mode)
        finally:
            stopped = self.lab.down()
            self.say(f"lab down: stopped {', '.join(stopped)}")
        if self.as_json:
            print(json.dumps(summary))
        return 0 if summary.pop("_ok") else 1

    def _workflows(self, status: dict[str, Any], mode: str) -> dict[str, Any]:
        plane = status.get("dataplane", False)
        agents = bool(status.get("agent_hosts"))
        self.say(f"\nlab is up ({mode}; dataplane {'on' if plane else 'off'}); Neutron at "
                 f"{status['neutron']['url']}")
        neutron = NeutronClient(status["neutron"]["url"])
        compute = topology.compute_host(CLUSTER)

        self.say("\n== 1. create a network")
        network = neutron.create_network("demo-net")
        vni = network["provider:segmentation_id"]
        subnet = neutron.create_subnet(network["id"], SUBNET, "demo-subnet", gateway=agents)
        switch = f"dvsf-{network['id']}"
        self.say(f"network demo-net {network['id']}: {network['provider:network_type']} "
                 f"VNI {vni}, subnet {SUBNET}; vCenter and leaves untouched so far")

        self.say("\n== 2. boot two VMs, as Nova's VMware driver does")
        nova = FakeNova(status["vcenter"])
        vms: dict[str, dict[str, Any]] = {}
        cleanup = demo_agents.Cleanup()
        group = demo_security.make_group(neutron, SUBNET)
        try:
            for name, host in (("vm-a", HOST_A), ("vm-b", HOST_B)):
                groups = {"security_groups": [group["id"]]} if name == "vm-a" else {}
                port = neutron.create_port(network["id"], host=compute, name=f"{name}-nic",
                                           **groups)
                if port["binding:vif_type"] != "dvs":
                    raise LabError(f"port of {name} did not bind (vif_type "
                                   f"{port['binding:vif_type']}); see "
                                   f"{self.lab.dir / 'logs' / 'neutron-api.log'}")
                attached_at = time.time()
                vm = nova.boot(name, host, [port])
                att = _attachment(host)
                vms[name] = {"port": port, "host": host, "moid": vm._moId,
                             "ip": port["fixed_ips"][0]["ip_address"],
                             "attached_at": attached_at}
                details = port["binding:vif_details"]
                self.say(f"{name}: port {port['id']} bound to {compute}, MAC "
                         f"{port['mac_address']}, IP {vms[name]['ip']}; VM on {host} "
                         f"(behind {att.leaf} {att.port}); port group "
                         f"{details['dvs_port_group_name']!r} ({details['pg_id']})")
            vlan = self._show_port_group(status, vms["vm-a"]["port"])
            macs = {vms[n]["port"]["mac_address"]: _attachment(vms[n]["host"]).leaf
                    for n in vms}
            self._show_fabric(switch, vni, macs)
            result: dict[str, Any] = {"dataplane": bool(plane),
                                      "network": {"id": network["id"], "vni": vni,
                                                  "vlan": vlan}}
            result["ping"] = {"sent": 0, "received": 0}
            ok = True
            if agents:
                self.say("\n== the VMs ask Neutron's DHCP for their addresses")
                result["dhcp"] = demo_agents.lease(self.say, self.lab, "vm-a",
                                                   self._ns(vms["vm-a"]),
                                                   vms["vm-a"]["attached_at"])
                ok &= result["dhcp"]["address"] == vms["vm-a"]["ip"]
            if plane:
                sent, received = self._ping(vms)
                result["ping"] = {"sent": sent, "received": received}
                ok &= sent > 0 and received == sent
            result["security_groups"] = demo_security.show(
                self.say, self._ns(vms["vm-a"]) if plane else "", vms["vm-a"]["ip"],
                self._ns(vms["vm-b"]) if plane else "", group, bool(plane))
            if plane:
                ok &= all(result["security_groups"].values())
            if agents:
                self.say("\n== a KVM VM on the same network, on kvm-1 (Open vSwitch agent)")
                result["kvm_ping"] = demo_agents.kvm_ping(
                    self.say, self.lab, neutron, network["id"], "vm-a", self._ns(vms["vm-a"]),
                    group["id"], cleanup)
                self.say("\n== a second network, joined by a router on net-1 (L3 agent)")
                result["router_ping"] = demo_agents.router_ping(
                    self.say, self.lab, neutron, nova, subnet, "vm-b", self._ns(vms["vm-b"]),
                    HOST_A_TO, cleanup)
                for key in ("kvm_ping", "router_ping"):
                    ok &= 0 < result[key]["received"] == result[key]["sent"]
            self.say("\n== 3. migrate vm-a with a vMotion to a host behind another leaf")
            moved = self._vmotion(nova, vms, plane, switch, mode)
            result["vmotion"] = moved
            if plane:
                ok &= moved["received"] >= moved["sent"] - 2
        finally:
            self.say("\n== delete everything")
            cleanup.run(self.say)
            for name in vms:
                nova.destroy(name)
                neutron.delete_port(vms[name]["port"]["id"])
            nova.close()
            neutron.delete_network(network["id"])
            demo_security.delete_group(neutron, group)
        gone = _wait(lambda: not leaf_bindings(self.lab, switch) and not any(
            switch in self.lab.leaf(leaf).vtep_ctl("list-ls").split()
            for leaf in topology.LEAF_NAMES))
        with VCenterProbe(status["vcenter"]) as probe:
            pg_gone = _wait(lambda: not probe.port_groups_of_network(
                topology.DVS_NAME, network["id"]))
        self.say(f"VMs, ports and network deleted: leaves {'clean' if gone else 'NOT clean'}"
                 f", port group {'gone' if pg_gone else 'STILL THERE'}")
        result["_ok"] = ok and bool(gone) and bool(pg_gone)
        return result

    def _show_port_group(self, status: dict[str, Any], port: dict[str, Any]) -> int:
        with VCenterProbe(status["vcenter"]) as probe:
            pg = next(p for p in probe.port_groups(topology.DVS_NAME)
                      if p.key == port["binding:vif_details"]["pg_id"])
        self.say(f"vCenter: DVS {topology.DVS_NAME} port group {pg.name!r} key {pg.key} "
                 f"VLAN {pg.vlan} (the dynamic segment fabric_hwvtep allocated)")
        return int(pg.vlan)

    def _show_fabric(self, switch: str, vni: int, macs: dict[str, str]) -> None:
        ips = {leaf.name: leaf.tunnel_ip for leaf in topology.leaves()}

        def converged() -> bool:
            seen = remote_macs(self.lab, switch)
            return all(seen.get(leaf, {}).get(mac) == ips[at] for mac, at in macs.items()
                       for leaf in seen if leaf != at)
        _wait(lambda: leaf_bindings(self.lab, switch) and converged(),
              what="leaf programming (bindings and remote MACs)")
        self.say(f"leaves: logical switch {switch}, tunnel_key {vni}")
        hosts = {(a.leaf, a.port): f"ESXi {a.esxi_host}" for a in topology.attachments()}
        hosts.update({link: host for host, links in topology.AGENT_HOSTS.items()
                      for link in links})
        for (leaf, port), vlan in sorted(leaf_bindings(self.lab, switch).items()):
            self.say(f"  {leaf} {port} ({hosts.get((leaf, port), 'no host')}): VLAN {vlan} "
                     f"-> VNI {vni}")
        for leaf, entries in sorted(remote_macs(self.lab, switch).items()):
            shown = ", ".join(f"{mac} -> {ip}" for mac, ip in sorted(entries.items()))
            self.say(f"  {leaf} remote MACs: {shown or '(none)'}")

    def _ns(self, vm: dict[str, Any]) -> str:
        return self.lab.dataplane().vm_ns(vm["moid"])

    def _ping(self, vms: dict[str, dict[str, Any]]) -> tuple[int, int]:
        a, b = vms["vm-a"], vms["vm-b"]
        def plugged(vm: dict[str, Any]) -> bool:
            ns = self._ns(vm)
            return ns in netns.list_ns() and vm["ip"] in netns.ip(
                "-o", "addr", "show", "dev", "eth0", ns=ns, check=False)
        _wait(lambda: plugged(a) and plugged(b),
              what="the dataplane agent plugging both VMs (namespace, MAC, address)")
        # ovs-vtep reads its database once a second: wait for the first answer.
        _wait(lambda: netns.ping(self._ns(b), a["ip"], 1, deadline=1)[1] == 1,
              what=f"a first ping from vm-b to vm-a ({a['ip']})")
        sent, received = netns.ping(self._ns(b), a["ip"], 10, interval=0.1)
        self.say(f"ping vm-b -> vm-a ({a['ip']}) through {_attachment(b['host']).leaf} -> "
                 f"VXLAN -> {_attachment(a['host']).leaf}: {received}/{sent} answered")
        return sent, received

    def _vmotion(self, nova: FakeNova, vms: dict[str, dict[str, Any]], plane: bool,
                 switch: str, mode: str) -> dict[str, Any]:
        a, b = vms["vm-a"], vms["vm-b"]
        src, dst = _attachment(HOST_A), _attachment(HOST_A_TO)
        result: dict[str, Any] = {"from_leaf": src.leaf, "to_leaf": dst.leaf, "sent": 0,
                                  "received": 0, "interval_ms": int(PING_INTERVAL * 1000),
                                  "mode": mode}
        pinger = netns.PingRun(self._ns(b), a["ip"], PING_INTERVAL) if plane else None
        time.sleep(1.0)
        self.say(f"vCenter announces: vm-a migrating {HOST_A} ({src.leaf}) -> {HOST_A_TO} "
                 f"({dst.leaf})")
        announced = time.monotonic()
        nova.announce_migration("vm-a", HOST_A_TO)
        mac = a["port"]["mac_address"]

        def prepared() -> bool:
            seen = remote_macs(self.lab, switch)
            return (dst.leaf, dst.port) in leaf_bindings(self.lab, switch) and not any(
                mac in entries for entries in seen.values())
        ready = _wait(prepared, timeout=PRECOPY_SECONDS)
        result["prepared_after_s"] = round(time.monotonic() - announced, 2) if ready else None
        self.say("fabric prepared (destination bound, vm-a's MAC flooded on every leaf) "
                 + (f"{result['prepared_after_s']} s after the event" if ready else
                    f"NOT within the {PRECOPY_SECONDS:.0f} s memory copy")
                 + "; ovs-vtep applies it within its next 1-2 s poll")
        time.sleep(max(0.0, PRECOPY_SECONDS - (time.monotonic() - announced)))
        started = time.monotonic()
        nova.vmotion("vm-a", HOST_A_TO)
        self.say(f"vMotion done in {time.monotonic() - started:.2f} s (switchover)")
        if plane:
            link = self.lab.dataplane().vm_link(a["moid"])
            dp = self.lab.dataplane()
            _wait(lambda: link in dp.vsctl(dp.hosts_db, "list-ports",
                                           host_bridge(HOST_A_TO)).split(),
                  what="the link move")
        ip_dst = next(leaf.tunnel_ip for leaf in topology.leaves() if leaf.name == dst.leaf)
        _wait(lambda: remote_macs(self.lab, switch).get(_attachment(HOST_B).leaf, {}).get(mac)
              == ip_dst, what="vm-a's MAC pointing at its new leaf")
        time.sleep(2.0)
        if pinger is not None:
            result["sent"], result["received"] = pinger.stop()
            self.say(f"ping every {result['interval_ms']} ms during the move: "
                     f"{result['received']}/{result['sent']} answered, "
                     f"{result['sent'] - result['received']} lost")
        self.say(f"leaves now: vm-a's MAC -> {ip_dst} ({dst.leaf}); bindings "
                 + ", ".join(f"{leaf} {port} VLAN {vlan}" for (leaf, port), vlan
                             in sorted(leaf_bindings(self.lab, switch).items())))
        return result


def run(lab: Lab, as_json: bool = False, mode: str = "pre_provision",
        dataplane: bool | None = None) -> int:
    return Demo(lab, as_json).run(mode, dataplane)
