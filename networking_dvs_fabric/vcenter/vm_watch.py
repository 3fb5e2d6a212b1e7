"""Follow every VM of a datacenter, and migration-start events, with one PropertyCollector.

Nova binds a Neutron port to a *cluster*; the ESXi host a VM really runs on is only
known from vCenter.  ``VmWatch`` follows, with a PropertyCollector of its own and
``WaitForUpdatesEx`` (a long poll, no polling loop):

 - every VirtualMachine of the datacenter (a ContainerView): name, ``runtime.host``,
   ``runtime.powerState``, ``config.hardware.device`` and ``config.extraConfig``;
 - an EventHistoryCollector's ``latestPage`` for migration-start events, so an event
   wakes the same long poll as a property change.

and hands the caller plain frozen values: ``VmState`` (the whole merged state of a VM
that changed), ``VmGone`` and ``MigrationStarting``.  It knows nothing of Neutron.
Those values, and the pure conversions from pyVmomi values to them (NICs, migration
destinations, merging one property change), live in ``vm_state``; this module keeps
the session-bound watch and its filter specs.  The first answer (every VM of the
datacenter) is read without pyVmomi's parser (``vm_first_read``).

Merging: the VM filter uses partialUpdates; whole properties are merged into the last
known state per VM (``vm_state.merge``), ``config.extraConfig["key"]`` paths are
applied in place, and any other nested path (``config.hardware.device[4000].backing...``)
or a device change without an extraConfig change is answered by reading that VM's
devices and extraConfig back once (device changes are rare; govmomi's simulator
reports every reconfigure as a ``config.hardware.device`` change and never reports
``config.extraConfig``).  A VM that powers on is read back whole once: the
simulator can report a new VM while ``CreateVM_Task`` is still filling it in (no
host, no extraConfig yet) and never report the rest, and a running VM's picture is
what the watcher places its ports from.

Events: ``latestPage`` (``EVENT_PAGE_SIZE`` events) repeats old events, so only keys
above the highest seen count; more than a page of matching events between two long
polls would lose the oldest.

Faults are never read as "no changes": a lost session or connection raises
``WatchLost`` out of ``wait()``, and the caller resyncs (``resync()``, or a new
``VmWatch`` on a new session).

Threads: ``wait()``/``resync()`` from one thread; ``cancel()`` may come from another.
"""
from __future__ import annotations

import contextlib
import http.client
import logging
import threading
from typing import Any, Iterator

from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter import errors, vm_first_read
from networking_dvs_fabric.vcenter.session import VCenterSession, collect

from networking_dvs_fabric.vcenter.vm_state import (DEST_HOST_EVENTS, DEVICES, DONE_MOVE_EVENTS,
                                                    EXTRA_CONFIG, VM_PROPERTIES, Change,
                                                    MigrationStarting, VmGone, VmState,
                                                    cards_only, claims_of, destination_of,
                                                    events_in, merge, moid_of, nics_of,
                                                    type_id, vm_uuid_of)

LOG = logging.getLogger(__name__)

EVENT_PAGE_SIZE = 50          # events that may arrive between two long polls without loss

_PCQ = vmodl.query.PropertyCollector
POWER_STATE = "runtime.powerState"
POWERED_ON = "poweredOn"


class WatchLost(errors.VCenterError):
    """The watch's session, connection or collector is gone: resync with a fresh session."""

    permanent = False


