"""Probes of ``bench scale``: resident memory, vCenter calls, the watcher at size.

Kept apart from the benchmark's orchestration (``bench_scale.py``) so each reads
in one sitting.  Everything here measures the real processes and the real
simulator; the only instrument is a counter on pyVmomi's SOAP stub in the
benchmark's own process (``count_soap_calls``), which counts and changes nothing.
"""
from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Iterator

import psutil
from pyVmomi import SoapStubAdapter

from networking_dvs_fabric.cmd.bench import summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.procs import LabError
from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
from networking_dvs_fabric.vcenter.inventory import load_inventory
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession
from networking_dvs_fabric.vcenter.vm_watch import VmWatch

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
    SoapStubAdapter.InvokeMethod = counting
    try:
        yield counts
    finally:
        SoapStubAdapter.InvokeMethod = original


def _session(vcenter: dict[str, Any]) -> VCenterSession:
    return VCenterSession(VCenterConfig(
        url=vcenter["url"], username=vcenter["username"], password=vcenter["password"],
        ca_file=vcenter["ca_file"]))


def vcenter_calls(vcenter: dict[str, Any], size: int) -> dict[str, int]:
    """SOAP calls of one port group create and one release, made the drivers' way
    (``VSphereBackend`` with its watched port-group cache, as every API process runs
    it), on the DVS as it is at this size."""
    settings = BackendSettings(
        datacenter=vcenter["datacenter"], dvs_mappings=dict(vcenter["dvs"]),
        host_mappings={topology.compute_host(c): c for c in topology.CLUSTERS})
    backend = VSphereBackend(settings, lambda: _session(vcenter))
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
    """The watcher's full read of the datacenter, then ``moves`` vMotions timed from the
    move to the observer leaf pointing the VM's MAC at the destination's leaf."""
    session = _session(cloud.vcenter)
    try:
        inventory = load_inventory(session, cloud.vcenter["datacenter"],
                                   [topology.DVS_NAME])
        vm_watch = VmWatch(session, inventory.datacenter_moid)
        started = time.monotonic()
        states = vm_watch.resync()
        full_read = time.monotonic() - started
        vm_watch.close()
    finally:
        session.close()
    _progress(f"watcher: full read of {len(states)} VMs in {full_read:.1f} s; "
              f"{moves} vMotions")
    return {"vms": len(states), "full_read_s": round(full_read, 2),
            "vmotion": _vmotions(cloud, watch, moves)}


def _vmotions(cloud: "_Cloud", watch: "LeafWatch", moves: int) -> dict[str, Any]:
    leaf_of = {a.esxi_host: a.leaf for a in topology.attachments()}
    mover = next(vm for vm in cloud.vms if vm["host"] == VMOTION_HOSTS[0])
    switch = f"dvsf-{mover['port']['network_id']}"
    mac = mover["port"]["mac_address"]
    took: list[float] = []
    host = VMOTION_HOSTS[0]
    with FakeNova(cloud.vcenter) as nova:
        for _ in range(moves):
            dest = VMOTION_HOSTS[1] if host == VMOTION_HOSTS[0] else VMOTION_HOSTS[0]
            dest_ip = cloud.leaves[leaf_of[dest]]["tunnel_ip"]
            started = time.monotonic()
            nova.vmotion(mover["name"], dest)
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
