"""A cache of our port groups per (DVS, network), kept true by a PropertyCollector watch.

Binding the second port of a network must not cost a vCenter round trip, yet
the answer must not go stale when someone deletes or changes the port group
behind our back.  One background thread per process follows every port group of
the datacenter with ``WaitForUpdatesEx`` (its own vCenter session) and applies
the changes.  Until the first full update has arrived, or while the watch is
broken, ``ready`` is false and callers read vCenter directly.

The long poll itself is a raw SOAP call parsed with ElementTree (``soap_watch``):
pyVmomi's parser cost ~1 ms of CPU per update in every API process, under the GIL,
right while the request that caused the update was finishing.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable
from xml.etree import ElementTree

from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter import naming, raw_soap
from networking_dvs_fabric.vcenter.portgroups import (LIGHT_PROPERTIES, PortGroup,
                                                      port_group_from_props)
from networking_dvs_fabric.vcenter.session import VCenterSession
from networking_dvs_fabric.vcenter.soap_watch import (ObjectUpdate, PropertyChange, UpdateSet,
                                                      UpdateWaiter)

LOG = logging.getLogger(__name__)
PROVISIONAL_SECONDS = 3.0
# Of the port settings only the VLAN: the rest (a filter of hundreds of rules) is most
# of a port group's XML, and every process parses every update.  With the VLAN
# watched, a bind after the policy worker rewrote its port group's filter (a new
# config version) needs no read of vCenter.
VLAN_PROPERTY = "config.defaultPortConfig.vlan"
WATCH_PROPERTIES = LIGHT_PROPERTIES + ("config.configVersion",
                                       "config.distributedVirtualSwitch", VLAN_PROPERTY)
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
DVS_PROPERTY = "config.distributedVirtualSwitch"
# A port group reported without its switch is read again (see ``_complete``): this
# many times, this far apart, before it is left out as it was reported.
COMPLETE_TRIES = 3
COMPLETE_DELAY = 0.2


def _vlan_spec(val: Any) -> Any:
    """A watched ``vlan`` (a ``VmwareDistributedVirtualSwitchVlanIdSpec`` element) as
    ``port_group_from_props`` reads it; a trunk or private VLAN: None (not ours)."""
    if not isinstance(val, ElementTree.Element) or \
            not str(val.get(_XSI_TYPE, "")).endswith("VlanIdSpec"):
        return None
    text = next((child.text for child in val if child.tag.rsplit("}", 1)[-1] == "vlanId"),
                None)
    try:
        return vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(vlanId=int(text or ""))
    except ValueError:
        return None


_Bucket = dict[str, tuple[int, PortGroup]]     # moid -> (order of arrival, pg)


class _Index:
    """Port groups by moid and by (DVS, network): a lookup reads one bucket.

    Each entry keeps the order it arrived in (kept while it stays), so the first
    of a bucket is the one a walk over all entries in arrival order meets first.
    """

    def __init__(self) -> None:
        self.by_moid: dict[str, tuple[str, PortGroup, int]] = {}  # moid -> (dvs, pg, order)
        self._buckets: dict[tuple[str, str | None], _Bucket] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self.by_moid)

    def __contains__(self, moid: str) -> bool:
        return moid in self.by_moid

    def pg(self, moid: str) -> PortGroup | None:
        entry = self.by_moid.get(moid)
        return entry[1] if entry else None

    def put(self, moid: str, dvs_moid: str, pg: PortGroup) -> None:
        old = self.by_moid.get(moid)
        if old is None:
            self._arrivals += 1
            order = self._arrivals
        else:
            order = old[2]
            self._unbucket(moid, old[0], old[1])
        self.by_moid[moid] = (dvs_moid, pg, order)
        self._buckets.setdefault((dvs_moid, pg.network_id), {})[moid] = (order, pg)

    def pop(self, moid: str) -> tuple[str, PortGroup] | None:
        old = self.by_moid.pop(moid, None)
        if old is None:
            return None
        self._unbucket(moid, old[0], old[1])
        return old[0], old[1]

    def clear(self) -> None:
        self.by_moid.clear()
        self._buckets.clear()

    def bucket(self, dvs_moid: str, network_id: str) -> list[PortGroup]:
        """The network's port groups on the DVS, in order of arrival."""
        found = self._buckets.get((dvs_moid, network_id))
        return [pg for _, pg in sorted(found.values(), key=lambda e: e[0])] if found else []

    def _unbucket(self, moid: str, dvs_moid: str, pg: PortGroup) -> None:
        key = (dvs_moid, pg.network_id)
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.pop(moid, None)
            if not bucket:
                del self._buckets[key]


