"""What the driver needs to know of vCenter's inventory, read in one PropertyCollector call.

The datacenter, its DVSs (uuid, member hosts, MTU, folder), its clusters (member
hosts) and the ESXi host names.  Values are frozen: a refresh builds a new
``Inventory``.  :class:`InventoryKeeper` holds the last one read and refreshes it
when old, without making its readers wait for vCenter.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.session import VCenterSession, collect

LOG = logging.getLogger(__name__)
# vSphere's MTU of a new DVS.  A DVS whose ``config.maxMtu`` is unset (0 or absent:
# govmomi's simulator never sets it) runs at this MTU.
DEFAULT_DVS_MTU = 1500


@dataclasses.dataclass(frozen=True)
class DVSInfo:
    name: str
    uuid: str
    moid: str
    host_ids: frozenset[str]
    max_mtu: int = DEFAULT_DVS_MTU     # config.maxMtu; unset reads as DEFAULT_DVS_MTU
    folder_moid: str | None = None     # the folder holding it (and its port groups)


@dataclasses.dataclass(frozen=True)
class Inventory:
    datacenter: str
    datacenter_moid: str
    network_folder_moid: str
    dvs: Mapping[str, DVSInfo]                 # by DVS name
    clusters: Mapping[str, frozenset[str]]     # cluster name -> host moids
    hosts: Mapping[str, str]                   # ESXi host name -> host moid

    def host_ids(self, binding_host: str, host_mappings: Mapping[str, str]) -> frozenset[str]:
        """The ESXi hosts behind a binding host: a mapped cluster's, or the host itself."""
        cluster = host_mappings.get(binding_host)
        if cluster is not None:
            return self.clusters.get(cluster, frozenset())
        moid = self.hosts.get(binding_host)
        return frozenset([moid]) if moid else frozenset()

    def binding_hosts_of(self, dvs_name: str, host_mappings: Mapping[str, str]) -> set[str]:
        """Every binding host whose ESXi hosts are members of ``dvs_name``."""
        members = self.dvs[dvs_name].host_ids
        names = {host for host, moid in self.hosts.items() if moid in members}
        names.update(binding_host for binding_host, cluster in host_mappings.items()
                     if self.clusters.get(cluster, frozenset()) & members)
        return names


def max_mtu_of(config: Any) -> int:
    """The MTU a DVS runs at, from its ``config`` (maxMtu None or 0: unset)."""
    return int(getattr(config, "maxMtu", None) or 0) or DEFAULT_DVS_MTU


# Read whole: maxMtu is a field of VMware's DVS config (VMwareDVSConfigInfo), and
# vCenter's PropertyCollector refuses a path through a property into a subtype's
# field ("config.maxMtu" -> InvalidProperty), whichever DVS type the spec names.
DVS_CONFIG = "config"


def read_dvs_mtu(session: VCenterSession, dvs: DVSInfo) -> tuple[int, str | None]:
    """The DVS's MTU now and its config version (for a reconfigure): one read."""
    def read(si: Any) -> tuple[int, str | None]:
        pcq = vmodl.query.PropertyCollector
        spec = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=vim.DistributedVirtualSwitch(dvs.moid, si._stub),
                                      skip=False)],
            propSet=[pcq.PropertySpec(type=vim.DistributedVirtualSwitch,
                                      pathSet=[DVS_CONFIG])])
        found = collect(si.content.propertyCollector, [spec])
        if not found:
            raise errors.VCenterNotFound(f"DVS {dvs.name} not found")
        config = found[0][1].get(DVS_CONFIG)
        return max_mtu_of(config), getattr(config, "configVersion", None)
    return session.invoke(read, f"read the MTU of DVS {dvs.name}")


def _find_datacenter(session: VCenterSession, si: Any, name: str) -> tuple[Any, Any]:
    for obj, props in session.retrieve(si, vim.Datacenter, ["name", "networkFolder"]):
        if props.get("name") == name:
            return obj, props["networkFolder"]
    raise errors.VCenterNotFound(f"[ml2_vsphere] datacenter: no datacenter named {name!r} "
                                 "in vCenter")


