"""``dvs-fabric bench vmotion``: how fast the leaves follow a VM that moves.

For each mode (``pre_provision``, ``on_demand``) a lab of its own: a network, VM A
(the one that moves) and VM B (stays, on a host behind a third leaf), booted as
Nova would.  A is moved back and forth between two ESXi hosts of one cluster that
sit behind different leaves, ``--moves`` times.  Each move: vCenter's
migration-start event is posted (the simulator sends none), 1 s later (a
vMotion's memory pre-copy takes longer than that) ``RelocateVM_Task`` runs.
Measured with an independent OVSDB observer (``lab/leaf_watch.py``):
- event -> destination ready: the destination leaf port carries the network and
  B's MAC is there (so traffic to B works the moment A arrives);
- host change -> leaves right: B's leaf points A's MAC at the destination leaf and
  (on_demand) the source leaf port has let the network go.
Targets: host change -> leaves right p50 <= 500 ms, p99 <= 1.5 s (the simulator
reports changes every 250 ms); destination ready before the host changes in at
least 99 % of the moves.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from networking_dvs_fabric.cmd.bench import poll, summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaf_watch import LeafWatch
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError

PRECOPY = 1.0
TIMEOUT = 10.0
RIGHT_P50_MS, RIGHT_P99_MS = 500.0, 1500.0
READY_SHARE = 0.99
HOSTS = ("DC0_C0_H0", "DC0_C0_H1")     # behind leaf1 and leaf2
OBSERVER_HOST = "DC0_C0_H2"            # behind leaf3


def _att(host: str) -> topology.Attachment:
    return next(a for a in topology.attachments() if a.esxi_host == host)


def _ms(values: list[float]) -> dict:
    return summarize(values, "median", "p99", "max")


def _until(check, timeout: float = TIMEOUT) -> float | None:
    return poll(check, timeout, interval=0.002)


def _boot(client: NeutronClient, nova: FakeNova, network_id: str, host: str,
          name: str) -> dict:
    cluster = host.rsplit("_", 1)[0]
    port = client.create_port(network_id, host=topology.compute_host(cluster), name=name)
    if port["binding:vif_type"] != "dvs":
        raise LabError(f"port of {name} not bound: {port['binding:vif_type']}")
    nova.boot(name, host, [port])
    return port


def _one_mode(base: Path, mode: str, moves: int) -> dict:
    lab = Lab(base / mode)
    watch = None
    try:
        _progress(f"{mode}: starting a lab in {lab.dir}")
        status = lab.up(mechanism_drivers="fabric_hwvtep,vsphere_dvs", mode=mode)
        client = NeutronClient(status["neutron"]["url"])
        watch = LeafWatch({leaf["name"]: leaf["ovsdb"] for leaf in status["leaves"]}).start()
        ips = {leaf["name"]: leaf["tunnel_ip"] for leaf in status["leaves"]}
        net = client.create_network("vmotion")
        switch = f"dvsf-{net['id']}"
        observer = _att(OBSERVER_HOST)
        with FakeNova(status["vcenter"]) as nova:
            port_a = _boot(client, nova, net["id"], HOSTS[0], "vm-a")
            port_b = _boot(client, nova, net["id"], OBSERVER_HOST, "vm-b")
            mac_a, mac_b = port_a["mac_address"], port_b["mac_address"]
            if not _until(lambda: (watch.mac(observer.leaf, switch, mac_a) or ("",))[0]
                          == ips[_att(HOSTS[0]).leaf], 30):
                raise LabError(f"{mode}: VM A never showed up on the leaves")
            ready, right, before = [], [], 0
            for i in range(moves):
                src, dst = HOSTS[i % 2], HOSTS[(i + 1) % 2]
                a_src, a_dst = _att(src), _att(dst)
                dst_key = (a_dst.leaf, a_dst.port, switch)
                src_key = (a_src.leaf, a_src.port, switch)

                def dest_ready() -> float | None:
                    if not watch.present(dst_key) or not watch.mac(a_dst.leaf, switch, mac_b):
                        return None
                    return max(watch.appeared_at(dst_key) or 0.0,
                               watch.mac(a_dst.leaf, switch, mac_b)[1])
                t_event = time.monotonic()
                nova.announce_migration("vm-a", dst)
                got = _until(dest_ready, PRECOPY)
                nova.vmotion("vm-a", dst)
                t_host = time.monotonic()
                if got is not None:
                    before += 1
                else:
                    got = _until(dest_ready)
                if got is not None:
                    ready.append(max(0.0, got - t_event))

                def leaves_right() -> float | None:
                    seen = watch.mac(observer.leaf, switch, mac_a)
                    if seen is None or seen[0] != ips[a_dst.leaf]:
                        return None
                    if mode == "on_demand":
                        gone = watch.vanished_at(src_key)
                        return None if gone is None else max(gone, seen[1])
                    return seen[1]
                done = _until(leaves_right)
                if done is None:
                    raise LabError(f"{mode}: move {i + 1} ({src} -> {dst}) never converged")
                right.append(max(0.0, done - t_host))
                if (i + 1) % 10 == 0:
                    _progress(f"{mode}: {i + 1}/{moves} moves")
        return {"moves": moves, "event_to_destination_ready": _ms(ready),
                "destination_ready_before_host_change": before,
                "host_change_to_leaves_right": _ms(right)}
    finally:
        if watch is not None:
            watch.stop()
        lab.down()


def bench_vmotion(moves: int = 100, lab_dir: Path | None = None) -> dict:
    base = Path(lab_dir) if lab_dir else Path(tempfile.mkdtemp(prefix="dvs-fabric-vmotion-"))
    try:
        modes = {mode: _one_mode(base, mode, moves) for mode in ("pre_provision", "on_demand")}
    finally:
        if lab_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    targets = {}
    for mode, r in modes.items():
        right = r["host_change_to_leaves_right"]
        targets[mode] = {
            "leaves_right_met": right["median_ms"] <= RIGHT_P50_MS
            and right["p99_ms"] <= RIGHT_P99_MS,
            "destination_ready_met": r["destination_ready_before_host_change"]
            >= READY_SHARE * moves}
    return {"benchmark": "vmotion", "precopy_s": PRECOPY, "modes": modes,
            "targets": {"host_change_to_leaves_right": f"p50 <= {RIGHT_P50_MS:.0f} ms, "
                        f"p99 <= {RIGHT_P99_MS:.0f} ms",
                        "destination_ready_before_host_change": f">= {READY_SHARE:.0%}",
                        **targets},
            "targets_met": all(all(t.values()) for t in targets.values())}


def format_text(result: dict) -> str:
    lines = []
    for mode, r in result["modes"].items():
        right, ready = r["host_change_to_leaves_right"], r["event_to_destination_ready"]
        lines.append(f"{mode:13s} host change -> leaves right: p50 {right['median_ms']} ms "
                     f"p99 {right['p99_ms']} ms; event -> destination ready: p50 "
                     f"{ready.get('median_ms')} ms; ready before the host changed in "
                     f"{r['destination_ready_before_host_change']}/{r['moves']}")
    lines.append(f"targets {'met' if result['targets_met'] else 'MISSED'}")
    return "\n".join(lines)
