"""Port groups of one DVS: read, create, re-VLAN and delete - only our own.

Every write is guarded by the ownership marker (``naming.marker``): a port group
without it, or with another deployment's id in it (``ownership.py``), is never
changed or deleted.  Creation tolerates a concurrent
creator (``DuplicateName``): the loser adopts the winner's port group.

Creating one and deleting one cost a fixed number of vCenter calls, however many
port groups the DVS has (and, on vCenter, VMs the datacenter has: ``pg_users``).
"""
from __future__ import annotations

import dataclasses
import logging
import types
from typing import Any

from pyVmomi import vim, vmodl

from networking_dvs_fabric import ownership
from networking_dvs_fabric.security import vim_spec
from networking_dvs_fabric.security.model import OPEN_POLICY, PortGroupPolicy, fingerprint
from networking_dvs_fabric.vcenter import errors, naming, pg_users, raw_soap
from networking_dvs_fabric.vcenter.inventory import DVSInfo
from networking_dvs_fabric.vcenter.session import VCenterSession, collect

LOG = logging.getLogger(__name__)

LIGHT_PROPERTIES = ("name", "key", "config.description")
# Of the port settings only what the project writes and reads back: the whole
# defaultPortConfig also carries teaming, LACP, shaping, IPFIX... policies, most of a
# port group's XML (pyVmomi parses ~3 ms of it a port group; the audit reads them all).
SETTING = "config.defaultPortConfig"
SETTING_PARTS = ("vlan", "securityPolicy", "filterPolicy", "blocked")
PG_PROPERTIES = ("name", "key", "config.description", "config.configVersion",
                 "config.distributedVirtualSwitch",
                 *(f"{SETTING}.{part}" for part in SETTING_PARTS))
# Enough to rewrite a port group's settings (VLAN and config version), without its
# filter: a filter of a few hundred rules costs tens of ms of CPU to parse.
WRITE_PROPERTIES = ("name", "key", "config.description", "config.defaultPortConfig.vlan",
                    "config.configVersion")
# A ``VCenterSession.traits`` key: vCenter has no CreateDVPortgroup_Task (govmomi's
# simulator 0.24.2 has not).
NO_CREATE_DVPG = "no CreateDVPortgroup_Task"


@dataclasses.dataclass(frozen=True)
class PortGroup:
    key: str
    name: str
    moid: str
    vlan: int | None
    network_id: str | None      # from the ownership marker; None: not the project's
    config_version: str | None = None
    deployment: str | None = None   # the marker's deployment id; None: legacy or unmarked
    set_key: str = naming.OPEN_SET  # which of its network's port groups (``security/model``)
    policy: PortGroupPolicy | None = None   # filter, security policy, blocked: full reads only
    fingerprint: str | None = None  # of the policy last written by us (in the marker)

    @property
    def owned(self) -> bool:
        return self.network_id is not None


def port_group_from_props(obj: Any, props: dict[str, Any],
                          with_policy: bool = False) -> PortGroup:
    """``with_policy``: ``props`` were read with ``PG_PROPERTIES``: a setting they lack
    is unset in vCenter (its default), unless they lack all three policy settings (the
    project always writes them; vCenter left them out, a fault or no permission): the
    policy is then not known (None), as it is without ``with_policy``."""
    vlan = policy = None
    spec = props.get(f"{SETTING}.vlan")
    if vim_spec.is_a(spec, vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec) and \
            spec.vlanId is not None:
        vlan = int(spec.vlanId)
    if with_policy and any(f"{SETTING}.{part}" in props for part in SETTING_PARTS[1:]):
        policy = vim_spec.policy_from_setting(types.SimpleNamespace(
            **{part: props.get(f"{SETTING}.{part}") for part in SETTING_PARTS}))
    description = props.get("config.description")
    network_id, deployment = naming.parse_marker(description) or (None, None)
    moid = obj if isinstance(obj, str) else obj._moId
    return PortGroup(key=props.get("key") or moid, name=props.get("name", ""),
                     moid=moid, vlan=vlan, network_id=network_id,
                     config_version=props.get("config.configVersion"), deployment=deployment,
                     set_key=naming.parse_set(description), policy=policy,
                     fingerprint=naming.parse_policy(description))


def _spec(name: str, network_id: str, vlan: int, config_version: str | None = None,
          deployment: str | None = None, set_key: str = naming.OPEN_SET,
          policy: PortGroupPolicy = OPEN_POLICY) -> Any:
    # vCenter replaces the whole defaultPortConfig: VLAN and policy go together.
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, description=naming.marker(network_id, deployment, set_key,
                                             fingerprint(policy)),
        type="earlyBinding", numPorts=8, autoExpand=True,
        defaultPortConfig=vim_spec.port_setting(policy, vlan))
    if config_version is not None:
        spec.configVersion = config_version
    return spec


