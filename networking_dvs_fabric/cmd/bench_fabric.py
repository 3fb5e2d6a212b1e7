"""``dvs-fabric bench fabric``: what the fabric driver costs the API, and how fast leaves follow.

Two labs run side by side on MariaDB: ours (``fabric_hwvtep,vsphere_dvs``) and a
baseline Neutron whose only driver binds VXLAN ports at once with no I/O
(``dvs_fabric_noop_vlan`` with ``vxlan_too``; stock Neutron has no driver that binds
without an agent).  Requests to the two alternate, so machine noise hits both.

(a) API latency of network create and of port create (bound to a cluster's compute
    host), ours against the baseline's median.
(b) Convergence: from the API's answer to the port create to the moment every leaf
    port of the cluster carries the network's VLAN binding, as seen by an
    independent OVSDB observer (``lab/leaf_watch.py``).  Each network is deleted
    again after it is measured, so vCenter's port group count stays flat.
    Bind -> ACTIVE: from the same answer to the first API answer that shows the
    port ACTIVE (the fabric worker lifts its provisioning block once the leaves
    carry the port; polled every 5 ms, so at most one GET late).
(c) Bulk: ``--bulk`` networks with a port each created by 8 clients while the
    fabric worker is stopped (a worker outage, or a first deployment), then the
    worker is started: total time until every binding is on the leaves, and OVSDB
    write transactions per leaf (counted from the worker's log).
"""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from networking_dvs_fabric.cmd import cpu_pinning
from networking_dvs_fabric.cmd.bench import summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaf_watch import LeafWatch
from networking_dvs_fabric.lab.procs import LabError

NETWORK_RATIO_TARGET = 1.15
PORT_RATIO_TARGET = 1.25
CONVERGE_P50_TARGET_MS = 300.0
CONVERGE_P99_TARGET_MS = 1000.0
ACTIVE_P50_TARGET_MS = 300.0
ACTIVE_P99_TARGET_MS = 1000.0
TXN_PER_NETWORK_TARGET = 0.1
CONVERGE_TIMEOUT = 30.0
BULK_CLIENTS = 8
WARM_UP = 4          # API processes of a MariaDB lab
_TXN_LINE = re.compile(r"leaf (\S+): \d+ changes for \d+ networks in one transaction")


def _ms(values: list[float]) -> dict[str, float | int]:
    return summarize(values, "median", "p95", "p99", digits=2)


def _timed(func, *args, **kwargs) -> tuple[Any, float, float]:
    start = time.perf_counter()
    result = func(*args, **kwargs)
    end = time.perf_counter()
    return result, end - start, time.monotonic()


class _Side:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.client = NeutronClient(lab.status()["neutron"]["url"])
        self.network_times: list[float] = []
        self.port_times: list[float] = []


def _warm_up(side: _Side, host: str, index: int) -> None:
    client = NeutronClient(side.client.url)
    net = client.create_network(f"warm-up-{index}")
    port = client.create_port(net["id"], host=host)
    client.delete_port(port["id"])
    client.delete_network(net["id"])


def _wanted(network_id: str) -> list[tuple[str, str, str]]:
    switch = f"dvsf-{network_id}"
    return [(a.leaf, a.port, switch) for a in topology.attachments()
            if a.esxi_host.startswith(topology.CLUSTERS[0] + "_")]