# -- the watch ------------------------------------------------------------------------
class VmWatch:
    """VMs and migration starts of one datacenter, from one PropertyCollector."""

    def __init__(self, session: VCenterSession, datacenter_moid: str,
                 wait_seconds: int = 10) -> None:
        if wait_seconds < 1 or wait_seconds >= session.config.request_timeout:
            raise ValueError(f"wait_seconds {wait_seconds} must be >= 1 and below the "
                             f"session's request_timeout ({session.config.request_timeout})")
        self._session = session
        self._datacenter_moid = datacenter_moid
        self._wait_seconds = int(wait_seconds)
        self._si: Any = None
        self._pc: Any = None
        self._view: Any = None
        self._events: Any = None
        self._version = ""
        self._hosts: dict[str, str] = {}                 # host moid -> name
        self._props: dict[str, dict[str, Any]] = {}      # VM moid -> property -> value
        self._reported: dict[str, VmState] = {}          # what the caller last got
        self._last_event_key = 0
        self._cancelled = threading.Event()

    # -- public ------------------------------------------------------------------------
    def resync(self) -> list[VmState]:
        """(Re)create collector and filters; the full current picture of every VM.

        Events already in vCenter's history are not migration starts: only events
        newer than this moment are reported by ``wait()``.
        """
        self._teardown()
        self._session.invoke(self._setup_or_clean, "VM watch resync")
        states = [self._state(moid) for moid in self._props]
        self._reported = {state.moid: state for state in states}
        return states

    def wait(self) -> list[Change]:
        """Block up to ``wait_seconds``; what changed since the last call, in order."""
        if self._pc is None:
            raise WatchLost("VM watch: not synchronised (call resync() first)")
        if self._cancelled.is_set():
            self._cancelled.clear()
            return []
        try:
            with _faults_raise_lost("VM watch: WaitForUpdatesEx"):
                updates = self._wait_updates(self._wait_seconds)
                return self._changes(updates)
        except vmodl.fault.RequestCanceled:
            # Only cancel() cancels this private collector's wait: no session trouble.
            self._cancelled.clear()
            return []

    def cancel(self) -> None:
        """Make a pending ``wait()`` (or else the next one) return at once, empty."""
        self._cancelled.set()
        pc = self._pc
        if pc is None:
            return
        try:
            pc.CancelWaitForUpdates()
        except Exception as exc:  # noqa: BLE001 - best effort: the wait times out anyway
            LOG.debug("VM watch: CancelWaitForUpdates failed: %s", exc)

    def close(self) -> None:
        """Destroy the collector, filters, view and event collector (not the session)."""
        self._teardown()

    # -- setting up --------------------------------------------------------------------
    def _setup_or_clean(self, si: Any) -> None:
        try:
            self._setup(si)
        except BaseException:
            self._teardown()
            raise

    def _setup(self, si: Any) -> None:
        self._si = si
        self._version = ""
        self._props = {}
        self._reported = {}
        content = si.content
        datacenter = vim.Datacenter(self._datacenter_moid, si._stub)
        self._read_hosts()
        self._view = content.viewManager.CreateContainerView(
            datacenter, [vim.VirtualMachine], True)
        self._events = content.eventManager.CreateCollectorForEvents(
            _event_filter(datacenter))
        self._events.SetCollectorPageSize(EVENT_PAGE_SIZE)
        self._pc = content.propertyCollector.CreatePropertyCollector()
        self._pc.CreateFilter(_vm_filter(self._view), partialUpdates=True)
        self._pc.CreateFilter(_event_collector_filter(self._events), partialUpdates=False)
        # Every VM at once (megabytes with thousands of VMs): read without pyVmomi.
        self._version, updates = vm_first_read.wait_updates(self._pc, self._version)
        self._last_event_key = max(
            (event.key for event in events_in(updates)), default=0)
        for filter_update in updates:   # the events in it are history: not reported
            for object_update in filter_update.objectSet or []:
                if isinstance(object_update.obj, vim.VirtualMachine):
                    self._apply_vm(object_update)

    def _teardown(self) -> None:
        pc, view, events = self._pc, self._view, self._events
        self._pc = self._view = self._events = None
        # The collector first: its filters go with it, and nothing waits on it any more.
        for what, destroy in (("property collector", pc and pc.Destroy),
                              ("container view", view and view.Destroy),
                              ("event collector", events and events.DestroyCollector)):
            if destroy is None:
                continue
            try:
                destroy()
            except Exception as exc:  # noqa: BLE001 - the session may be gone already
                LOG.debug("VM watch: destroying the %s failed: %s", what, exc)

    def _read_hosts(self) -> None:
        datacenter = vim.Datacenter(self._datacenter_moid, self._si._stub)
        hosts = self._session.retrieve(self._si, vim.HostSystem, ["name"], root=datacenter)
        self._hosts = {moid_of(obj) or "": props.get("name", "") for obj, props in hosts}

    def _host_name(self, moid: str | None) -> str | None:
        if moid is None:
            return None
        if moid not in self._hosts:
            self._read_hosts()
        name = self._hosts.get(moid)
        if name is None:
            LOG.warning("VM watch: host %s is not in datacenter %s", moid,
                        self._datacenter_moid)
        return name

    # -- the long poll -----------------------------------------------------------------
    def _wait_updates(self, max_wait: int) -> list[Any]:
        """One WaitForUpdatesEx (continued while truncated); its filter updates."""
        out: list[Any] = []
        while True:
            update = self._pc.WaitForUpdatesEx(
                self._version, _PCQ.WaitOptions(maxWaitSeconds=max_wait))
            if update is None:
                return out
            self._version = update.version
            out.extend(update.filterSet or [])
            if not update.truncated:
                return out
            max_wait = 0

    def _changes(self, filter_updates: list[Any]) -> list[Change]:
        changed: list[str] = []
        out: list[Change] = []
        for filter_update in filter_updates:
            for object_update in filter_update.objectSet or []:
                obj = object_update.obj
                if isinstance(obj, vim.event.EventHistoryCollector):
                    out.extend(self._migrations(object_update))
                elif isinstance(obj, vim.VirtualMachine):
                    gone = self._apply_vm(object_update)
                    moid = moid_of(obj) or ""
                    if gone:
                        self._reported.pop(moid, None)
                        out.append(VmGone(moid))
                    elif moid not in changed:
                        changed.append(moid)
        for moid in changed:
            if moid not in self._props:
                continue
            state = self._state(moid)
            if self._reported.get(moid) != state:
                self._reported[moid] = state
                out.append(state)
        return out

    # -- VMs -----------------------------------------------------------------------------
    def _apply_vm(self, update: Any) -> bool:
        """Merge one object update into the VM's last known properties; True if it left."""
        moid = moid_of(update.obj) or ""
        if update.kind == "leave":
            self._props.pop(moid, None)
            return True
        props = self._props.setdefault(moid, {})
        changes = list(update.changeSet or [])
        names = {change.name for change in changes}
        reread: tuple[str, ...] = ()
        for change in changes:
            if not merge(props, change.name, change.op, change.val):
                reread = (DEVICES, EXTRA_CONFIG)
        if DEVICES in names and EXTRA_CONFIG not in names and update.kind == "modify":
            # Nova writes the NIC and its nvp.iface-id.N in one reconfigure; the
            # simulator reports the devices but never config.extraConfig.  One read.
            reread = (DEVICES, EXTRA_CONFIG)
        if update.kind == "modify" and any(c.name == POWER_STATE and c.val == POWERED_ON
                                           for c in changes):
            # Powered on: read whole.  The simulator may have made the VM's "enter"
            # while CreateVM_Task was still filling it in, and never reports the
            # rest (its host, extraConfig, NICs); a VM's ports are placed from the
            # moment it runs, so that picture is read as it is now.
            reread = VM_PROPERTIES
        if reread:
            self._reread(update.obj, props, reread)
        return False

    def _reread(self, vm: Any, props: dict[str, Any], paths: tuple[str, ...]) -> None:
        spec = _PCQ.FilterSpec(
            objectSet=[_PCQ.ObjectSpec(obj=vm, skip=False)],
            propSet=[_PCQ.PropertySpec(type=vim.VirtualMachine, pathSet=list(paths))])
        try:
            found = collect(self._pc, [spec])
        except vmodl.fault.ManagedObjectNotFound:
            return                      # deleted meanwhile: its "leave" follows
        for _obj, values in found:
            for path in paths:          # a property not in the answer is unset
                value = values.get(path)
                props[path] = cards_only(value) if path == DEVICES else value

    def _state(self, moid: str) -> VmState:
        props = self._props[moid]
        devices = props.get(DEVICES) or []
        extra = props.get(EXTRA_CONFIG) or []
        return VmState(moid=moid, name=props.get("name") or "",
                       host=self._host_name(moid_of(props.get("runtime.host"))),
                       powered_on=props.get(POWER_STATE) == POWERED_ON,
                       nics=nics_of(list(devices)), claims=claims_of(list(extra)),
                       vm_uuid=vm_uuid_of(list(extra)))

    # -- events ----------------------------------------------------------------------------
    def _migrations(self, update: Any) -> list[MigrationStarting]:
        out: list[MigrationStarting] = []
        for change in update.changeSet or []:
            if change.name != "latestPage":
                continue
            for event in sorted(change.val or [], key=lambda e: e.key):
                if event.key <= self._last_event_key:
                    continue            # latestPage repeats what was seen already
                self._last_event_key = event.key
                start = self._migration(event)
                if start is not None:
                    out.append(start)
        return out

    def _migration(self, event: Any) -> MigrationStarting | None:
        destination = destination_of(event)
        vm_arg = getattr(event, "vm", None)
        if destination is None or vm_arg is None or vm_arg.vm is None:
            return None
        name = destination.name or self._host_name(moid_of(destination.host))
        if not name:
            return None
        return MigrationStarting(vm_moid=moid_of(vm_arg.vm) or "", destination_host=name,
                                 event_key=int(event.key), created=event.createdTime)


