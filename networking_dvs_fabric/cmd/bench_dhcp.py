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

Phases are reported too: port create answered, VM made, NIC plugged, the guest's
leaf port carrying the network (seen by an independent OVSDB observer), and the
lease after both.  Then the network and its guests are deleted again, so each
network is measured in a lab of the same size (``--keep`` keeps them all: the lab's
software VTEP then slows with every network, see ``vtep_loop_s``).

``vtep_loop_s``: how long one polling round of ``ovs-vtep`` on leaf1 takes, at the
start and at the end of the run (from its ``execve`` calls under ``strace``, when
installed).  ovs-vtep, the software VTEP of the lab's leaves, applies a new binding
only at its next round, and each round runs several ``vtep-ctl``/``ovs-vsctl``
commands per logical switch and binding; a hardware leaf applies OVSDB changes as
they come.  Target: p50 <= 5 s for the vSphere and the KVM VM on this machine.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from networking_dvs_fabric.cmd.bench import summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import guests, netns, topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaf_watch import LeafWatch
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError, wait_until

TARGET_P50_S = 5.0
LEASE_TIMEOUT = 60.0
ESXI_HOST = "DC0_C0_H0"             # behind leaf1; net-1 is behind leaf3
VTEP_LEAF = "leaf1"
VTEP_WINDOW_S = 12.0


def _stats(values: list[float]) -> dict[str, Any]:
    return summarize(values, "p50", "p95", "max", unit="s", digits=2)


class _Run:
    """One bench run's lab, clients and observer; each guest kind timed the same way."""

    def __init__(self, lab: Lab, nova: FakeNova, neutron: NeutronClient,
                 watch: LeafWatch) -> None:
        self.lab, self.nova, self.neutron, self.watch = lab, nova, neutron, watch
        # LeafWatch notes time.monotonic(); leases carry the wall clock.
        self.wall_minus_mono = time.time() - time.monotonic()

    def _leaf_binding(self, links: list[tuple[str, str]], network_id: str,
                      since: float) -> float:
        """Seconds from ``since`` (monotonic) to the guest's leaf ports carrying the
        network, as the independent observer saw it."""
        wanted = [(leaf, port, f"dvsf-{network_id}") for leaf, port in links]
        seen: list[float] = []
        wait_until(lambda: seen.append(self.watch.all_seen(wanted) or 0.0) or seen[-1] > 0,
                   LEASE_TIMEOUT, f"leaf ports {links} to carry network {network_id}",
                   interval=0.02)
        return seen[-1] - since

    def vsphere(self, network_id: str, name: str) -> tuple[dict[str, float], guests.Guest]:
        t0 = time.monotonic()
        port = self.neutron.create_port(network_id, topology.compute_host("DC0_C0"),
                                        name=name, device_id=str(uuid.uuid4()))
        t_port = time.monotonic()
        if port["binding:vif_type"] != "dvs":
            raise LabError(f"port of {name} not bound: {port['binding:vif_type']}")
        vm = self.nova.boot(name, ESXI_HOST, [port])
        t_vm = time.monotonic()
        plane = self.lab.dataplane()
        ns = plane.nic_ns(vm._moId)
        guest = guests.Guest(name, port, ns, time.time(), vm_moid=vm._moId)
        # (os.path.exists, not 'ip netns list': no process spawned 50 times a second)
        wait_until(lambda: os.path.exists(f"/run/netns/{ns}"), LEASE_TIMEOUT,
                   f"{name} plugged", interval=0.02)
        t_plug = time.monotonic()
        links = [(a.leaf, a.port) for a in topology.attachments() if a.esxi_host == ESXI_HOST]
        leaf_s = self._leaf_binding(links, network_id, t0)
        lease = guests.wait_lease(self.lab, guest, LEASE_TIMEOUT)
        bound = lease["bound_at"] - self.wall_minus_mono
        return {"total": bound - t0, "port_create": t_port - t0, "vm_create": t_vm - t_port,
                "plugged": t_plug - t_vm, "leaf_binding_from_create": leaf_s,
                "lease_after_plug_and_leaf": bound - max(t_plug, t0 + leaf_s)}, guest

    def ovs_host(self, network_id: str, name: str,
                 host: str) -> tuple[dict[str, float], guests.Guest]:
        t0 = time.monotonic()
        guest = guests.boot_kvm_vm(self.lab, self.neutron, network_id, name, host=host)
        t_plug = time.monotonic()
        sample = {"port_create_and_plug": t_plug - t0}
        if host != topology.NETWORK_NODE:
            sample["leaf_binding_from_create"] = self._leaf_binding(
                [topology.AGENT_HOSTS[host][0]], network_id, t0)
        lease = guests.wait_lease(self.lab, guest, LEASE_TIMEOUT)
        bound = lease["bound_at"] - self.wall_minus_mono
        sample["total"] = bound - t0
        sample["lease_after_plug"] = bound - t_plug
        return sample, guest

    def remove(self, network_id: str, made: list[guests.Guest]) -> None:
        """Delete the guests (as Nova would) and the network; wait for the leaves to
        let it go, so the next network is measured in a lab of the same size."""
        for guest in made:
            guests.remove(self.lab, self.nova, self.neutron, guest)
        self.neutron.delete_network(network_id)
        switch = f"dvsf-{network_id}"
        wanted = [(leaf, port, switch) for leaf, ports in topology.leaf_ports().items()
                  for port in ports]
        wait_until(lambda: self.watch.all_gone(wanted), LEASE_TIMEOUT,
                   f"the leaves to drop network {network_id}", interval=0.05)


