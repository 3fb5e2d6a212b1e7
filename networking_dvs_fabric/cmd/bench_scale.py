"""``dvs-fabric bench scale``: every cost as the cloud grows, measured at several sizes.

One lab on MariaDB (``fabric_hwvtep,vsphere_dvs``, VLANs 1-4094 on the DVS physical
network), pinned like the other benchmarks; with ``--second-dvs`` cluster DC0_C1 is on a
second DVS with a VLAN pool of its own (``lab up --second-dvs``), so the networks, which
alternate between the two clusters, can pass 4,094.  For each size N of ``--sizes``, in
increasing order, the lab grows to N networks, each with a port bound to a
cluster's compute host and a VM attached as Nova does it, made in bulk while the
periodic workers are stopped; then a worker is started and the figures are taken:

- ``bulk_s``: worker started -> every leaf carries every network it should (an
  independent OVSDB observer, ``lab/leaf_watch.py``); ``all_active_s``: worker
  started -> every port of the bench's VMs ACTIVE in Neutron (the worker reports each
  port after its leaves); the samples below wait for it, so they measure the cloud
  at this size rather than during its catch-up;
- ``port_create``: ``--samples`` networks made and deleted one by one: the API's
  answer to the port create (p50, and its ratio to the smallest size's p50), and
  ``convergence``: from that answer to the cluster's leaf ports carrying the network;
  ``release``: from the network's delete to its port group gone from vCenter (no
  target: against the simulator a release reads every VM, see ``vcenter/pg_users.py``);
  each sample starts when the last one is gone from the leaves and from vCenter;
- ``emptied_leaf_s``: leaf1 replaced by an empty switch -> carrying all it should again;
- ``audit_s``: ``dvs-fabric audit`` wall time (and whether it found the lab clean);
- ``rss_mb``: the largest resident set of one Neutron API process and of one
  periodic-workers process;
- ``vcenter_calls``: SOAP calls to vCenter for one port group create and one release,
  made the drivers' way (counted on pyVmomi's stub: ``scale_probes.count_soap_calls``).

At the largest size, VMs are added up to ``--vms`` (each with a port on one of the
networks), then ``watcher``: the periodic worker is restarted and its watcher's full
read of the datacenter (vCenter read + database write, from the worker's log) is
taken, and ``--moves`` vMotions, each timed from the move to the leaves pointing the
VM's MAC at its new leaf.  Exit 3 when a target is missed.
"""
from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from networking_dvs_fabric.cmd import cpu_pinning
from networking_dvs_fabric.cmd.bench import poll, summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.cmd import scale_probes
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaf_watch import LeafWatch
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError

TARGETS = {
    "port_create_ratio": 1.3,
    "convergence_p50_ms": 300.0, "convergence_p99_ms": 1000.0,
    "bulk_s_per_1000": 10.0, "bulk_s_at_4000": 30.0,
    "emptied_leaf_s_per_1000": 10.0, "emptied_leaf_s_at_4000": 30.0,
    "audit_s_at_4000": 30.0,
    "watcher_full_read_s": 30.0, "vmotion_p99_ms": 1000.0,
    "rss_mb": 500.0,
}
CLIENTS = 8
TIMEOUT = 30.0
BULK_TIMEOUT = 900.0
ISSUE_SIZE = 4000         # the issue's audit and RSS targets are set at 4,000 networks
AUDIT_LINES = 20          # of an audit that is not clean, kept in the result
EMPTIED_LEAF = "leaf1"
MAX_VLANS = 4094          # on each DVS's physical network


def _ms(values: list[float]) -> dict[str, Any]:
    return summarize(values, "p50", "p99", "max")


def _cluster_of(index: int) -> str:
    return topology.CLUSTERS[index % len(topology.CLUSTERS)]