# -- specs and helpers -----------------------------------------------------------------
def _vm_filter(view: Any) -> Any:
    return _PCQ.FilterSpec(
        objectSet=[_PCQ.ObjectSpec(obj=view, skip=True, selectSet=[_PCQ.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView)])],
        propSet=[_PCQ.PropertySpec(type=vim.VirtualMachine, pathSet=list(VM_PROPERTIES))])


def _event_collector_filter(collector: Any) -> Any:
    return _PCQ.FilterSpec(
        objectSet=[_PCQ.ObjectSpec(obj=collector, skip=False)],
        propSet=[_PCQ.PropertySpec(type=vim.event.EventHistoryCollector,
                                   pathSet=["latestPage"])])


def _event_filter(datacenter: Any) -> Any:
    return vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=datacenter, recursion="all"),
        eventTypeId=[type_id(kind) for kind in DEST_HOST_EVENTS + DONE_MOVE_EVENTS])


@contextlib.contextmanager
def _faults_raise_lost(what: str) -> Iterator[None]:
    """Session and connection faults become ``WatchLost`` (RequestCanceled passes)."""
    try:
        yield
    except vmodl.fault.RequestCanceled:
        raise
    except vim.fault.NotAuthenticated as exc:
        raise WatchLost(f"{what}: vCenter session is gone (NotAuthenticated)") from exc
    except vmodl.MethodFault as exc:
        raise WatchLost(f"{what}: vCenter fault {type(exc).__name__}: "
                        f"{getattr(exc, 'msg', '') or exc}") from exc
    except errors.VCenterError as exc:
        raise WatchLost(f"{what}: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise WatchLost(f"{what}: connection to vCenter lost: {exc}") from exc
