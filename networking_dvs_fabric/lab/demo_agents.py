"""The demo's steps with Neutron's own agents (a lab with agent hosts): DHCP, KVM, router.

- the vSphere VMs' DHCP leases, from dnsmasq on the network node ``net-1``, across
  the fabric (VLAN -> VXLAN -> VLAN);
- a KVM VM on ``kvm-1`` (Open vSwitch agent) on the same network, pinged from a
  vSphere VM;
- a second network joined to the first by a router on ``net-1`` (L3 agent): a
  vSphere VM on each, one pinging the other through the router.

Each function prints what it does through ``say`` and returns its part of the
demo's JSON summary; ``Cleanup`` deletes what they made, in reverse order.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from networking_dvs_fabric.lab import dhcp_client, guests, netns, topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova

LEASE_TIMEOUT = 60.0
PINGS = 10
SECOND_SUBNET = "10.10.1.0/24"

Say = Callable[[str], None]


class Cleanup:
    def __init__(self) -> None:
        self.steps: list[Callable[[], Any]] = []

    def add(self, step: Callable[[], Any]) -> None:
        self.steps.append(step)

    def run(self, say: Say) -> None:
        for step in reversed(self.steps):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the rest is still deleted
                say(f"clean-up step failed: {exc}")
        self.steps.clear()


def lease(say: Say, lab: Lab, name: str, ns: str, attached_at: float) -> dict[str, Any]:
    """The VM's DHCP lease: {"address", "lease_s"} (seconds from its NIC attached)."""
    held = dhcp_client.wait_lease(lab.dataplane().leases_dir, ns, LEASE_TIMEOUT)
    lease_s = round(held["bound_at"] - attached_at, 2)
    say(f"{name}: DHCP lease {held['address']}/{held['netmask']} from {held['server']} "
        f"(dnsmasq on {topology.NETWORK_NODE}, across the fabric) {lease_s} s after its NIC "
        "was attached")
    return {"address": held["address"], "lease_s": lease_s}


def _ping(say: Say, what: str, ns: str, address: str) -> dict[str, int]:
    # The first answer may wait for the leaves' software VTEPs (they poll every 1-2 s).
    deadline = time.monotonic() + 30
    while netns.ping(ns, address, 1, deadline=1)[1] != 1 and time.monotonic() < deadline:
        pass
    sent, received = netns.ping(ns, address, PINGS, interval=0.1)
    say(f"ping {what}: {received}/{sent} answered")
    return {"sent": sent, "received": received}


def kvm_ping(say: Say, lab: Lab, neutron: NeutronClient, network_id: str, from_name: str,
             from_ns: str, group_id: str, cleanup: Cleanup) -> dict[str, int]:
    """``group_id``: the KVM VM's security group (the pinging VM's: the OVS agent's
    firewall enforces it on the KVM side as the port group's filter does on ESXi)."""
    kvm = guests.boot_kvm_vm(lab, neutron, network_id, "kvm-vm", security_groups=[group_id])
    cleanup.add(lambda: guests.remove(lab, None, neutron, kvm))
    link = topology.KVM_PORTS[0]
    say(f"kvm-vm: port {kvm.port['id']} bound to {topology.KVM_HOST}, its tap plugged "
        f"into {topology.KVM_HOST}'s br-int as Nova's libvirt driver does (behind "
        f"{link[0]} {link[1]}); the OVS agent wires it")
    lease(say, lab, "kvm-vm", kvm.ns, kvm.attached_at)
    return _ping(say, f"{from_name} -> kvm-vm ({kvm.address}), ESXi -> VXLAN -> KVM",
                 from_ns, kvm.address)


def router_ping(say: Say, lab: Lab, neutron: NeutronClient, nova: FakeNova,
                first_subnet: dict[str, Any], from_name: str, from_ns: str, esxi_host: str,
                cleanup: Cleanup) -> dict[str, Any]:
    net = neutron.create_network("demo-net-2")
    cleanup.add(lambda: neutron.delete_network(net["id"]))
    subnet = neutron.create_subnet(net["id"], SECOND_SUBNET, "demo-subnet-2", gateway=True)
    router = neutron.create_router("demo-router")
    cleanup.add(lambda: neutron.delete_router(router["id"]))
    for sub in (first_subnet, subnet):
        neutron.add_router_interface(router["id"], sub["id"])
        cleanup.add(lambda s=sub: neutron.remove_router_interface(router["id"], s["id"]))
    say(f"router demo-router on {topology.NETWORK_NODE} joins {first_subnet['cidr']} "
        f"(gateway {first_subnet['gateway_ip']}) and {SECOND_SUBNET} "
        f"(gateway {subnet['gateway_ip']})")
    vm = guests.boot_vsphere_vm(lab, nova, neutron, net["id"], "vm-c", esxi_host=esxi_host)
    cleanup.add(lambda: guests.remove(lab, nova, neutron, vm))
    lease(say, lab, "vm-c", vm.ns, vm.attached_at)
    gateway = _ping(say, f"{from_name} -> its gateway {first_subnet['gateway_ip']}",
                    from_ns, first_subnet["gateway_ip"])
    through = _ping(say, f"{from_name} -> vm-c ({vm.address}) through the router",
                    from_ns, vm.address)
    return {**through, "gateway_received": gateway["received"]}