def _esxi_of(index: int) -> str:
    hosts = topology.esxi_hosts(_cluster_of(index))
    return hosts[(index // len(topology.CLUSTERS)) % len(hosts)]


def wanted(network_id: str, cluster: str) -> list[tuple[str, str, str]]:
    """(leaf, port, logical switch) that must carry a network bound to ``cluster``."""
    return [(a.leaf, a.port, f"dvsf-{network_id}") for a in topology.attachments()
            if a.esxi_host.startswith(cluster + "_")]


def _until(check: Callable[[], Any], timeout: float, what: str,
           interval: float = 0.005) -> Any:
    value = poll(check, timeout, interval)
    if not value:
        raise LabError(f"bench scale: {what} not within {timeout:.0f} s")
    return value


class _Cloud:
    """The lab being grown: its clients, its networks, its VMs."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        status = lab.status()
        self.url = status["neutron"]["url"]
        self.vcenter = status["vcenter"]
        self.leaves = {leaf["name"]: leaf for leaf in status["leaves"]}
        self.networks: list[tuple[str, str]] = []      # (network id, cluster)
        self.vms: list[dict[str, Any]] = []            # {name, host, port}
        self.client = NeutronClient(self.url)

    def _boot(self, nova: FakeNova, index: int, network_id: str | None) -> dict[str, Any]:
        client = NeutronClient(self.url)
        cluster = _cluster_of(index)
        made_network = network_id is None
        if network_id is None:
            network_id = client.create_network(f"scale-{index}")["id"]
        port = client.create_port(network_id, topology.compute_host(cluster),
                                  device_id=str(uuid.uuid4()))
        if port["binding:vif_type"] != "dvs":
            raise LabError(f"bench scale: port {port['id']} not bound: "
                           f"{port['binding:vif_type']}")
        name = f"scale-vm-{index}"
        nova.boot(name, _esxi_of(index), [port])
        return {"network": (network_id, cluster) if made_network else None,
                "vm": {"name": name, "host": _esxi_of(index), "port": port}}

    def grow(self, networks: int, vms: int | None = None) -> float:
        """Networks up to ``networks`` (a port and a VM each), then (``vms``) VMs up to
        that count, each with a port on one of the networks; returns seconds taken."""
        start = time.monotonic()
        jobs: list[tuple[int, str | None]] = [
            (i, None) for i in range(len(self.networks), networks)]
        if vms is not None:         # more VMs, each a port on one of the networks
            first = len(self.vms) + len(jobs)
            jobs += [(first + k, self.networks[k % len(self.networks)][0])
                     for k in range(max(0, vms - first))]
        novas = [FakeNova(self.vcenter) for _ in range(CLIENTS)]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
                futures = [pool.submit(self._boot, novas[n % CLIENTS], index, net)
                           for n, (index, net) in enumerate(jobs)]
                for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                    made = future.result()
                    if made["network"] is not None:
                        self.networks.append(made["network"])
                    self.vms.append(made["vm"])
                    if done % 100 == 0:
                        _progress(f"  {done}/{len(jobs)} made "
                                  f"({time.monotonic() - start:.0f} s)")
        finally:
            for nova in novas:
                nova.close()
        return time.monotonic() - start

    def everything_wanted(self) -> list[tuple[str, str, str]]:
        return [key for net, cluster in self.networks for key in wanted(net, cluster)]


def _bulk(cloud: _Cloud, watch: LeafWatch, size: int) -> dict[str, Any]:
    _progress(f"size {size}: stopping the periodic workers, growing the cloud")
    cloud.lab.kill_periodic_workers()
    made_s = cloud.grow(size)
    _progress(f"size {size}: {len(cloud.networks)} networks made in {made_s:.0f} s; "
              "starting a worker")
    cloud.lab.start_periodic_worker()
    started = time.monotonic()
    keys = cloud.everything_wanted()
    seen = _until(lambda: watch.all_present_since(keys), BULK_TIMEOUT,
                  f"every leaf right for {size} networks", interval=0.05)
    # The one-by-one samples measure the cloud at this size, not during the catch-up:
    # every port the bulk made is reported ACTIVE (the worker tells Neutron after the
    # leaves, one status update a port) before they start.
    ours = {vm["port"]["id"] for vm in cloud.vms}
    _until(lambda: not ours.intersection(cloud.client.port_ids(status="DOWN")), BULK_TIMEOUT,
           f"every port ACTIVE for {size} networks", interval=0.5)
    return {"made_s": round(made_s, 1), "bulk_s": round(max(0.0, seen - started), 2),
            "all_active_s": round(time.monotonic() - started, 2)}


def _one_by_one(cloud: _Cloud, watch: LeafWatch, samples: int) -> dict[str, Any]:
    """Each sample alone: the next starts when the last one's network has left the
    leaves and its port group has left vCenter (the release: against the simulator it
    reads every VM of the datacenter, seconds at 1,000 VMs, which would otherwise run
    under the next samples and the emptied leaf that follows)."""
    creates: list[float] = []
    converge: list[float] = []
    releases: list[float] = []
    cluster = topology.CLUSTERS[0]
    dvs = topology.dvs_of_cluster(cluster)         # C0: the first DVS in either layout
    with scale_probes.port_group_watch(cloud.vcenter) as vcenter:
        for i in range(samples):
            net = cloud.client.create_network(f"sample-{uuid.uuid4().hex[:8]}")
            t0 = time.perf_counter()
            port = cloud.client.create_port(net["id"], topology.compute_host(cluster))
            creates.append(time.perf_counter() - t0)
            answered = time.monotonic()
            keys = wanted(net["id"], cluster)
            seen = _until(lambda: watch.all_seen(keys), TIMEOUT, "a sample network's leaves")
            converge.append(max(0.0, seen - answered))
            # Seen made first: an empty cache entry would otherwise read as released.
            _until(lambda: vcenter.cached_port_groups(dvs, net["id"]), TIMEOUT,
                   "a sample network's port group in vCenter")
            cloud.client.delete_port(port["id"])
            cloud.client.delete_network(net["id"])
            deleted = time.monotonic()
            _until(lambda: watch.all_gone(keys), TIMEOUT,
                   "a sample network to leave the leaves")
            _until(lambda: vcenter.cached_port_groups(dvs, net["id"]) == [], BULK_TIMEOUT,
                   "a sample network's port group to be released", interval=0.05)
            releases.append(time.monotonic() - deleted)
    return {"port_create": _ms(creates), "convergence": _ms(converge),
            "release": _ms(releases)}


def _emptied_leaf(cloud: _Cloud) -> float:
    keys = [key for key in cloud.everything_wanted() if key[0] == EMPTIED_LEAF]
    cloud.lab.stop_leaf(EMPTIED_LEAF)
    started = time.monotonic()
    cloud.lab.start_leaf(EMPTIED_LEAF, empty=True)
    watch = LeafWatch({EMPTIED_LEAF: cloud.leaves[EMPTIED_LEAF]["ovsdb"]}).start()
    try:
        seen = _until(lambda: watch.all_present_since(keys), BULK_TIMEOUT,
                      f"{EMPTIED_LEAF} reprogrammed with {len(keys)} bindings",
                      interval=0.05)
    finally:
        watch.stop()
    return round(seen - started, 2)


def _audit(lab: Lab) -> dict[str, Any]:
    cli = Path(sys.executable).parent / "dvs-fabric"
    started = time.monotonic()
    done = subprocess.run([str(cli), "--lab-dir", str(lab.dir), "audit"],
                          capture_output=True, text=True, timeout=BULK_TIMEOUT)
    took = time.monotonic() - started
    return {"audit_s": round(took, 2), "audit_clean": done.returncode == 0,
            # Not clean: what it found (its report's first lines; the last ones are
            # the port group count and the deployment id).
            "audit_tail": done.stdout.strip().splitlines()[:AUDIT_LINES] + (
                done.stderr.strip().splitlines()[-3:]) if done.returncode else []}


def _measure_size(cloud: _Cloud, watch: LeafWatch, size: int, samples: int) -> dict[str, Any]:
    figures = _bulk(cloud, watch, size)
    _progress(f"size {size}: leaves right {figures['bulk_s']} s, every port ACTIVE "
              f"{figures['all_active_s']} s after the worker started; {samples} networks "
              "one by one")
    figures.update(_one_by_one(cloud, watch, samples))
    figures["emptied_leaf_s"] = _emptied_leaf(cloud)
    _progress(f"size {size}: emptied {EMPTIED_LEAF} right again in "
              f"{figures['emptied_leaf_s']} s; auditing")
    figures.update(_audit(cloud.lab))
    figures["rss_mb"] = scale_probes.rss_mb(cloud.lab)
    figures["vcenter_calls"] = scale_probes.vcenter_calls(cloud.vcenter, size)
    return figures


def bench_scale(sizes: list[int], vms: int, samples: int = 20, moves: int = 20,
                lab_dir: Path | None = None, pin: bool = True,
                second_dvs: bool = False) -> dict[str, Any]:
    sizes = sorted(set(sizes))
    dvses = 2 if second_dvs else 1
    if sizes[-1] + samples > MAX_VLANS * dvses:
        raise LabError(f"{sizes[-1]} networks (+ {samples} samples) need more VLANs than "
                       f"{dvses} DVS(es) have ({MAX_VLANS} each): networks alternate between "
                       "the clusters; use --second-dvs or smaller --sizes")
    own = lab_dir is None
    lab = Lab(Path(lab_dir) if lab_dir else Path(tempfile.mkdtemp(prefix="dvsf-bench-scale-")))
    if lab.state() is not None:
        raise LabError(f"a lab is running in {lab.dir}; the benchmark needs its own")
    watch = pinning = None
    curve: dict[int, dict[str, Any]] = {}
    largest: dict[str, Any] = {}
    try:
        _progress(f"starting a lab in {lab.dir}")
        lab.up(mechanism_drivers="fabric_hwvtep,vsphere_dvs", db="mariadb",
               second_dvs=second_dvs, extra_config={
                   "ml2_type_vlan": {"network_vlan_ranges": topology.vlan_ranges(
                       1, MAX_VLANS, second_dvs=second_dvs)},
                   "ml2_vsphere": {"cleanup_interval": "3600"}})
        pinning = cpu_pinning.pin_labs([lab]) if pin else None
        cloud = _Cloud(lab)
        watch = LeafWatch({name: leaf["ovsdb"] for name, leaf in cloud.leaves.items()}).start()
        for size in sizes:
            curve[size] = _measure_size(cloud, watch, size, samples)
            _progress(f"size {size}: done: {_line(size, curve[size])}")
        _progress(f"adding VMs up to {vms}")
        cloud.grow(len(cloud.networks), vms=vms)
        largest = scale_probes.watcher(cloud, watch, moves)
    finally:
        if watch is not None:
            watch.stop()
        lab.down()
        cpu_pinning.restore(pinning)
        if own:
            shutil.rmtree(lab.dir, ignore_errors=True)
    result = _result(curve, largest)
    result["dvses"] = topology.dvs_mappings(second_dvs)
    result["cpu_pinning"] = pinning
    return result


def _result(curve: dict[int, dict[str, Any]], largest: dict[str, Any]) -> dict[str, Any]:
    sizes = sorted(curve)
    base = curve[sizes[0]]["port_create"].get("p50_ms") or 0.0
    missed: list[str] = []
    unjudged: list[str] = []
    for size in sizes:
        fig = curve[size]
        ratio = round(fig["port_create"]["p50_ms"] / base, 3) if base else None
        fig["port_create_ratio"] = ratio
        if ratio is not None and ratio > TARGETS["port_create_ratio"]:
            missed.append(f"port create at {size}: {ratio}x the smallest size's")
        conv = fig["convergence"]
        if conv.get("p50_ms", 0) > TARGETS["convergence_p50_ms"] or \
                conv.get("p99_ms", 0) > TARGETS["convergence_p99_ms"]:
            missed.append(f"convergence at {size}: p50 {conv.get('p50_ms')} ms, "
                          f"p99 {conv.get('p99_ms')} ms")
        for key, figure in (("bulk", fig["bulk_s"]), ("emptied_leaf", fig["emptied_leaf_s"])):
            limit = _size_limit(size, TARGETS[f"{key}_s_per_1000"], TARGETS[f"{key}_s_at_4000"])
            if figure > limit:
                missed.append(f"{key} at {size}: {figure} s > {limit} s")
        audit_limit = _audit_limit(size)
        if audit_limit is not None and fig["audit_s"] > audit_limit:
            missed.append(f"audit at {size}: {fig['audit_s']} s > {audit_limit} s")
        if not fig["audit_clean"]:
            missed.append(f"audit at {size} found drift: {fig['audit_tail']}")
        if size > ISSUE_SIZE:       # past it, RSS is reported only
            unjudged.append(f"resident memory at {size}")
        else:
            missed += [f"{who} at {size}: {mb} MB resident"
                       for who, mb in fig["rss_mb"].items()
                       if mb is not None and mb > TARGETS["rss_mb"]]
        calls = [curve[s]["vcenter_calls"] for s in sizes]
        if any(c != calls[0] for c in calls):
            missed.append(f"vCenter calls per create/release differ by size: {calls}")
    if largest:
        if largest["full_read_s"] > TARGETS["watcher_full_read_s"]:
            missed.append(f"watcher full read of {largest['vms']} VMs: "
                          f"{largest['full_read_s']} s")
        if largest["vmotion"].get("p99_ms", 0) > TARGETS["vmotion_p99_ms"]:
            missed.append(f"vMotion seen: p99 {largest['vmotion'].get('p99_ms')} ms")
    return {"benchmark": "scale", "sizes": sizes,
            "curve": {str(size): curve[size] for size in sizes}, "largest": largest,
            "targets": TARGETS, "missed": sorted(set(missed)), "not_judged": unjudged,
            "targets_met": not missed}


def _audit_limit(size: int) -> float | None:
    """The audit's limit at ``size``: none below 4,000 (the issue sets one there only),
    30 s at 4,000, and proportionally more above it: an audit reads every network once,
    so past the issue's size (two DVSes, ``--second-dvs``) it is held to the same rate."""
    if size < ISSUE_SIZE:
        return None
    return round(TARGETS["audit_s_at_4000"] * size / ISSUE_SIZE, 1)


def _size_limit(size: int, per_1000: float, at_4000: float) -> float:
    """The bulk/emptied-leaf limit at ``size``: 10 s a 1,000 up to 1,000 networks,
    then growing linearly to 30 s at 4,000 (the issue's two points)."""
    if size <= 1000:
        return per_1000
    return per_1000 + (at_4000 - per_1000) * (size - 1000) / 3000


def _line(size: int, fig: dict[str, Any]) -> str:
    conv = fig["convergence"]
    return (f"{size:>6} networks | port create p50 {fig['port_create'].get('p50_ms')} ms | "
            f"converge p50/p99 {conv.get('p50_ms')}/{conv.get('p99_ms')} ms | release p50 "
            f"{fig.get('release', {}).get('p50_ms')} ms | bulk "
            f"{fig['bulk_s']} s | emptied leaf {fig['emptied_leaf_s']} s | audit "
            f"{fig['audit_s']} s | RSS {fig['rss_mb']} | vCenter calls {fig['vcenter_calls']}")


def format_text(result: dict[str, Any]) -> str:
    lines = ["bench scale: each figure at each size"]
    for size in result["sizes"]:
        lines.append("  " + _line(size, result["curve"][str(size)]))
    largest = result["largest"]
    if largest:
        lines.append(f"  watcher: full read of {largest['vms']} VMs in "
                     f"{largest['full_read_s']} s; vMotion seen p50/p99 "
                     f"{largest['vmotion'].get('p50_ms')}/{largest['vmotion'].get('p99_ms')} ms")
    lines.append("  targets " + ("met" if result["targets_met"] else
                                 "MISSED: " + "; ".join(result["missed"])))
    if result.get("not_judged"):
        lines.append("  reported, not judged (no target at that size): "
                     + "; ".join(result["not_judged"]))
    return "\n".join(lines)
