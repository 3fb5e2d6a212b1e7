"""Plain values for what vCenter says about VMs, and the pure conversions to them.

``Nic``, ``VmState``, ``VmGone`` and ``MigrationStarting`` (a ``Change``) are what
``vm_watch.VmWatch`` hands its caller; the functions here turn pyVmomi values (devices,
extraConfig, migration events) into them, read events out of property-collector updates
and merge one property change into a VM's last known properties.  No session, no I/O.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Iterable, Iterator, Sequence

from pyVmomi import vim

IFACE_ID_PREFIX = "nvp.iface-id."
FREE_IFACE_ID = "free"        # what Nova writes into nvp.iface-id.N when it detaches the NIC
DEVICES = "config.hardware.device"
EXTRA_CONFIG = "config.extraConfig"
SIMPLE_PROPERTIES = ("name", "runtime.host", "runtime.powerState")
VM_PROPERTIES = SIMPLE_PROPERTIES + (DEVICES, EXTRA_CONFIG)
# Events that name the host a VM is about to run on.  VmEmigratingEvent is left out:
# it has no destination.  DrsVmMigratedEvent is a *completed* DRS move (a
# VmMigratedEvent: its ``host`` is the destination); it still tells the destination
# before ``runtime.host`` might be seen, so it counts.
DEST_HOST_EVENTS = (vim.event.VmBeingHotMigratedEvent, vim.event.VmBeingMigratedEvent,
                    vim.event.VmBeingRelocatedEvent)
DONE_MOVE_EVENTS = (vim.event.DrsVmMigratedEvent,)

_CARD = vim.vm.device.VirtualEthernetCard


@dataclasses.dataclass(frozen=True)
class Nic:
    mac: str                      # lower-case
    port_group_key: str | None    # DVS port group key (None: not a DVS port backing)
    dvs_uuid: str | None
    iface_id: str | None          # extraConfig nvp.iface-id.<N> for the N-th ethernet card


@dataclasses.dataclass(frozen=True)
class VmState:
    moid: str
    name: str
    host: str | None              # ESXi host name (not moid)
    powered_on: bool
    nics: tuple[Nic, ...]


@dataclasses.dataclass(frozen=True)
class VmGone:                     # deleted, or left the datacenter
    moid: str


@dataclasses.dataclass(frozen=True)
class MigrationStarting:
    vm_moid: str
    destination_host: str         # ESXi host name
    event_key: int
    created: datetime.datetime


Change = VmState | VmGone | MigrationStarting


# -- turning vCenter values into plain ones -------------------------------------------
def moid_of(ref: Any) -> str | None:
    return None if ref is None else str(ref._moId)


def _iface_ids(extra_config: Iterable[Any]) -> dict[int, str]:
    """nvp.iface-id.<N> -> port id; a later duplicate key wins, "free" means none."""
    out: dict[int, str] = {}
    for option in extra_config:
        key = getattr(option, "key", None) or ""
        if not key.startswith(IFACE_ID_PREFIX):
            continue
        index = key[len(IFACE_ID_PREFIX):]
        if not index.isdigit():
            continue
        value = getattr(option, "value", None)
        if isinstance(value, str) and value and value != FREE_IFACE_ID:
            out[int(index)] = value
        else:
            out.pop(int(index), None)
    return out


def _nic(card: Any, iface_id: str | None) -> Nic:
    backing = card.backing
    port = getattr(backing, "port", None) \
        if isinstance(backing, _CARD.DistributedVirtualPortBackingInfo) else None
    return Nic(mac=(card.macAddress or "").lower(),
               port_group_key=getattr(port, "portgroupKey", None) or None,
               dvs_uuid=getattr(port, "switchUuid", None) or None,
               iface_id=iface_id)


def nics_of(devices: Sequence[Any], extra_config: Sequence[Any]) -> tuple[Nic, ...]:
    """The VM's ethernet cards in device order; card N gets nvp.iface-id.N."""
    ids = _iface_ids(extra_config)
    cards = [dev for dev in devices if isinstance(dev, _CARD)]
    return tuple(_nic(card, ids.get(n)) for n, card in enumerate(cards))


def destination_of(event: Any) -> Any:
    """The HostEventArgument naming the destination of a migration event, or None."""
    if isinstance(event, DEST_HOST_EVENTS):
        return getattr(event, "destHost", None)
    if isinstance(event, DONE_MOVE_EVENTS):
        return getattr(event, "host", None)
    return None


def type_id(kind: type) -> str:
    return kind.__name__.rpartition(".")[2]      # vim.event.X -> X (an eventTypeId)


# -- reading property-collector updates ------------------------------------------------
def events_in(filter_updates: list[Any]) -> Iterator[Any]:
    for filter_update in filter_updates:
        for object_update in filter_update.objectSet or []:
            if not isinstance(object_update.obj, vim.event.EventHistoryCollector):
                continue
            for change in object_update.changeSet or []:
                if change.name == "latestPage":
                    yield from change.val or []


def merge(props: dict[str, Any], name: str, op: str, val: Any) -> bool:
    """Apply one PropertyChange; False if it must be read back (a nested device path)."""
    if name in VM_PROPERTIES:
        if op in ("remove", "indirectRemove"):
            props.pop(name, None)
        else:
            props[name] = val
        return True
    if name.startswith(EXTRA_CONFIG + "["):
        return _merge_extra_config(props, name[len(EXTRA_CONFIG):], op, val)
    return False


def _merge_extra_config(props: dict[str, Any], tail: str, op: str, val: Any) -> bool:
    """``["key"]`` (add/assign/remove an OptionValue) or ``["key"].value`` (assign)."""
    key, sep, rest = tail[1:].partition("]")
    key = key.strip('"')
    if not sep or rest not in ("", ".value"):
        return False
    options = [o for o in props.get(EXTRA_CONFIG) or [] if o.key != key]
    if op not in ("remove", "indirectRemove"):
        value = val if rest else getattr(val, "value", None)
        options.append(vim.option.OptionValue(key=key, value=value))
    props[EXTRA_CONFIG] = options
    return True

