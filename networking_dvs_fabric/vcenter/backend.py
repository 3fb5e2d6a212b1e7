"""Everything the vsphere_dvs driver asks of vCenter, in driver terms.

"Which DVS serves this physical network?", "does it reach this binding host?",
"is its MTU big enough (raise it)?", "make sure the port group for this network
exists with this VLAN", "remove the port group of this network".  The driver
stays a thin decision layer.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Mapping, TypeVar

from networking_dvs_fabric import ownership
from networking_dvs_fabric.security.model import OPEN_POLICY, PortGroupPolicy
from networking_dvs_fabric.vcenter import errors, naming
from networking_dvs_fabric.vcenter.dvs_mtu import MTU_RETRY_HOLDOFF, DVSMtu, DVSMtuNotRaised
from networking_dvs_fabric.vcenter.inventory import Inventory, InventoryKeeper, load_inventory
from networking_dvs_fabric.vcenter.pg_cache import PortGroupCache
from networking_dvs_fabric.vcenter.portgroups import PortGroup, PortGroupManager
from networking_dvs_fabric.vcenter.session import VCenterSession

LOG = logging.getLogger(__name__)
T = TypeVar("T")
LOCK_STRIPES = 64


@dataclasses.dataclass(frozen=True)
class PortGroupBinding:
    """What Nova's VMware driver needs to plug a VIF (``vif_details``)."""

    dvs_uuid: str
    pg_key: str
    pg_name: str
    vlan: int


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    datacenter: str
    dvs_mappings: Mapping[str, str]          # physical_network -> DVS name
    host_mappings: Mapping[str, str]         # binding host -> cluster name
    name_format: str = naming.DEFAULT_FORMAT
    inventory_max_age: float = 300.0
    unreachable_holdoff: float = 5.0
    max_port_groups: int = 9000     # ours, on this vCenter ([ml2_vsphere] max_port_groups)
    max_filter_rules: int = 1000    # in one port group's filter ([ml2_vsphere] ...)


__all__ = ["BackendSettings", "DVSMtuNotRaised", "MTU_RETRY_HOLDOFF", "PortGroupBinding",
           "VSphereBackend"]


