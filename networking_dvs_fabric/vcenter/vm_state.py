"""Plain values for what vCenter says about VMs, and the pure conversions to them.

``Nic``, ``VmState``, ``VmGone`` and ``MigrationStarting`` (a ``Change``) are what
``vm_watch.VmWatch`` hands its caller; the functions here turn pyVmomi values (devices,
extraConfig, migration events) into them, read events out of property-collector updates
and merge one property change into a VM's last known properties.  ``place`` checks a
VM's claims (Nova's ``nvp.iface-id.N`` keys) against what Neutron says of the ports and
puts each port on the NIC that carries it.  No session, no I/O.
"""
from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from pyVmomi import vim

IFACE_ID_PREFIX = "nvp.iface-id."
FREE_IFACE_ID = "free"        # what Nova writes into nvp.iface-id.N when it detaches the NIC
VM_UUID_KEY = "nvp.vm-uuid"   # the Nova instance: the device_id of the VM's ports
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
    # The Neutron port this NIC carries, once checked (:func:`place`); the watch
    # itself never sets it: ``nvp.iface-id.N`` only names candidates.
    iface_id: str | None = None


@dataclasses.dataclass(frozen=True)
class VmState:
    moid: str
    name: str
    host: str | None              # ESXi host name (not moid)
    powered_on: bool
    nics: tuple[Nic, ...]
    claims: tuple[str, ...] = ()  # port ids in nvp.iface-id.* (Nova's lowest-free-index keys)
    vm_uuid: str | None = None    # nvp.vm-uuid


@dataclasses.dataclass(frozen=True)
class PortFacts:
    """What Neutron says of a claimed port, to check the claim against the VM."""

    mac: str
    network_id: str
    device_id: str


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


def cards_only(devices: Sequence[Any] | None) -> list[Any]:
    """A VM's ethernet cards of its devices: all the watch keeps of them (a VM's
    disks, controllers and the rest are most of its devices' memory)."""
    return [card for card in devices or [] if isinstance(card, _CARD)]


def nics_of(devices: Sequence[Any]) -> tuple[Nic, ...]:
    """The VM's ethernet cards in device order, no port placed yet."""
    return tuple(_nic(card, None) for card in devices if isinstance(card, _CARD))


def claims_of(extra_config: Sequence[Any]) -> tuple[str, ...]:
    """The port ids ``nvp.iface-id.N`` names, by N.  N is Nova's lowest free index, not
    the card's position (a detached port's key says ``free`` and is reused)."""
    ids = _iface_ids(extra_config)
    return tuple(dict.fromkeys(ids[n] for n in sorted(ids)))


def vm_uuid_of(extra_config: Sequence[Any]) -> str | None:
    for option in extra_config:
        if getattr(option, "key", None) == VM_UUID_KEY:
            value = getattr(option, "value", None)
            return value if isinstance(value, str) and value else None
    return None


def place(state: VmState, ports: Mapping[str, PortFacts],
          network_of: Callable[[str | None], str | None]) -> tuple[VmState, dict[str, str]]:
    """Put each claimed port on the NIC that really carries it.

    A claim holds when Neutron knows the port (``ports``), the VM's ``nvp.vm-uuid``
    (where set) is the port's ``device_id``, and a NIC has the port's MAC (Nova sets
    it, ``addressType manual``) on a port group of the port's network
    (``network_of(port group key)``).  Returns the state with those NICs' ``iface_id``
    set, and why each other claim of a port Neutron knows was refused.  Claims of
    ports Neutron does not know are dropped without a word (another cloud's, or gone).
    """
    placed: dict[int, str] = {}
    refused: dict[str, str] = {}
    for port_id in state.claims:
        facts = ports.get(port_id)
        if facts is None:
            continue
        if state.vm_uuid and state.vm_uuid != facts.device_id:
            refused[port_id] = (f"{VM_UUID_KEY} {state.vm_uuid} is not the port's device_id "
                                f"{facts.device_id or '(none)'}")
            continue
        mac = facts.mac.lower()
        # MACs are unique per network only: a VM may have two cards of one MAC.
        same_mac = [n for n, nic in enumerate(state.nics) if nic.mac == mac and n not in placed]
        index = next((n for n in same_mac
                      if network_of(state.nics[n].port_group_key) == facts.network_id), None)
        if index is None:
            refused[port_id] = (
                f"no NIC has the port's MAC {facts.mac}" if not same_mac else
                f"the NIC with the port's MAC is on port group "
                f"{state.nics[same_mac[0]].port_group_key}, not one of network "
                f"{facts.network_id}")
            continue
        placed[index] = port_id
    nics = tuple(dataclasses.replace(nic, iface_id=placed.get(n))
                 for n, nic in enumerate(state.nics))
    return dataclasses.replace(state, nics=nics), refused


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
            props[name] = cards_only(val) if name == DEVICES else val
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

