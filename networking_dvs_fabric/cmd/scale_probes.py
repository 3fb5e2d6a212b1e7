"""Probes of ``bench scale``: resident memory, vCenter calls, the watcher at size.

Kept apart from the benchmark's orchestration (``bench_scale.py``) so each reads
in one sitting.  Everything here measures the real processes and the real
simulator; the only instrument is a counter on pyVmomi's SOAP stub in the
benchmark's own process (``count_soap_calls``), which counts and changes nothing.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import psutil
from pyVmomi import SoapStubAdapter

from networking_dvs_fabric.cmd.bench import poll, summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError
from networking_dvs_fabric.vcenter import raw_soap
from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession

if TYPE_CHECKING:
    from networking_dvs_fabric.cmd.bench_scale import _Cloud
    from networking_dvs_fabric.lab.leaf_watch import LeafWatch

PROBE_VLAN = 4094             # the probe's own port group, made and released at once


def _tree_rss_mb(pid: int) -> float | None:
    """The largest resident set (MB) among ``pid`` and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    sizes = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes.append(proc.memory_info().rss)
    return round(max(sizes) / 2**20, 1) if sizes else None


def rss_mb(lab: Lab) -> dict[str, float | None]:
    """Largest resident set of one API process and of one periodic-workers process."""
    state = lab.state() or {}
    found: dict[str, float | None] = {"api_process": None, "periodic_workers": None}
    for daemon in state.get("daemons", []):
        pid = daemon.get("pid")
        if not isinstance(pid, int):
            continue
        key = ("api_process" if daemon["name"].startswith("neutron-api") else
               "periodic_workers" if daemon["name"].startswith("neutron-periodic-workers")
               else None)
        if key is None:
            continue
        size = _tree_rss_mb(pid)
        if size is not None and (found[key] is None or size > found[key]):
            found[key] = size
    return found


@contextlib.contextmanager
def count_soap_calls() -> Iterator[dict[str, int]]:
    """Count the SOAP requests this thread sends to vCenter, by method name."""
    counts: dict[str, int] = {}
    me = threading.get_ident()
    original = SoapStubAdapter.InvokeMethod

    def counting(self: Any, mo: Any, info: Any, args: Any, *rest: Any, **kw: Any) -> Any:
        if threading.get_ident() == me:
            counts[info.wsdlName] = counts.get(info.wsdlName, 0) + 1
        return original(self, mo, info, args, *rest, **kw)
    def counting_raw(method: str, objects: int) -> None:      # ``raw_soap``'s calls
        if threading.get_ident() == me:
            counts[method] = counts.get(method, 0) + 1
    SoapStubAdapter.InvokeMethod = counting
    raw_soap.observers.append(counting_raw)
    try:
        yield counts
    finally:
        SoapStubAdapter.InvokeMethod = original
        raw_soap.observers.remove(counting_raw)


def _session(vcenter: dict[str, Any]) -> VCenterSession:
    return VCenterSession(VCenterConfig(
        url=vcenter["url"], username=vcenter["username"], password=vcenter["password"],
        ca_file=vcenter["ca_file"]))


def _backend(vcenter: dict[str, Any]) -> VSphereBackend:
    settings = BackendSettings(
        datacenter=vcenter["datacenter"], dvs_mappings=dict(vcenter["dvs"]),
        host_mappings={topology.compute_host(c): c for c in topology.CLUSTERS})
    return VSphereBackend(settings, lambda: _session(vcenter))


@contextlib.contextmanager
def port_group_watch(vcenter: dict[str, Any]) -> Iterator[VSphereBackend]:
    """A backend whose port group cache follows vCenter (its update stream, no polling):
    ``cached_port_groups(dvs, network)`` is ``[]`` once a network's port groups are gone."""
    backend = _backend(vcenter)
    try:
        backend.start(watch=True)
        if not backend.wait_cache_ready(timeout=120):
            raise LabError("bench scale: the port group cache did not fill")
        yield backend
    finally:
        backend.stop()
        backend.session.close()


def vcenter_calls(vcenter: dict[str, Any], size: int) -> dict[str, int]:
    """SOAP calls of one port group create and one release, made the drivers' way
    (``VSphereBackend`` with its watched port-group cache, as every API process runs
    it), on the DVS as it is at this size."""
    backend = _backend(vcenter)
    settings = backend.settings
    try:
        backend.start(watch=True)
        if not backend.wait_cache_ready(timeout=120):
            raise LabError(f"bench scale: the port group cache did not fill at size {size}")
        physnet, dvs_name = next(iter(settings.dvs_mappings.items()))
        network_id = str(uuid.uuid4())
        with count_soap_calls() as create:
            backend.ensure_port_group(physnet, network_id, f"scale-probe-{size}", PROBE_VLAN)
        # The cache hears of the new port group from vCenter's update stream.
        deadline = time.monotonic() + 30
        while backend.cached_port_groups(dvs_name, network_id) in (None, []) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        with count_soap_calls() as release:
            backend.release_port_group(dvs_name, network_id,
                                       still_used=lambda pg=None: False)
        return {"create": sum(create.values()), "release": sum(release.values())}
    finally:
        backend.stop()
        backend.session.close()