class PortGroupManager:
    """vCenter operations on the port groups of one DVS."""

    def __init__(self, session: VCenterSession, dvs: DVSInfo,
                 datacenter_moid: str | None = None, deployment: str | None = None) -> None:
        self.session = session
        self.dvs = dvs
        self.datacenter_moid = datacenter_moid
        self.deployment = deployment

    def owner(self, pg: PortGroup) -> str | None:
        """``ownership.OURS``/``LEGACY``/``FOREIGN`` for a marked port group, else None."""
        if not pg.owned:
            return None
        return ownership.owner_of(pg.deployment, self.deployment)

    def _dvs(self, si: Any) -> Any:
        return vim.DistributedVirtualSwitch(self.dvs.moid, si._stub)

    def _pg(self, si: Any, moid: str) -> Any:
        return vim.dvs.DistributedVirtualPortgroup(moid, si._stub)

    def list(self, full: bool = False) -> list[PortGroup]:
        """Every port group of this DVS, in one PropertyCollector read.

        Light by default - only name, key and description (which holds the ownership
        marker): the port settings are the bulk of a port group's XML, and a DVS may
        carry thousands; ``vlan`` is then None.  ``full`` reads the VLANs and policies
        too (audit).  Each port group is made from its elements as the answer is parsed
        (``raw_soap.retrieve_each``): 4,000 port groups with a filter each, parsed whole
        first, held ~150 MB at once - in the periodic worker the start's peak, and the
        heap it left fragmented kept the worker at 530 MB.
        """
        properties = PG_PROPERTIES if full else LIGHT_PROPERTIES

        def read(si: Any) -> list[PortGroup]:
            pcq = vmodl.query.PropertyCollector
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=self._dvs(si), skip=True, selectSet=[
                    pcq.TraversalSpec(name="pgs", path="portgroup", skip=False,
                                      type=vim.DistributedVirtualSwitch)])],
                propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                          pathSet=list(properties))])
            # Parsed by ElementTree, not pyVmomi: ~3.5 ms a port group with a filter.
            return [port_group_from_props(moid, raw_soap.readable(props), with_policy=full)
                    for moid, props in raw_soap.retrieve_each(si.content.propertyCollector,
                                                              [spec])]
        # On a channel of its own (another connection of the same login): at 6,000 port
        # groups the listing streams for ~10 s, and on the shared handle every other
        # call of the process - the fabric worker's housekeeping among them - queued
        # behind it (bench23: a vMotion reached the leaves 7.5 s late).
        return self.session.channel().invoke(read,
                                             f"list port groups of DVS {self.dvs.name}")

    def read(self, moid: str, policy: bool = True) -> PortGroup:
        """One port group with its VLAN and config version (and ``policy``: its filter,
        security policy and blocked flag)."""
        return port_group_from_props(*self._read(
            moid, PG_PROPERTIES if policy else WRITE_PROPERTIES), with_policy=policy)

    def _read(self, moid: str, properties: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
        def read_one(si: Any) -> tuple[Any, dict[str, Any]]:
            pcq = vmodl.query.PropertyCollector
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=self._pg(si, moid), skip=False)],
                propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                          pathSet=list(properties))])
            found = collect(si.content.propertyCollector, [spec])
            if not found:
                raise errors.VCenterNotFound(f"port group {moid} not found")
            return found[0]
        return self.session.invoke(read_one, f"read port group {moid}")

    def find(self, network_id: str | None = None, name: str | None = None,
             full: bool = True, set_key: str = naming.OPEN_SET,
             policy: bool = True) -> PortGroup | None:
        """Ours (or legacy) for ``network_id`` and ``set_key`` (by marker), else any
        named ``name``.

        ``full`` reads the match's VLAN and config version too (one more round trip),
        and with ``policy`` its filter, security policy and blocked flag.
        """
        entries = self.list()
        match = next((pg for pg in entries
                      if network_id is not None and pg.network_id == network_id
                      and pg.set_key == set_key
                      and self.owner(pg) != ownership.FOREIGN), None)
        if match is None:
            match = next((pg for pg in entries if name is not None and pg.name == name), None)
        if match is None or not full:
            return match
        return self.read(match.moid, policy)

    def of_network(self, network_id: str) -> list[PortGroup]:
        """Every port group of the network on this DVS (each set's), ours or legacy."""
        return [pg for pg in self.list() if pg.network_id == network_id
                and self.owner(pg) != ownership.FOREIGN]

    def create(self, name: str, network_id: str, vlan: int, set_key: str = naming.OPEN_SET,
               policy: PortGroupPolicy = OPEN_POLICY) -> PortGroup:
        """Create our port group, or adopt ours if a concurrent creator won the race.

        Reads only the port group made (or the winner's): never the DVS's list.
        """
        what = f"create port group {name!r} (VLAN {vlan}) on DVS {self.dvs.name}"
        spec = _spec(name, network_id, vlan, deployment=self.deployment, set_key=set_key,
                     policy=policy)
        try:
            moid = self._create(spec, what)
        except errors.VCenterError as exc:
            if not exc.is_fault(vim.fault.DuplicateName):
                raise
            LOG.info("Port group %(name)s already exists on DVS %(dvs)s (created "
                     "concurrently); adopting it", {"name": name, "dvs": self.dvs.name})
            return self._adopt_winner(name, network_id, vlan, set_key, policy, what,
                                      getattr(exc.fault, "object", None))
        LOG.info("Created port group %(name)s VLAN %(vlan)s on DVS %(dvs)s",
                 {"name": name, "vlan": vlan, "dvs": self.dvs.name})
        if moid is None:
            raise errors.VCenterNotFound(f"{what}: port group missing right after creation")
        # Just made from our own spec: only its key and config version were unknown.
        made = self.read(moid, policy=False)
        return dataclasses.replace(made, vlan=vlan, policy=policy,
                                   fingerprint=fingerprint(policy))

    def _create(self, spec: Any, what: str) -> str | None:
        """Run the create task; the new port group's moid (None: not found by name)."""
        traits = self.session.traits
        if not traits.get(NO_CREATE_DVPG):
            try:
                task = self.session.invoke(
                    lambda si: self._dvs(si).CreateDVPortgroup_Task(spec), what)
                made = getattr(self.session.wait_for_task(task, what), "_moId", None)
                return made if made is not None else self._named(spec.name)
            except errors.VCenterError as exc:
                if not exc.is_fault(vmodl.fault.MethodNotFound):
                    raise
                LOG.info("vCenter %s has no CreateDVPortgroup_Task; creating port groups "
                         "with AddDVPortgroup_Task", self.session.config.url)
                traits[NO_CREATE_DVPG] = True
        # AddDVPortgroup_Task tells nothing of what it made: look the name up.
        task = self.session.invoke(lambda si: self._dvs(si).AddDVPortgroup_Task([spec]), what)
        self.session.wait_for_task(task, what)
        return self._named(spec.name)

    def _named(self, name: str) -> str | None:
        """The moid of the port group named ``name`` beside the DVS (None: none)."""
        def find(si: Any) -> str | None:
            folder = self.dvs.folder_moid or self._dvs(si).parent._moId
            found = si.content.searchIndex.FindChild(vim.Folder(folder, si._stub), name)
            return found._moId if isinstance(found, vim.dvs.DistributedVirtualPortgroup) \
                else None
        return self.session.invoke(find, f"find port group {name!r} beside DVS "
                                         f"{self.dvs.name}")

    def _adopt_winner(self, name: str, network_id: str, vlan: int, set_key: str,
                      policy: PortGroupPolicy, what: str, holder: Any) -> PortGroup:
        """The port group that holds ``name`` (``holder``, from the fault), ours: made
        right (VLAN, policy, our deployment id) and returned."""
        moid = holder._moId if isinstance(holder, vim.dvs.DistributedVirtualPortgroup) \
            else None if holder is not None else self._named(name)
        obj: Any = None
        props: dict[str, Any] = {}
        if moid is not None:
            try:
                obj, props = self._read(moid, PG_PROPERTIES)
            except errors.VCenterNotFound:      # deleted since: not on this DVS any more
                moid = None
        dvs = props.get("config.distributedVirtualSwitch")
        if moid is None or getattr(dvs, "_moId", dvs) != self.dvs.moid:
            raise errors.PortGroupNameTaken(
                f"{what}: the name is taken elsewhere in the datacenter")
        existing = port_group_from_props(obj, props, with_policy=True)
        if existing.network_id != network_id or existing.set_key != set_key or \
                self.owner(existing) == ownership.FOREIGN:
            raise errors.PortGroupNotOwned(
                f"port group {name!r} on DVS {self.dvs.name} exists but was not created by "
                "networking-dvs-fabric (no ownership marker); it is left alone - rename it or "
                "change port_group_name_format")
        if existing.vlan != vlan or self.owner(existing) != ownership.OURS or \
                existing.policy is None or not existing.policy.same_as(policy):
            return self.set_vlan(existing, vlan, policy)
        return existing

    def set_vlan(self, pg: PortGroup, vlan: int,
                 policy: PortGroupPolicy | None = None) -> PortGroup:
        """Set the VLAN (and ``policy``; None: the one ``pg`` was read with, or the open
        one); the marker is written with our deployment id (adopts a legacy one)."""
        owner = self.owner(pg)
        if owner not in (ownership.OURS, ownership.LEGACY):
            raise errors.PortGroupNotOwned(
                f"port group {pg.name!r} is not ours"
                f"{' (deployment ' + str(pg.deployment) + ')' if owner else ''}; not changing it")
        if policy is None:
            policy = pg.policy or self.read(pg.moid).policy or OPEN_POLICY
        what = (f"set VLAN {vlan} on port group {pg.name!r} (was {pg.vlan})"
                if pg.vlan != vlan else
                f"write the filter ({len(policy.rules)} rules) and security policy of "
                f"port group {pg.name!r}")
        task = self.session.invoke(
            lambda si: self._pg(si, pg.moid).ReconfigureDVPortgroup_Task(
                _spec(pg.name, pg.network_id or "", vlan, pg.config_version,
                      self.deployment, pg.set_key, policy)), what)
        self.session.wait_for_task(task, what)
        if owner == ownership.LEGACY and self.deployment is not None:
            LOG.info("Port group %(name)s (network %(net)s, made by an earlier version) "
                     "adopted by deployment %(dep)s", {"name": pg.name, "net": pg.network_id,
                                                      "dep": self.deployment})
        if pg.vlan != vlan:
            LOG.info("Port group %(name)s: VLAN %(old)s -> %(new)s",
                     {"name": pg.name, "old": pg.vlan, "new": vlan})
        return dataclasses.replace(pg, vlan=vlan, deployment=self.deployment, policy=policy,
                                   fingerprint=fingerprint(policy))

    def adopt(self, pg: PortGroup) -> PortGroup:
        """Write our deployment id into a legacy port group's marker (its VLAN kept)."""
        full = self.read(pg.moid)
        if full.vlan is None:       # never one of ours: they are made with a VLAN
            raise errors.PortGroupNotOwned(f"port group {pg.name!r} has no VLAN of its own; "
                                           "not adopting it")
        return self.set_vlan(full, full.vlan)

    def vms_using(self, pg: PortGroup) -> list[str] | None:
        """Names of the VMs with a NIC on ``pg``; None: the port group is gone
        (``pg_users.vms_on``)."""
        return pg_users.vms_on(self.session, pg.moid, pg.name, self.datacenter_moid)

    def delete(self, pg: PortGroup) -> None:
        """Delete our port group; raise PortGroupInUse if VMs still use it."""
        if not pg.owned:
            raise errors.PortGroupNotOwned(
                f"port group {pg.name!r} has no networking-dvs-fabric marker; not deleting it")
        if self.owner(pg) == ownership.FOREIGN:
            raise errors.PortGroupNotOwned(
                f"port group {pg.name!r} belongs to deployment {pg.deployment}; not deleting it")
        what = f"delete port group {pg.name!r} from DVS {self.dvs.name}"
        # Outside the try: a VM deleted while its name is read (ManagedObjectNotFound)
        # must not read as "the port group is already gone".
        users = self.vms_using(pg)
        if users is None:       # e.g. a cached port group another process deleted
            LOG.info("Port group %s was already gone", pg.name)
            return
        if users:
            raise errors.PortGroupInUse(
                f"port group {pg.name!r} on DVS {self.dvs.name} is still used by VM(s) "
                f"{', '.join(users)}; kept, will retry")
        try:
            task = self.session.invoke(lambda si: self._pg(si, pg.moid).Destroy_Task(), what)
            self.session.wait_for_task(task, what)
        except errors.VCenterNotFound:
            LOG.info("Port group %s was already gone", pg.name)
            return
        except errors.VCenterError as exc:
            if not exc.is_fault(vim.fault.ResourceInUse):
                raise
            raise errors.PortGroupInUse(f"{what}: vCenter says it is in use; kept, will retry") \
                from exc
        LOG.info("Deleted port group %(name)s from DVS %(dvs)s",
                 {"name": pg.name, "dvs": self.dvs.name})
