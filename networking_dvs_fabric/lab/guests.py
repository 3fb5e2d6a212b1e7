"""Guests of a lab with agent hosts: vSphere VMs and KVM VMs that get their address by DHCP.

Shared by the demo, the tests and ``bench dhcp``, so all three boot a guest the same
way, the way Nova does:

- a vSphere VM: a port bound to the cluster's compute host, then a VM with its NIC
  made in vCenter (``FakeNova``); the dataplane agent gives it a namespace on its
  ESXi host's bridge and starts its DHCP client (``dhcp_client``);
- a KVM VM: a port bound to ``kvm-1``, then its tap plugged into ``kvm-1``'s br-int
  with os-vif's ``external_ids`` (``AgentHost.plug_vm``); the OVS agent wires it and
  the guest asks DHCP.
"""
from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from typing import Any

from networking_dvs_fabric.lab import dhcp_client, netns, topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError, wait_until


@dataclasses.dataclass
class Guest:
    name: str
    port: dict[str, Any]
    ns: str
    attached_at: float                   # time.time() when its NIC was attached
    vm_moid: str | None = None           # vSphere VMs
    client: subprocess.Popen | None = None   # KVM VMs: their DHCP client

    @property
    def address(self) -> str:
        return self.port["fixed_ips"][0]["ip_address"]


def neutron_of(lab: Lab) -> NeutronClient:
    return NeutronClient(lab.status()["neutron"]["url"])


def boot_vsphere_vm(lab: Lab, nova: FakeNova, neutron: NeutronClient, network_id: str,
                    name: str, esxi_host: str = "DC0_C0_H0",
                    timeout: float = 60, **port_extra: Any) -> Guest:
    """A VM on ``esxi_host`` with one NIC on the network, booted as Nova does.
    ``port_extra``: more attributes of its port (``security_groups``)."""
    cluster = esxi_host.rsplit("_", 1)[0]
    port = neutron.create_port(network_id, topology.compute_host(cluster), name=name,
                               device_id=str(uuid.uuid4()), **port_extra)
    attached_at = time.time()
    vm = nova.boot(name, esxi_host, [port])
    plane = lab.dataplane()
    ns = plane.nic_ns(vm._moId)
    wait_until(lambda: ns in netns.list_ns(), timeout,
               f"the dataplane agent to plug VM {name}")
    return Guest(name, port, ns, attached_at, vm_moid=vm._moId)


def boot_kvm_vm(lab: Lab, neutron: NeutronClient, network_id: str, name: str,
                host: str = topology.KVM_HOST, **port_extra: Any) -> Guest:
    """A VM on the KVM compute with one NIC on the network, plugged as Nova/os-vif does;
    its DHCP client is started at once (it asks until the OVS agent has wired it).
    ``port_extra``: more attributes of its port (``security_groups``)."""
    port = neutron.create_port(network_id, host, name=name, device_id=str(uuid.uuid4()),
                               **port_extra)
    attached_at = time.time()
    ns = lab.plug_kvm_vm(port, host)
    client = dhcp_client.start(ns, lab.dataplane().leases_dir)
    return Guest(name, port, ns, attached_at, client=client)


def wait_lease(lab: Lab, guest: Guest, timeout: float = 60) -> dict[str, Any]:
    """The guest's DHCP lease, once it holds one; checks it is the port's address."""
    lease = dhcp_client.wait_lease(lab.dataplane().leases_dir, guest.ns, timeout)
    if lease["address"] != guest.address:
        raise LabError(f"{guest.name} leased {lease['address']}, but its port "
                       f"{guest.port['id']} has {guest.address}")
    return lease


def remove(lab: Lab, nova: FakeNova | None, neutron: NeutronClient, guest: Guest) -> None:
    """Delete the guest as Nova would: the VM (or tap), then its port."""
    if guest.client is not None and guest.client.poll() is None:
        guest.client.kill()
        guest.client.wait()
    if guest.vm_moid is not None and nova is not None:
        nova.destroy(guest.name)
    elif guest.vm_moid is None:
        lab.unplug_kvm_vm(guest.port["id"], guest.port.get("binding:host_id"))
    neutron.delete_port(guest.port["id"])