def watcher(cloud: "_Cloud", watch: "LeafWatch", moves: int) -> dict[str, Any]:
    """The watcher's full read of the datacenter at a worker's start (from its log: the
    holder's read of vCenter plus its one database write), then ``moves`` vMotions
    timed from the move to the observer leaf pointing the VM's MAC at the new leaf.

    The worker is restarted once the ports of the VMs just added are ACTIVE: killed
    while telling Neutron about them, the new worker's start converges those networks
    again beside the watcher's read (bench20: 556 networks, the read's database part
    21.6 s against 3.8-7.9 s), which measures the bench's own catch-up, not the read."""
    ours = {vm["port"]["id"] for vm in cloud.vms}
    _progress("watcher: waiting for every port of the VMs just added to be ACTIVE")
    _until_active(cloud, ours, "before the worker's restart")
    cloud.lab.kill_periodic_workers()
    worker = cloud.lab.start_periodic_worker()
    # The killed holder's lease runs out first (journal lease TTL): not the read's.
    line = poll(lambda: FULL_READ.search(_text(worker.log_path)), FULL_READ_TIMEOUT,
                interval=0.5)
    if line is None:
        raise LabError(f"bench scale: no watcher full read in {worker.log_path} within "
                       f"{FULL_READ_TIMEOUT:.0f} s of the worker's start")
    vms, read_s, write_s = int(line["vms"]), float(line["read"]), float(line["db"])
    _progress(f"watcher: full read of {vms} VMs in {read_s + write_s:.1f} s (vCenter "
              f"{read_s:.1f} s, database {write_s:.1f} s); waiting for every port ACTIVE")
    # As the sizes' samples: the moves measure the cloud, not a catch-up of ports the
    # restart left DOWN (session 17's run: 498 networks' ports told to Neutron during
    # the moves, p99 1.3 s).
    _until_active(cloud, ours, "after the watcher's full read")
    _progress(f"watcher: every port ACTIVE; {moves} vMotions")
    return {"vms": vms, "full_read_s": round(read_s + write_s, 2),
            "full_read_vcenter_s": read_s, "full_read_database_s": write_s,
            "vmotion": _vmotions(cloud, watch, moves)}


def _until_active(cloud: "_Cloud", ports: set[str], when: str) -> None:
    if poll(lambda: not ports.intersection(cloud.client.port_ids(status="DOWN")),
            ACTIVE_TIMEOUT, interval=0.5) is None:
        raise LabError(f"bench scale: ports of the bench's VMs still DOWN "
                       f"{ACTIVE_TIMEOUT:.0f} s {when}")


FULL_READ = re.compile(r"vCenter watcher: full read, (?P<vms>\d+) VMs, .*\(vCenter "
                       r"(?P<read>[\d.]+) s, database (?P<db>[\d.]+) s\)")
FULL_READ_TIMEOUT = 600.0
ACTIVE_TIMEOUT = 1800.0


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _vmotions(cloud: "_Cloud", watch: "LeafWatch", moves: int) -> dict[str, Any]:
    leaf_of = {a.esxi_host: a.leaf for a in topology.attachments()}
    mover = next(vm for vm in cloud.vms if vm["host"] == VMOTION_HOSTS[0])
    switch = f"dvsf-{mover['port']['network_id']}"
    mac = mover["port"]["mac_address"]
    took: list[float] = []
    host = VMOTION_HOSTS[0]
    with FakeNova(cloud.vcenter) as nova:
        vm = nova.vm(mover["name"])                 # found before the moves are timed
        hosts = {name: nova.host(name) for name in VMOTION_HOSTS}
        for _ in range(moves):
            dest = VMOTION_HOSTS[1] if host == VMOTION_HOSTS[0] else VMOTION_HOSTS[0]
            dest_ip = cloud.leaves[leaf_of[dest]]["tunnel_ip"]
            started = time.monotonic()
            nova.relocate(vm, hosts[dest])
            deadline = started + 30
            while time.monotonic() < deadline:
                seen = watch.mac(VMOTION_OBSERVER, switch, mac)
                if seen is not None and seen[0] == dest_ip and seen[1] >= started:
                    took.append(seen[1] - started)
                    break
                time.sleep(0.005)
            else:
                raise LabError(f"bench scale: {VMOTION_OBSERVER} never pointed {mac} at "
                               f"{dest} ({dest_ip})")
            host = dest
            time.sleep(0.5)
    return summarize(took, "p50", "p99")


VMOTION_HOSTS = ("DC0_C0_H0", "DC0_C0_H1")      # behind leaf1 and leaf2
VMOTION_OBSERVER = "leaf3"                       # DC0_C0_H2's leaf sees the MAC move