def vtep_loop_seconds(pid: int | None, window: float = VTEP_WINDOW_S) -> float | None:
    """Median length of one ovs-vtep polling round: the time between the commands that
    open each round (``list-ports`` of the physical switch, in ``handle_physical``),
    from its children's ``execve`` calls traced for ``window`` seconds.  None without
    strace or a running ovs-vtep."""
    strace = shutil.which("strace")
    if strace is None or pid is None:
        return None
    with tempfile.NamedTemporaryFile(prefix="dvsf-vtep-trace-") as out:
        proc = subprocess.Popen([strace, "-f", "-tt", "-qq", "-e", "trace=execve",
                                 "-o", out.name, "-p", str(pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(window)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        text = Path(out.name).read_text(errors="replace")
    starts = []
    for line in text.splitlines():
        if "execve(" in line and '"list-ports"' in line and "ovs-vsctl" in line:
            stamp = re.search(r"(\d+):(\d+):(\d+\.\d+)", line)
            if stamp:
                h, m, s = stamp.groups()
                at = int(h) * 3600 + int(m) * 60 + float(s)
                # One command shows as an execve per directory of $PATH tried; a
                # round is at least a second (ovs-vtep's timer).
                if not starts or at - starts[-1] > 0.5:
                    starts.append(at)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    return round(statistics.median(gaps), 2) if gaps else None


def _vtep_pid(lab: Lab) -> int | None:
    for daemon in lab.dataplane().daemons:
        if daemon.name == f"dataplane-{VTEP_LEAF}-ovs-vtep" and daemon.running():
            return daemon.pid
    return None


def _summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = list(samples[0]) if samples else []
    return {key: _stats([s[key] for s in samples]) for key in keys}


def bench_dhcp(networks: int = 20, lab_dir: Path | None = None,
               keep: bool = False) -> dict[str, Any]:
    why_not = netns.unavailable()
    if why_not:
        raise LabError(f"bench dhcp needs network namespaces: {why_not}")
    base = Path(lab_dir) if lab_dir else Path(tempfile.mkdtemp(prefix="dvsf-bench-dhcp-"))
    lab = Lab(base / "lab")
    kinds: dict[str, list[dict[str, float]]] = {"vsphere": [], "kvm": [], "baseline": []}
    vtep: dict[str, float | None] = {}
    warm_up: dict[str, float] = {}
    watch = None
    try:
        _progress(f"starting a lab with agents in {lab.dir}")
        status = lab.up(db="mariadb", agents=True)
        neutron = NeutronClient(status["neutron"]["url"])
        watch = LeafWatch({leaf["name"]: leaf["ovsdb"] for leaf in status["leaves"]}).start()
        vtep["start"] = vtep_loop_seconds(_vtep_pid(lab))
        with FakeNova(status["vcenter"]) as nova:
            run = _Run(lab, nova, neutron, watch)
            runs: dict[str, Callable[[str, str], tuple[dict[str, float], guests.Guest]]] = {
                "vsphere": run.vsphere,
                "kvm": lambda net, name: run.ovs_host(net, name, topology.KVM_HOST),
                "baseline": lambda net, name: run.ovs_host(net, name, topology.NETWORK_NODE),
            }
            # Network 0 warms up: the first lease pays one-time costs (the DHCP
            # agent's privsep daemons, first namespaces); reported, not counted.
            for i in range(networks + 1):
                net = neutron.create_network(f"bench-dhcp-{i}")
                neutron.create_subnet(net["id"], f"10.{100 + i // 250}.{i % 250}.0/24")
                wait_until(lambda n=net["id"]: any(
                    p["device_owner"] == "network:dhcp" and p["status"] == "ACTIVE"
                    for p in neutron.list_ports(n)), LEASE_TIMEOUT,
                    f"network {i}'s DHCP port ACTIVE")
                made, these = [], {}
                for kind, boot in runs.items():
                    these[kind], guest = boot(net["id"], f"bench-{kind}-{i}")
                    made.append(guest)
                if i == 0:
                    warm_up = {kind: round(sample["total"], 2) for kind, sample in these.items()}
                else:
                    for kind, sample in these.items():
                        kinds[kind].append(sample)
                _progress(f"{'warm-up network' if i == 0 else f'{i}/{networks} networks'}: "
                          + ", ".join(f"{kind} {sample['total']:.2f} s"
                                      for kind, sample in these.items()))
                if not keep:
                    run.remove(net["id"], made)
            vtep["end"] = vtep_loop_seconds(_vtep_pid(lab))
    finally:
        if watch is not None:
            watch.stop()
        lab.down()
        if lab_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    result = _result(kinds, networks, keep, vtep)
    result["warm_up_total_s"] = warm_up
    return result


def _result(kinds: dict[str, list[dict[str, float]]], networks: int, keep: bool,
            vtep: dict[str, float | None]) -> dict[str, Any]:
    result: dict[str, Any] = {"networks": networks, "kept": keep,
                              "target_p50_s": TARGET_P50_S,
                              "vtep_loop_s": {"leaf": VTEP_LEAF, **vtep}}
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
    lines = [f"bench dhcp: {result['networks']} networks after a warm-up one "
             f"({'all kept' if result['kept'] else 'each deleted after it is measured'}), "
             "from port create to the lease"]
    for kind in ("vsphere", "kvm", "baseline"):
        phases = result[kind]
        total = phases.get("total", {})
        lines.append(f"  {kind:9s} p50 {total.get('p50_s')} s, p95 {total.get('p95_s')} s"
                     + (f"  (target p50 <= {result['target_p50_s']} s: "
                        f"{'met' if phases.get('target_met') else 'MISSED'})"
                        if kind != "baseline" else "  (on net-1, next to dnsmasq)"))
        for phase, stats in phases.items():
            if phase not in ("total", "target_met"):
                lines.append(f"    {phase:26s} p50 {stats.get('p50_s')} s")
    lines.append(f"  fabric path p50 over the baseline: {result['fabric_cost_p50_s']}")
    loop = result["vtep_loop_s"]
    lines.append(f"  ovs-vtep round on {loop['leaf']}: {loop.get('start')} s at the start, "
                 f"{loop.get('end')} s at the end")
    return "\n".join(lines)