class VSphereBackend(DVSMtu):
    def __init__(self, settings: BackendSettings,
                 session_factory: Callable[[], VCenterSession],
                 deployment: Callable[[], str | None] = lambda: None) -> None:
        self.settings = settings
        # This deployment's id (``db/deployment.py``), read when first needed: it lives
        # in Neutron's database, which may not be usable yet when the driver starts.
        self.deployment = deployment
        # One login for everything this backend does; the port group watch (and the
        # vCenter watcher) use channels of it (``VCenterSession.channel``).
        self.session = session_factory()
        self._inventories = InventoryKeeper(
            lambda: load_inventory(self.session, settings.datacenter,
                                   set(settings.dvs_mappings.values()),
                                   set(settings.host_mappings.values())),
            settings.inventory_max_age)
        self._cache: PortGroupCache | None = None
        # Striped: a fixed set of locks, so a long-lived API worker does not keep one
        # lock per network it ever bound.
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._state_lock = threading.RLock()
        self._down_until = 0.0
        self._down_reason = ""
        self._mtu_failed: dict[str, tuple[float, int, str]] = {}   # DVS -> until, MTU, why

    # -- start-up -------------------------------------------------------------
    def start(self, watch: bool = True) -> None:
        """Check the configuration against vCenter; missing objects stop the driver.

        vCenter being unreachable, refusing the login or presenting a certificate
        that does not verify at start is logged and retried on the first bind:
        Neutron must come up while vCenter is down or being fixed.
        """
        try:
            self.inventory(refresh=True)
        except errors.VCenterNotFound:
            raise
        except errors.VCenterError as exc:
            LOG.error("vCenter not usable at start (%s); will retry on the first bind", exc)
            return
        if watch:
            self._start_cache()

    def _start_cache(self) -> None:
        with self._state_lock:
            inventory = self._inventory
            if self._cache is None and inventory is not None:
                # The watch's long poll must end well within one request timeout.
                wait = max(1, min(10, int(self.session.config.request_timeout // 2)))
                self._cache = PortGroupCache(self.session.channel,
                                             inventory.datacenter_moid, wait)
                self._cache.start()

    def stop(self) -> None:
        with self._state_lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            cache.stop()
        self.session.close()

    def wait_cache_ready(self, timeout: float = 10.0) -> bool:
        """Start the port group watch if needed and wait for its first full picture."""
        if self._cache is None:
            try:
                self.inventory()
            except errors.VCenterError:
                return False
            self._start_cache()
        return self._cache is not None and self._cache.wait_ready(timeout)

    @property
    def _inventory(self) -> Inventory | None:
        """The last inventory read, if any (no I/O)."""
        return self._inventories.current

    def inventory(self, refresh: bool = False) -> Inventory:
        """The inventory: read from vCenter when there is none yet or ``refresh`` (its
        errors raise); else the last one read, refreshed in the background once older
        than ``inventory_max_age`` (``inventory.InventoryKeeper``)."""
        return self._inventories.get(refresh)

    # -- decisions ------------------------------------------------------------
    def dvs_for(self, physical_network: str | None) -> str | None:
        return self.settings.dvs_mappings.get(physical_network or "")

    def is_candidate_host(self, binding_host: str) -> bool:
        """Cheap, no I/O: could this binding host be a vSphere one at all?"""
        if binding_host in self.settings.host_mappings:
            return True
        return self._inventory is None or binding_host in self._inventory.hosts

    def serves(self, binding_host: str, physical_network: str | None) -> bool:
        """Does the DVS of ``physical_network`` reach ``binding_host``'s ESXi hosts?"""
        dvs_name = self.dvs_for(physical_network)
        if not dvs_name or not binding_host or not self.is_candidate_host(binding_host):
            return False
        inventory = self._fail_fast(self.inventory)
        host_ids = inventory.host_ids(binding_host, self.settings.host_mappings)
        return bool(host_ids & inventory.dvs[dvs_name].host_ids)

    def binding_hosts(self, dvs_name: str) -> set[str]:
        return self.inventory().binding_hosts_of(dvs_name, self.settings.host_mappings)

    # -- port groups ----------------------------------------------------------
    def _manager(self, dvs_name: str) -> PortGroupManager:
        inventory = self.inventory()
        return PortGroupManager(self.session, inventory.dvs[dvs_name],
                                inventory.datacenter_moid, self.deployment())

    def _lock_for(self, dvs_name: str, network_id: str) -> threading.Lock:
        return self._locks[hash((dvs_name, network_id)) % LOCK_STRIPES]

    def port_group_name(self, dvs_name: str, physical_network: str, network_id: str,
                        network_name: str, set_key: str = naming.OPEN_SET) -> str:
        return naming.port_group_name(
            self.settings.name_format, network_name=network_name, network_id=network_id,
            dvs_name=dvs_name, physical_network=physical_network, set_key=set_key)

    def _fail_fast(self, func: Callable[[], T]) -> T:
        """Run a bind-path call; after vCenter was found unreachable, fail at once for a while.

        ML2 tries a failed binding up to ten times in the same request: without this a
        vCenter that hangs would hold an API worker for ten full rounds of timeouts.
        """
        left = self._down_until - time.monotonic()
        if left > 0:
            raise errors.VCenterUnreachable(
                f"{self._down_reason} (not retried for another {left:.1f} s)")
        try:
            return func()
        except errors.VCenterUnreachable as exc:
            self._down_until = time.monotonic() + self.settings.unreachable_holdoff
            self._down_reason = str(exc)
            raise

    def ensure_port_group(self, physical_network: str, network_id: str, network_name: str,
                          vlan: int, set_key: str = naming.OPEN_SET,
                          policy: Callable[[], PortGroupPolicy] | None = None
                          ) -> PortGroupBinding:
        """Make sure the network's port group of ``set_key`` exists on the DVS with ``vlan``.

        ``policy`` (filter, security policy, blocked) is asked for only when the port
        group is made or its VLAN set - vCenter takes both in one spec; keeping an
        existing port group's policy current is the policy worker's
        (``vcenter/policy_worker.py``).  ``policy`` may be left out for the ``open``
        set only (its policy is fixed).
        """
        if policy is None:
            if set_key != naming.OPEN_SET:
                raise ValueError(f"ensure_port_group: set {set_key!r} needs its policy")
            policy = lambda: OPEN_POLICY  # noqa: E731
        wanted = policy
        return self._fail_fast(lambda: self._ensure_port_group(
            physical_network, network_id, network_name, vlan, set_key, wanted))

    def _ensure_port_group(self, physical_network: str, network_id: str, network_name: str,
                           vlan: int, set_key: str,
                           policy: Callable[[], PortGroupPolicy]) -> PortGroupBinding:
        dvs_name = self.settings.dvs_mappings[physical_network]
        dvs = self.inventory().dvs[dvs_name]
        if self._cache is None:
            self._start_cache()
        cache = self._cache
        cached = cache.get(dvs.moid, network_id, set_key) if cache else None
        if cached is not None and cached.vlan == vlan and \
                ownership.owner_of(cached.deployment, self.deployment()) == ownership.OURS:
            return PortGroupBinding(dvs.uuid, cached.key, cached.name, vlan)
        with self._lock_for(dvs_name, network_id):
            manager = self._manager(dvs_name)
            # A ready cache that has no port group for the network is the truth
            # (modulo a concurrent creator, which DuplicateName covers): skip the read.
            if cache is not None and cache.ready:
                pg = cache.get(dvs.moid, network_id, set_key)
                if pg is not None and pg.vlan is None:   # watched, VLAN not known yet
                    pg = manager.read(pg.moid, policy=False)
            else:
                pg = manager.find(network_id=network_id, set_key=set_key, policy=False)
            if pg is None:
                name = self.port_group_name(dvs_name, physical_network, network_id,
                                            network_name, set_key)
                self._check_port_group_count(name)
                wanted = policy()
                try:
                    pg = manager.create(name, network_id, vlan, set_key, wanted)
                except errors.PortGroupNameTaken as exc:
                    # E.g. the same network on a second DVS: names are per datacenter.
                    name = naming.port_group_name(
                        naming.DVS_QUALIFIED_FORMAT, network_name=network_name,
                        network_id=network_id, dvs_name=dvs_name,
                        physical_network=physical_network, set_key=set_key)
                    LOG.info("%s; using %r instead", exc, name)
                    pg = manager.create(name, network_id, vlan, set_key, wanted)
            elif pg.vlan != vlan or manager.owner(pg) != ownership.OURS:
                # A legacy one is adopted here too; its policy is made right with it.
                pg = manager.set_vlan(pg, vlan, policy())
            if cache is not None:
                cache.remember(dvs.moid, pg)
        return PortGroupBinding(dvs.uuid, pg.key, pg.name, vlan)

    def port_group_count(self) -> int | None:
        """How many port groups of the project the datacenter has (None: cache not ready)."""
        cache = self._cache
        return cache.count() if cache is not None and cache.ready else None

    def _check_port_group_count(self, name: str) -> None:
        count = self.port_group_count()
        limit = self.settings.max_port_groups
        if count is not None and count >= limit:
            raise errors.PortGroupLimit(
                f"not creating port group {name!r}: the datacenter already has {count} "
                f"port groups of networking-dvs-fabric, [ml2_vsphere] max_port_groups is "
                f"{limit} (vSphere allows 10,000 per vCenter); free some or raise it")

    def cached_port_group(self, physical_network: str, network_id: str,
                          set_key: str = naming.OPEN_SET) -> PortGroup | None:
        """What the watched cache holds for the network (None: nothing, or cache not ready)."""
        dvs = self.inventory().dvs[self.settings.dvs_mappings[physical_network]]
        return self._cache.get(dvs.moid, network_id, set_key) \
            if self._cache is not None else None

    def cached_port_groups(self, dvs_name: str, network_id: str) -> list[PortGroup] | None:
        """The network's port groups on the DVS as the cache has them; None: cache not ready."""
        cache = self._cache
        if cache is None or not cache.ready:
            return None
        return cache.of_network(self.inventory().dvs[dvs_name].moid, network_id)

    def _of_network(self, manager: PortGroupManager, network_id: str) -> list[PortGroup]:
        """The network's port groups on the manager's DVS, ours or legacy, light: from
        the watched cache when it is ready (no I/O), else one read of the DVS."""
        cached = self.cached_port_groups(manager.dvs.name, network_id)
        if cached is None:
            return manager.of_network(network_id)
        return [pg for pg in cached if manager.owner(pg) != ownership.FOREIGN]

    def forget_port_group(self, physical_network: str, network_id: str, key: str) -> None:
        """Drop the cached port group ``key`` of the network: another process deleted it
        and the watch has not said so yet."""
        cache = self._cache
        if cache is None:
            return
        for cached in cache.of_network(
                self.inventory().dvs[self.settings.dvs_mappings[physical_network]].moid,
                network_id):
            if cached.key == key:
                cache.forget(cached)

    def network_port_groups(self, dvs_name: str, network_id: str,
                            full: bool = True) -> list[PortGroup]:
        """The network's port groups on the DVS; ``full``: each read whole (VLAN and
        policy), else names and markers only (one read for the DVS)."""
        manager = self._manager(dvs_name)
        light = manager.of_network(network_id)
        return [manager.read(pg.moid) for pg in light] if full else light

    def read_port_group(self, dvs_name: str, pg: PortGroup, policy: bool = True) -> PortGroup:
        """``pg`` read again: VLAN, config version, marker and (``policy``) its policy."""
        return self._manager(dvs_name).read(pg.moid, policy)

    def set_policy(self, dvs_name: str, pg: PortGroup, policy: PortGroupPolicy) -> PortGroup:
        """Write ``policy`` into our port group ``pg`` (read whole), its VLAN kept.

        Locked per port group, not per network: the policy worker writes the port
        groups of one network side by side.
        """
        with self._lock_for(dvs_name, pg.moid):
            manager = self._manager(dvs_name)
            if manager.owner(pg) != ownership.OURS:
                raise errors.PortGroupNotOwned(f"port group {pg.name!r} is not ours; its "
                                               "filter is left alone")
            done = manager.set_vlan(pg, pg.vlan if pg.vlan is not None else 0, policy)
        if self._cache is not None:
            self._cache.remember(self.inventory().dvs[dvs_name].moid, done)
        return done

    def port_groups(self, dvs_name: str) -> list[PortGroup]:
        """Every port group on the DVS, ours (``network_id`` set) and others."""
        return self._manager(dvs_name).list(full=False)

    def owned_port_groups(self, dvs_name: str, full: bool = False) -> list[PortGroup]:
        """This deployment's port groups on the DVS (``full``: with their VLANs)."""
        return self.marked_port_groups(dvs_name, full)[ownership.OURS]

    def marked_port_groups(self, dvs_name: str,
                           full: bool = False) -> dict[str, list[PortGroup]]:
        """The DVS's port groups with the project's marker, by ``ownership`` kind."""
        manager = self._manager(dvs_name)
        found: dict[str, list[PortGroup]] = {ownership.OURS: [], ownership.LEGACY: [],
                                             ownership.FOREIGN: []}
        for pg in manager.list(full=full):
            owner = manager.owner(pg)
            if owner is not None:
                found[owner].append(pg)
        return found

    def adopt_port_group(self, dvs_name: str, pg: PortGroup) -> PortGroup:
        """Give a legacy port group (of a network this Neutron has) our deployment id."""
        with self._lock_for(dvs_name, pg.network_id or ""):
            adopted = self._manager(dvs_name).adopt(pg)
        if self._cache is not None:
            self._cache.remember(self.inventory().dvs[dvs_name].moid, adopted)
        return adopted

    def release_port_group(self, dvs_name: str, network_id: str,
                           still_used: Callable[..., bool],
                           on_deleted: Callable[[PortGroup], None] | None = None,
                           on_kept: Callable[[PortGroup], None] | None = None) -> bool:
        """Delete each port group of the network on ``dvs_name`` not ``still_used(pg)``.

        ``still_used()`` (no argument) asks whether the network needs any port group
        there at all.  Returns False when one that should go was kept: VMs Neutron does
        not know still use it (PortGroupInUse is logged and the periodic sweep
        retries), or the network still needs some.  ``on_deleted`` hears each port
        group deleted, ``on_kept`` each one VMs kept (``vcenter/usage.release_if_unused``).
        """
        with self._lock_for(dvs_name, network_id):
            needed = still_used()
            manager = self._manager(dvs_name)
            gone = True
            for pg in self._of_network(manager, network_id):   # deleting: no VLAN needed
                if needed and still_used(pg):
                    continue
                try:
                    manager.delete(pg)
                except errors.PortGroupInUse as exc:
                    LOG.warning("%s", exc)
                    gone = False
                    if on_kept is not None:
                        on_kept(pg)
                    continue
                if on_deleted is not None:
                    on_deleted(pg)
                if self._cache is not None:
                    self._cache.forget(pg)
            return gone and not needed
