"""``dvs-fabric bench dhcp``: from ``port create`` to the VM holding its DHCP lease.

A lab of its own with Neutron's agents (``lab up --agents``, MariaDB).  For each of
``--networks`` networks (a subnet each; its DHCP port on ``net-1`` is made first and
not timed), three guests, one after the other, each timed from its port's create:

- ``vsphere``: a port bound to the cluster's compute host, then the VM made in
  vCenter with its NIC as Nova does; the dataplane agent plugs it (it follows vCenter)
  and its DHCP client asks across the fabric (ESXi behind leaf1 -> VXLAN -> net-1
  behind leaf3);
- ``kvm``: a port bound to ``kvm-1`` and its tap plugged into kvm-1's br-int as
  os-vif does; the OVS agent wires it; DHCP across the fabric (leaf2 -> leaf3);
- ``baseline`` (same run): the same on ``net-1`` itself, next to dnsmasq - the
  DHCP exchange crosses no leaf, so the difference is what the fabric path costs.

Phases are reported too (port create answered, VM made, NIC plugged, lease).  Target:
p50 <= 5 s for the vSphere and the KVM VM on this machine.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from networking_dvs_fabric.cmd.bench import percentile
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import dhcp_client, guests, netns, topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError, wait_until

TARGET_P50_S = 5.0
LEASE_TIMEOUT = 60.0
ESXI_HOST = "DC0_C0_H0"             # behind leaf1; net-1 is behind leaf3


def _stats(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {"n": len(ordered), "p50_s": round(statistics.median(ordered), 2),
            "p95_s": round(percentile(ordered, 0.95), 2), "max_s": round(ordered[-1], 2)}


def _vsphere(lab: Lab, nova: FakeNova, neutron: NeutronClient, network_id: str,
             name: str) -> dict[str, float]:
    t0 = time.time()
    port = neutron.create_port(network_id, topology.compute_host("DC0_C0"), name=name)
    t_port = time.time()
    if port["binding:vif_type"] != "dvs":
        raise LabError(f"port of {name} not bound: {port['binding:vif_type']}")
    vm = nova.boot(name, ESXI_HOST, [port])
    t_vm = time.time()
    ns = lab.dataplane().nic_ns(vm._moId)
    # (os.path.exists, not 'ip netns list': no process spawned 50 times a second)
    wait_until(lambda: os.path.exists(f"/run/netns/{ns}"), LEASE_TIMEOUT, f"{name} plugged",
               interval=0.02)
    t_plug = time.time()
    lease = dhcp_client.wait_lease(lab.dataplane().leases_dir, ns, LEASE_TIMEOUT)
    return {"total": lease["bound_at"] - t0, "port_create": t_port - t0,
            "vm_create": t_vm - t_port, "plugged": t_plug - t_vm,
            "lease": lease["bound_at"] - t_plug}


def _ovs_host(lab: Lab, neutron: NeutronClient, network_id: str, name: str,
              host: str) -> dict[str, float]:
    t0 = time.time()
    guest = guests.boot_kvm_vm(lab, neutron, network_id, name, host=host)
    t_plug = time.time()
    try:
        lease = guests.wait_lease(lab, guest, LEASE_TIMEOUT)
    finally:
        if guest.client is not None and guest.client.poll() is None:
            guest.client.kill()
            guest.client.wait()
    return {"total": lease["bound_at"] - t0, "port_create_and_plug": t_plug - t0,
            "lease": lease["bound_at"] - t_plug}


def _summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = list(samples[0]) if samples else []
    return {key: _stats([s[key] for s in samples]) for key in keys}


def bench_dhcp(networks: int = 20, lab_dir: Path | None = None) -> dict[str, Any]:
    why_not = netns.unavailable()
    if why_not:
        raise LabError(f"bench dhcp needs network namespaces: {why_not}")
    base = Path(lab_dir) if lab_dir else Path(tempfile.mkdtemp(prefix="dvsf-bench-dhcp-"))
    lab = Lab(base / "lab")
    kinds: dict[str, list[dict[str, float]]] = {"vsphere": [], "kvm": [], "baseline": []}
    runs: dict[str, Callable[[str, str], dict[str, float]]] = {}
    try:
        _progress(f"starting a lab with agents in {lab.dir}")
        status = lab.up(db="mariadb", agents=True)
        neutron = NeutronClient(status["neutron"]["url"])
        with FakeNova(status["vcenter"]) as nova:
            runs = {
                "vsphere": lambda net, name: _vsphere(lab, nova, neutron, net, name),
                "kvm": lambda net, name: _ovs_host(lab, neutron, net, name,
                                                   topology.KVM_HOST),
                "baseline": lambda net, name: _ovs_host(lab, neutron, net, name,
                                                        topology.NETWORK_NODE),
            }
            for i in range(networks):
                net = neutron.create_network(f"bench-dhcp-{i}")
                neutron.create_subnet(net["id"], f"10.{100 + i // 250}.{i % 250}.0/24")
                wait_until(lambda n=net["id"]: any(
                    p["device_owner"] == "network:dhcp" and p["status"] == "ACTIVE"
                    for p in neutron.list_ports(n)), LEASE_TIMEOUT,
                    f"network {i}'s DHCP port ACTIVE")
                for kind, run in runs.items():
                    kinds[kind].append(run(net["id"], f"bench-{kind}-{i}"))
                _progress(f"{i + 1}/{networks} networks: vsphere "
                          f"{kinds['vsphere'][-1]['total']:.2f} s, kvm "
                          f"{kinds['kvm'][-1]['total']:.2f} s, baseline "
                          f"{kinds['baseline'][-1]['total']:.2f} s")
    finally:
        lab.down()
        if lab_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {"networks": networks, "target_p50_s": TARGET_P50_S}
    for kind, samples in kinds.items():
        result[kind] = _summary(samples)
    for kind in ("vsphere", "kvm"):
        p50 = result[kind].get("total", {}).get("p50_s")
        result[kind]["target_met"] = p50 is not None and p50 <= TARGET_P50_S
    base_p50 = result["baseline"].get("total", {}).get("p50_s")
    result["fabric_cost_p50_s"] = {
        kind: round(result[kind]["total"]["p50_s"] - base_p50, 2)
        for kind in ("vsphere", "kvm") if base_p50 is not None and result[kind].get("total")}
    return result


def format_text(result: dict[str, Any]) -> str:
    lines = [f"bench dhcp: {result['networks']} networks, from port create to the lease"]
    for kind in ("vsphere", "kvm", "baseline"):
        phases = result[kind]
        total = phases.get("total", {})
        lines.append(f"  {kind:9s} p50 {total.get('p50_s')} s, p95 {total.get('p95_s')} s"
                     + (f"  (target p50 <= {result['target_p50_s']} s: "
                        f"{'met' if phases.get('target_met') else 'MISSED'})"
                        if kind != "baseline" else "  (on net-1, next to dnsmasq)"))
        for phase, stats in phases.items():
            if phase not in ("total", "target_met"):
                lines.append(f"    {phase:22s} p50 {stats.get('p50_s')} s")
    lines.append(f"  fabric path p50 over the baseline: {result['fabric_cost_p50_s']}")
    return "\n".join(lines)