def load_inventory(session: VCenterSession, datacenter: str,
                   dvs_names: Iterable[str], clusters_wanted: Iterable[str] = ()) -> Inventory:
    """Read the inventory; a missing datacenter, DVS or cluster raises VCenterNotFound."""
    def read(si: Any) -> Inventory:
        dc, network_folder = _find_datacenter(session, si, datacenter)
        content = si.content
        types = [vim.DistributedVirtualSwitch, vim.ClusterComputeResource, vim.HostSystem]
        view = content.viewManager.CreateContainerView(dc, types, True)
        try:
            pcq = vmodl.query.PropertyCollector
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=view, skip=True, selectSet=[pcq.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[pcq.PropertySpec(type=vim.DistributedVirtualSwitch,
                                          pathSet=["name", "uuid", "summary.hostMember",
                                                   "parent", DVS_CONFIG]),
                         pcq.PropertySpec(type=vim.ClusterComputeResource,
                                          pathSet=["name", "host"]),
                         pcq.PropertySpec(type=vim.HostSystem, pathSet=["name"])])
            objects = collect(content.propertyCollector, [spec])
        finally:
            view.Destroy()
        dvs: dict[str, DVSInfo] = {}
        clusters: dict[str, frozenset[str]] = {}
        hosts: dict[str, str] = {}
        for obj, props in objects:
            if isinstance(obj, vim.DistributedVirtualSwitch):
                dvs[props["name"]] = DVSInfo(
                    name=props["name"], uuid=props["uuid"], moid=obj._moId,
                    host_ids=frozenset(h._moId for h in props.get("summary.hostMember") or []),
                    max_mtu=max_mtu_of(props.get(DVS_CONFIG)),
                    folder_moid=getattr(props.get("parent"), "_moId", None))
            elif isinstance(obj, vim.ClusterComputeResource):
                clusters[props["name"]] = frozenset(h._moId for h in props.get("host") or [])
            elif isinstance(obj, vim.HostSystem):
                hosts[props["name"]] = obj._moId
        return Inventory(datacenter=datacenter, datacenter_moid=dc._moId,
                         network_folder_moid=network_folder._moId,
                         dvs=dvs, clusters=clusters, hosts=hosts)

    inventory = session.invoke(read, f"read inventory of datacenter {datacenter}")
    for name in dvs_names:
        if name not in inventory.dvs:
            raise errors.VCenterNotFound(
                f"[ml2_vsphere] dvs_mappings: no DVS named {name!r} in datacenter "
                f"{datacenter!r} (found: {', '.join(sorted(inventory.dvs)) or 'none'})")
    for name in clusters_wanted:
        if name not in inventory.clusters:
            raise errors.VCenterNotFound(
                f"[ml2_vsphere] host_mappings: no cluster named {name!r} in datacenter "
                f"{datacenter!r} (found: {', '.join(sorted(inventory.clusters)) or 'none'})")
    return inventory


# After a refresh failed, the next one is tried this much later (and logged again).
INVENTORY_RETRY_HOLDOFF = 30.0


class InventoryKeeper:
    """The last inventory read, refreshed in the background once it is ``max_age`` old.

    Placement asks for the inventory once per ESXi host per port: a reader must not
    pay a reload - nor, with vCenter slow or down, the whole retry cycle - each time
    the inventory is old.  So a reader gets the inventory there is at once; one
    refresh at a time runs in a thread of its own; a failed one is logged and tried
    again after ``retry_holdoff``.  Only with no inventory at all, or asked to
    (``get(refresh=True)``), does the reader wait for vCenter (and get its error).
    """

    def __init__(self, load: Callable[[], Inventory], max_age: float,
                 retry_holdoff: float = INVENTORY_RETRY_HOLDOFF) -> None:
        self._load = load
        self.max_age = max_age
        self.retry_holdoff = retry_holdoff
        self._lock = threading.Lock()           # the fields below
        self._load_lock = threading.Lock()      # one read of vCenter at a time
        self._inventory: Inventory | None = None
        self._time = 0.0
        self._refresh: threading.Thread | None = None
        self._retry_at = 0.0

    @property
    def current(self) -> Inventory | None:
        """The last inventory read (None: none yet); no I/O."""
        return self._inventory

    @property
    def refreshing(self) -> bool:
        """Is a background refresh running?"""
        thread = self._refresh
        return thread is not None and thread.is_alive()

    def get(self, refresh: bool = False) -> Inventory:
        """The inventory; read now when there is none or ``refresh`` (errors raise)."""
        if not refresh:
            with self._lock:
                inventory = self._inventory
                if inventory is not None:
                    now = time.monotonic()
                    if now - self._time > self.max_age and now >= self._retry_at and \
                            not self.refreshing:
                        self._refresh = threading.Thread(
                            target=self._refresh_in_background, name="dvs-inventory",
                            daemon=True)
                        self._refresh.start()
                    return inventory
        with self._load_lock:
            if not refresh and self._inventory is not None:    # read meanwhile
                return self._inventory
            return self._read()

    def update(self, change: Callable[[Inventory], Inventory]) -> None:
        """Replace the inventory with ``change(inventory)`` (e.g. an MTU just read)."""
        with self._lock:
            if self._inventory is not None:
                self._inventory = change(self._inventory)

    def _read(self) -> Inventory:
        inventory = self._load()
        with self._lock:
            self._inventory = inventory
            self._time = time.monotonic()
            self._retry_at = 0.0
        return inventory

    def _refresh_in_background(self) -> None:
        try:
            with self._load_lock:
                self._read()
        except Exception as exc:  # noqa: BLE001 - any failure: keep the last one, retry
            with self._lock:
                self._retry_at = time.monotonic() + self.retry_holdoff
                age = time.monotonic() - self._time
            LOG.warning("vCenter inventory not refreshed (%(err)s); using the one read "
                        "%(age).0f s ago, next try in %(next).0f s",
                        {"err": exc, "age": age, "next": self.retry_holdoff})