def _wait(watch: LeafWatch, wanted: list[tuple[str, str, str]], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = watch.all_seen(wanted)
        if seen is not None:
            return seen
        time.sleep(0.002)
    return None


def _wait_active(client: NeutronClient, port_id: str, timeout: float) -> float | None:
    """``time.monotonic()`` when an API answer first shows the port ACTIVE."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get_port(port_id)["status"] == "ACTIVE":
            return time.monotonic()
        time.sleep(0.005)
    return None


def _wait_gone(watch: LeafWatch, wanted: list[tuple[str, str, str]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if watch.all_gone(wanted):
            return True
        time.sleep(0.002)
    return False


def bench_fabric(networks: int = 1000, bulk: int = 1000, lab_dir: Path | None = None,
                 pin: bool = True) -> dict:
    base_dir = Path(lab_dir) if lab_dir else Path(tempfile.mkdtemp(prefix="dvs-fabric-bench-"))
    ours_lab, base_lab = Lab(base_dir / "ours"), Lab(base_dir / "baseline")
    for lab in (ours_lab, base_lab):
        if lab.state() is not None:
            raise LabError(f"a lab is running in {lab.dir}; the benchmark needs its own")
    watch = pinning = None
    try:
        _progress(f"starting our lab in {ours_lab.dir}")
        ours_lab.up(mechanism_drivers="fabric_hwvtep,vsphere_dvs", db="mariadb",
                    extra_config={"ml2_vsphere": {"cleanup_interval": "3600"}})
        _progress(f"starting the baseline lab in {base_lab.dir}")
        base_lab.up(mechanism_drivers="dvs_fabric_noop_vlan", db="mariadb",
                    extra_config={"ml2": {"project_network_types": "vxlan"},
                                  "ml2_noop_vlan": {"vxlan_too": "true"}})
        pinning = cpu_pinning.pin_labs([ours_lab, base_lab]) if pin else None
        ours, base = _Side(ours_lab), _Side(base_lab)
        leaves = {leaf["name"]: leaf["ovsdb"] for leaf in ours_lab.status()["leaves"]}
        watch = LeafWatch(leaves).start()
        host = topology.compute_host(topology.CLUSTERS[0])
        # Warm-up, not counted: every API process pays its imports, its vCenter login
        # and inventory read on its first requests; concurrent ones reach them all.
        for side in (ours, base):
            with concurrent.futures.ThreadPoolExecutor(max_workers=WARM_UP) as pool:
                list(pool.map(lambda i, s=side: _warm_up(s, host, i), range(2 * WARM_UP)))
        converge: list[float] = []
        active: list[float] = []
        missed = active_missed = 0
        for i in range(networks):
            order = (ours, base) if i % 2 == 0 else (base, ours)
            for side in order:
                net, t_net, _ = _timed(side.client.create_network, f"bench-{i}")
                port, t_port, answered = _timed(side.client.create_port, net["id"], host=host)
                side.network_times.append(t_net)
                side.port_times.append(t_port)
                if side is ours:
                    seen = _wait(watch, _wanted(net["id"]), CONVERGE_TIMEOUT)
                    if seen is None:
                        missed += 1
                    else:
                        converge.append(max(0.0, seen - answered))
                    became = _wait_active(side.client, port["id"], CONVERGE_TIMEOUT)
                    if became is None:
                        active_missed += 1
                    else:
                        active.append(became - answered)
                side.client.delete_port(port["id"])
                side.client.delete_network(net["id"])
                if side is ours:
                    # Let the clean-up (leaves, port group) finish before the next
                    # request is timed, so each request is measured on its own.
                    if not _wait_gone(watch, _wanted(net["id"]), CONVERGE_TIMEOUT):
                        missed += 1
            if (i + 1) % 50 == 0 or i + 1 == networks:
                _progress(f"network {i + 1}/{networks} of each kind done")
        bulk_result = _bulk(ours_lab, ours, watch, host, bulk) if bulk else None
    finally:
        if watch is not None:
            watch.stop()
        for lab in (ours_lab, base_lab):
            lab.down()
        cpu_pinning.restore(pinning)
        if lab_dir is None:
            shutil.rmtree(base_dir, ignore_errors=True)
    result = _result(ours, base, (converge, missed), (active, active_missed), bulk_result,
                     networks)
    result["cpu_pinning"] = pinning
    return result


def _bulk(lab: Lab, side: _Side, watch: LeafWatch, host: str, count: int) -> dict:
    _progress(f"bulk: stopping the fabric worker, creating {count} networks with a port each")
    lab.kill_periodic_workers()
    names = [f"bulk-{i}" for i in range(count)]

    def create(name: str) -> str:
        client = NeutronClient(side.client.url)
        net = client.create_network(name)
        client.create_port(net["id"], host=host)
        return net["id"]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=BULK_CLIENTS) as pool:
        network_ids = list(pool.map(create, names))
    api_done = time.monotonic()
    _progress(f"bulk: API done in {api_done - started:.1f} s; starting the fabric worker")
    worker = lab.start_periodic_worker()
    worker_started = time.monotonic()
    wanted = [key for network_id in network_ids for key in _wanted(network_id)]
    seen = _wait(watch, wanted, timeout=600)
    if seen is None:
        raise LabError("bulk: the leaves did not converge within 600 s")
    time.sleep(1.0)    # let the worker log its last batch
    per_leaf: dict[str, int] = {}
    for match in _TXN_LINE.finditer(worker.log_path.read_text(errors="replace")):
        per_leaf[match.group(1)] = per_leaf.get(match.group(1), 0) + 1
    return {"networks": count, "clients": BULK_CLIENTS,
            "api_seconds": round(api_done - started, 2),
            "converge_after_worker_start_seconds": round(seen - worker_started, 2),
            "total_seconds": round(seen - started, 2),
            "transactions_per_leaf": per_leaf,
            "transactions_per_network_max": round(
                max(per_leaf.values(), default=0) / count, 4)}


def _result(ours: _Side, base: _Side, converge: tuple[list[float], int],
            active: tuple[list[float], int], bulk: dict | None, networks: int) -> dict:
    o_net, b_net = _ms(ours.network_times), _ms(base.network_times)
    o_port, b_port = _ms(ours.port_times), _ms(base.port_times)
    conv, missed = _ms(converge[0]), converge[1]
    act, active_missed = _ms(active[0]), active[1]
    net_ratio = o_net["median_ms"] / b_net["median_ms"]
    port_ratio = o_port["median_ms"] / b_port["median_ms"]
    targets: dict[str, Any] = {
        "network_create_ratio": round(net_ratio, 3),
        "network_create_met": net_ratio <= NETWORK_RATIO_TARGET,
        "port_create_ratio": round(port_ratio, 3),
        "port_create_met": port_ratio <= PORT_RATIO_TARGET,
        "convergence_missed": missed,
        "convergence_met": (missed == 0 and conv.get("median_ms", 1e9) <= CONVERGE_P50_TARGET_MS
                            and conv.get("p99_ms", 1e9) <= CONVERGE_P99_TARGET_MS),
        "bind_to_active_missed": active_missed,
        "bind_to_active_met": (active_missed == 0
                               and act.get("median_ms", 1e9) <= ACTIVE_P50_TARGET_MS
                               and act.get("p99_ms", 1e9) <= ACTIVE_P99_TARGET_MS),
        "targets": {"network_create_ratio": f"<= {NETWORK_RATIO_TARGET}",
                    "port_create_ratio": f"<= {PORT_RATIO_TARGET}",
                    "convergence": f"p50 <= {CONVERGE_P50_TARGET_MS:.0f} ms, "
                                   f"p99 <= {CONVERGE_P99_TARGET_MS:.0f} ms",
                    "bind_to_active": f"p50 <= {ACTIVE_P50_TARGET_MS:.0f} ms, "
                                      f"p99 <= {ACTIVE_P99_TARGET_MS:.0f} ms",
                    "bulk_transactions_per_network": f"<= {TXN_PER_NETWORK_TARGET}"},
    }
    if bulk is not None:
        targets["bulk_transactions_met"] = (
            bulk["transactions_per_network_max"] <= TXN_PER_NETWORK_TARGET)
    met = all(v for k, v in targets.items() if k.endswith("_met"))
    return {"benchmark": "fabric", "networks": networks,
            "ours": {"network_create": o_net, "port_create": o_port},
            "baseline": {"network_create": b_net, "port_create": b_port},
            "convergence": conv, "bind_to_active": act, "bulk": bulk, "targets": targets,
            "targets_met": met}


def format_text(result: dict) -> str:
    lines = []
    for side in ("ours", "baseline"):
        for what in ("network_create", "port_create"):
            s = result[side][what]
            lines.append(f"{side:8s} {what:14s} median {s['median_ms']:8.2f} ms  "
                         f"p95 {s['p95_ms']:8.2f} ms  (n={s['n']})")
    c = result["convergence"]
    if c.get("n"):
        lines.append(f"convergence: p50 {c['median_ms']:.1f} ms  p99 {c['p99_ms']:.1f} ms  "
                     f"(n={c['n']})")
    a = result["bind_to_active"]
    if a.get("n"):
        lines.append(f"bind -> ACTIVE: p50 {a['median_ms']:.1f} ms  p99 {a['p99_ms']:.1f} ms  "
                     f"(n={a['n']}, missed {result['targets']['bind_to_active_missed']})")
    if result["bulk"]:
        b = result["bulk"]
        lines.append(f"bulk {b['networks']} networks: API {b['api_seconds']} s, leaves "
                     f"{b['converge_after_worker_start_seconds']} s after the worker "
                     f"started; transactions per leaf {b['transactions_per_leaf']}")
    t = result["targets"]
    lines.append(f"network create {t['network_create_ratio']}x, port create "
                 f"{t['port_create_ratio']}x; targets "
                 f"{'met' if result['targets_met'] else 'MISSED'}")
    return "\n".join(lines)