class _Ref:
    """What ``port_group_from_props`` reads of a managed object: its moid."""

    __slots__ = ("_moId",)

    def __init__(self, moid: str) -> None:
        self._moId = moid


class PortGroupCache:
    def __init__(self, session_factory: Callable[[], VCenterSession],
                 datacenter_moid: str, wait_seconds: int = 10) -> None:
        self._session_factory = session_factory
        self._datacenter_moid = datacenter_moid
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._by_moid = _Index()        # followed by the watch
        # Just created by us, not yet reported by the watch, until a deadline.
        self._provisional = _Index()
        self._until: dict[str, float] = {}      # moid -> deadline (provisional)
        self._next_expiry = float("inf")        # no deadline of _until is earlier
        self._props: dict[str, dict[str, Any]] = {}
        self._incomplete: set[str] = set()      # reported without their switch
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pc: Any = None    # the watch's PropertyCollector, to cancel its wait
        self._watch_si: Any = None  # the login the watch started with

    # -- reading --------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def get(self, dvs_moid: str, network_id: str,
            set_key: str = naming.OPEN_SET) -> PortGroup | None:
        """The network's port group of ``set_key`` on the DVS, or None."""
        found = [pg for pg in self.of_network(dvs_moid, network_id) if pg.set_key == set_key]
        return found[0] if found else None

    def of_network(self, dvs_moid: str, network_id: str) -> list[PortGroup]:
        """The network's port groups on the DVS (every set's); [] when not ready.

        One per set: the first to arrive, the watched before the provisional ones.
        Reads the (DVS, network) entries only, however many port groups are followed.
        """
        if not self._ready.is_set():
            return []
        found: dict[str, PortGroup] = {}
        with self._lock:
            self._expire(time.monotonic())
            for pg in self._by_moid.bucket(dvs_moid, network_id) + \
                    self._provisional.bucket(dvs_moid, network_id):
                found.setdefault(pg.set_key, pg)
        return list(found.values())

    def _expire(self, now: float) -> None:
        """Drop provisional entries past their deadline (under the lock)."""
        if now <= self._next_expiry:
            return
        for moid, until in list(self._until.items()):
            if until < now:
                self._drop_provisional(moid)
        self._next_expiry = min(self._until.values(), default=float("inf"))

    def _drop_provisional(self, moid: str) -> PortGroup | None:
        self._until.pop(moid, None)
        old = self._provisional.pop(moid)
        return old[1] if old else None

    def count(self) -> int:
        """Port groups with the project's marker (any deployment's) being followed."""
        with self._lock:
            return len(self._by_moid) + len(self._provisional)

    def remember(self, dvs_moid: str, pg: PortGroup) -> None:
        """Record what we just created or changed.

        A port group the watch follows is updated in place.  One it has not reported
        yet is held provisionally for a few seconds only: created and deleted between
        two updates, vCenter would report neither, and a permanent entry would outlive
        its port group.  The watch's report of it replaces the provisional entry.
        """
        with self._lock:
            if pg.moid in self._by_moid:
                self._by_moid.put(pg.moid, dvs_moid, pg)
            else:
                until = time.monotonic() + PROVISIONAL_SECONDS
                self._provisional.put(pg.moid, dvs_moid, pg)
                self._until[pg.moid] = until
                self._next_expiry = min(self._next_expiry, until)

    def forget(self, pg: PortGroup) -> None:
        with self._lock:
            self._by_moid.pop(pg.moid)
            self._drop_provisional(pg.moid)
            self._props.pop(pg.moid, None)

    # -- the watch ------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dvs-pg-cache",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        # Cancel the pending WaitForUpdatesEx rather than sit out its maxWaitSeconds;
        # repeated, as the watch may be between two waits when the first cancel lands.
        deadline = time.monotonic() + self._wait_seconds + 5
        while thread.is_alive() and time.monotonic() < deadline:
            self._cancel_wait()
            thread.join(timeout=0.2)

    def _cancel_wait(self) -> None:
        pc = self._pc
        if pc is None:
            return
        try:
            pc.CancelWaitForUpdates()
        except Exception:  # noqa: BLE001 - best effort: the wait times out anyway
            pass

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            session = self._session_factory()
            try:
                self._watch(session)
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 - any failure: resync from scratch
                if self._stop.is_set():
                    break
                if isinstance(exc, vim.fault.NotAuthenticated) and self._watch_si is not None:
                    # The watch talks SOAP itself (not through ``invoke``): its session,
                    # a channel of the process's login, is told the login is gone.
                    session.drop_login(self._watch_si)
                LOG.warning("Port group watch interrupted (%s); cache off, resync in "
                            "%.0f s", exc, backoff)
            finally:
                self._ready.clear()
                session.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _watch(self, session: VCenterSession) -> None:
        self._watch_si = None
        si = self._watch_si = session.si
        content = si.content
        dc = vim.Datacenter(self._datacenter_moid, si._stub)
        view = content.viewManager.CreateContainerView(
            dc, [vim.dvs.DistributedVirtualPortgroup], True)
        pc = content.propertyCollector.CreatePropertyCollector()
        self._pc = pc
        try:
            pcq = vmodl.query.PropertyCollector
            pc.CreateFilter(pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=view, skip=True, selectSet=[pcq.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
                propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                          pathSet=list(WATCH_PROPERTIES))]),
                partialUpdates=True)
            waiter = UpdateWaiter(pc)
            version = ""
            with self._lock:
                self._by_moid.clear()
                self._props.clear()
                self._incomplete.clear()
            while not self._stop.is_set():
                update = waiter.wait(version, self._wait_seconds)
                if update is None:
                    continue
                self._apply(update)
                self._complete(si)
                version = update.version
                if not update.truncated:
                    self._ready.set()
        finally:
            self._pc = None
            try:
                pc.Destroy()
                view.Destroy()
            except Exception:  # noqa: BLE001 - session may be gone already
                pass

    def _apply(self, update: UpdateSet) -> None:
        """Apply one update set (plain values: moids, text; see ``soap_watch``)."""
        with self._lock:
            for change in update.objects:
                moid = change.moid
                known = self._drop_provisional(moid)   # the watch has it now
                before = known if known is not None else self._by_moid.pg(moid)
                if change.kind == "leave":
                    self._props.pop(moid, None)
                    self._by_moid.pop(moid)
                    self._incomplete.discard(moid)
                    continue
                props = self._props.setdefault(moid, {})
                for prop in change.changes:
                    if prop.op in ("remove", "indirectRemove"):
                        props.pop(prop.name, None)
                    elif prop.name == VLAN_PROPERTY:
                        props[prop.name] = _vlan_spec(prop.val)
                    elif prop.name.startswith(VLAN_PROPERTY + "."):
                        # A partial update inside the VLAN spec (vCenter may word a
                        # change so): the VLAN is not known any more; a bind reads it.
                        props[VLAN_PROPERTY] = None
                    else:
                        props[prop.name] = prop.val
                dvs_moid = props.get("config.distributedVirtualSwitch")   # moid text
                pg = port_group_from_props(_Ref(moid), props)
                if before is not None and before.config_version == pg.config_version:
                    # The watch leaves the (bulky) filter out: keep the policy we know
                    # (and a VLAN, should the watch not have one) while the config
                    # version says nothing changed.
                    pg = dataclasses.replace(pg, vlan=pg.vlan if VLAN_PROPERTY in props
                                             else before.vlan, policy=before.policy)
                if pg.owned and dvs_moid is not None:
                    self._by_moid.put(moid, dvs_moid, pg)
                else:
                    self._by_moid.pop(moid)
                if dvs_moid is None:
                    self._incomplete.add(moid)
                else:
                    self._incomplete.discard(moid)

    def _complete(self, si: Any) -> None:
        """Read again the port groups last reported without their switch.

        Every port group has one, so such a report is incomplete: govmomi's simulator
        announces a new port group before it has set its configuration (description,
        switch, VLAN) and never reports those afterwards, so the watch would follow
        it, unmarked, for good (a port group of ours the cache does not know: a bind
        creates it again, a release finds nothing to delete).  One direct read of each
        (a few tries, as the creator may still be filling it in), applied as a change.
        """
        with self._lock:
            moids, self._incomplete = sorted(self._incomplete), set()
        pcq = vmodl.query.PropertyCollector
        for attempt in range(COMPLETE_TRIES):
            if not moids or self._stop.is_set():
                return
            if attempt:
                self._stop.wait(COMPLETE_DELAY)
            for moid in moids:
                spec = pcq.FilterSpec(
                    objectSet=[pcq.ObjectSpec(
                        obj=vim.dvs.DistributedVirtualPortgroup(moid, si._stub))],
                    propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                              pathSet=list(WATCH_PROPERTIES))])
                try:
                    found = raw_soap.retrieve(si.content.propertyCollector, [spec])
                except vmodl.fault.ManagedObjectNotFound:
                    found = []           # deleted since: its "leave" is on its way
                self._apply(UpdateSet(version="", truncated=False, objects=tuple(
                    ObjectUpdate(found_moid, "modify", tuple(
                        PropertyChange(name, "assign", val) for name, val in props.items()))
                    for found_moid, props in found)))
            with self._lock:
                moids, self._incomplete = sorted(self._incomplete), set()
        LOG.warning("Port group(s) %s reported without their switch, also when read "
                    "again; followed as reported", ", ".join(moids))
