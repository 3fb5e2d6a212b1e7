"""The VM watch's first answer (every VM of the datacenter) read without pyVmomi's parser.

``VmWatch``'s first ``WaitForUpdatesEx`` carries every VM with its devices and
extraConfig: with 5,004 VMs in the simulator, 26 MB of XML that pyVmomi turns into an
object per element (7.4 s of CPU, all of it under the GIL of a worker process whose
other threads program the leaves).  Here the same call goes over the same stub
(``raw_soap.post``) and its answer is read by ElementTree's pull parser, a slice at a
time (the other threads run between slices), keeping of each VM only what the watch
reads: its name, host, power state, ethernet cards and extraConfig options.  A VM's
other devices (disks, controllers) are left out: the watch looks only at its cards.

The answer is handed back in the shape of pyVmomi's (filter updates whose object
updates have ``obj``, ``kind`` and ``changeSet`` of ``name``/``op``/``val``), with
values built directly as pyVmomi objects (cards, their DVS port backing,
``OptionValue``, ``HostSystem``), so the watch merges it as it merges any update.  An
event of the event collector's ``latestPage`` is only its ``key``: the first answer's
events are history, read for the highest key only.
"""
from __future__ import annotations

import functools
import types
from typing import Any, Iterator
from xml.etree import ElementTree

from pyVmomi import VmomiSupport, vim, vmodl

from networking_dvs_fabric.vcenter import raw_soap
from networking_dvs_fabric.vcenter.raw_soap import XSI_TYPE, local
from networking_dvs_fabric.vcenter.vm_state import DEVICES, EXTRA_CONFIG

_PC = vmodl.query.PropertyCollector
_WAIT = _PC._GetMethodInfo("WaitForUpdatesEx")
_CARD = vim.vm.device.VirtualEthernetCard
_DV_PORT_BACKING = _CARD.DistributedVirtualPortBackingInfo._wsdlName
SLICE = 64 * 1024           # bytes parsed at a time (a few ms under the GIL)
# Depths in the answer: Envelope 1, Body 2, WaitForUpdatesExResponse 3, returnval 4,
# its fields (version, filterSet, truncated) 5, a filterSet's objectSet 6.
_ANSWER, _FIELD, _OBJECT = 3, 5, 6


def wait_updates(pc: Any, version: str,
                 agent: str = "networking-dvs-fabric") -> tuple[str, list[Any]]:
    """``WaitForUpdatesEx(version, maxWaitSeconds=0)``, continued while truncated: the
    new version and the filter updates (pyVmomi's shape, see the module's doc)."""
    stub = pc._stub
    out: list[Any] = []
    while True:
        request = stub.SerializeRequest(pc, _WAIT, [version, _PC.WaitOptions(maxWaitSeconds=0)])
        body = raw_soap.post(stub, request, _WAIT, agent)
        try:
            answer = _Answer(stub)
            answer.read(body)
        except raw_soap.RawSoapError:
            stub.DropConnections()      # as pyVmomi after an answer it cannot read
            raise
        raw_soap.notify(_WAIT.name, sum(len(f.objectSet) for f in answer.filter_updates))
        if answer.version is None:     # no returnval: nothing new
            return version, out
        version = answer.version
        out.extend(answer.filter_updates)
        if not answer.truncated:
            return version, out


class _Answer:
    """One ``WaitForUpdatesExResponse`` read slice by slice."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub
        self.version: str | None = None
        self.truncated = False
        self.filter_updates: list[Any] = []

    def read(self, body: bytes) -> None:
        depth, objects = 0, []
        outside_body = False          # in the envelope's Header (or another part): skipped
        for event, element in raw_soap.pull_events(body, _WAIT.name, SLICE):
            if event == "start":
                depth += 1
                if depth == _ANSWER - 1:
                    outside_body = local(element.tag) != "Body"
                elif depth == _ANSWER and not outside_body \
                        and local(element.tag) != f"{_WAIT.name}Response":
                    raise raw_soap.RawSoapError(
                        f"{_WAIT.name}: unexpected answer {local(element.tag)!r}")
                continue
            if outside_body:
                if depth == _ANSWER - 1:
                    element.clear()
            elif depth == _OBJECT and local(element.tag) == "objectSet":
                objects.append(self._object_update(element))
                element.clear()
            elif depth == _FIELD:
                objects = self._field(element, objects)
            depth -= 1

    def _field(self, element: ElementTree.Element, objects: list[Any]) -> list[Any]:
        tag = local(element.tag)
        if tag == "version":
            self.version = element.text or ""
        elif tag == "truncated":
            self.truncated = (element.text or "").strip() in ("true", "1")
        elif tag == "filterSet":
            self.filter_updates.append(types.SimpleNamespace(objectSet=objects))
            element.clear()
            return []
        return objects

    def _object_update(self, element: ElementTree.Element) -> Any:
        obj, kind, changes = None, "", []
        for item in element:
            tag = local(item.tag)
            if tag == "obj":
                obj = _managed_type(item.get("type", ""))(item.text or "", self._stub)
            elif tag == "kind":
                kind = item.text or ""
            elif tag == "changeSet":
                changes.append(self._change(item))
        return types.SimpleNamespace(obj=obj, kind=kind, changeSet=changes)

    def _change(self, element: ElementTree.Element) -> Any:
        name = op = ""
        val = None
        for item in element:
            tag = local(item.tag)
            if tag == "name":
                name = item.text or ""
            elif tag == "op":
                op = item.text or ""
            elif tag == "val":
                val = item
        return types.SimpleNamespace(name=name, op=op, val=self._value(name, val))

    def _value(self, name: str, val: ElementTree.Element | None) -> Any:
        if val is None:
            return None
        if name == DEVICES:
            return [card for card in map(_card, val) if card is not None]
        if name == EXTRA_CONFIG:
            return [_option(item) for item in val]
        if name.startswith(EXTRA_CONFIG + "["):
            return _option(val) if len(val) else (val.text or "")
        if name == "runtime.host":
            return vim.HostSystem(val.text or "", self._stub)
        if name == "latestPage":
            return list(_event_keys(val))
        return val.text or ""       # name, runtime.powerState; the rest is read again


def _card(element: ElementTree.Element) -> Any:
    """An ethernet card as pyVmomi's object (None: another kind of device)."""
    kind = _card_type(local(element.get(XSI_TYPE, "")))
    if kind is None:
        return None
    fields = {local(item.tag): item for item in element}
    backing = None
    found = fields.get("backing")
    if found is not None and local(found.get(XSI_TYPE, "")) == _DV_PORT_BACKING:
        port = {local(item.tag): item.text or None
                for item in next((p for p in found if local(p.tag) == "port"), ())}
        backing = _CARD.DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
            switchUuid=port.get("switchUuid"), portgroupKey=port.get("portgroupKey"),
            portKey=port.get("portKey")))
    key = fields.get("key")
    mac = fields.get("macAddress")
    return kind(key=int(key.text) if key is not None and key.text else 0,
                macAddress=mac.text if mac is not None else None, backing=backing)


@functools.lru_cache(maxsize=None)
def _managed_type(name: str) -> type:
    try:
        return VmomiSupport.GuessWsdlType(name)
    except KeyError:
        return VmomiSupport.ManagedObject


@functools.lru_cache(maxsize=None)
def _card_type(name: str) -> type | None:
    try:
        kind = VmomiSupport.GuessWsdlType(name)
    except KeyError:
        return None
    return kind if isinstance(kind, type) and issubclass(kind, _CARD) else None


def _option(element: ElementTree.Element) -> Any:
    fields = {local(item.tag): item.text for item in element}
    return vim.option.OptionValue(key=fields.get("key") or "", value=fields.get("value"))


def _event_keys(val: ElementTree.Element) -> Iterator[Any]:
    for event in val:
        key = next((item.text for item in event if local(item.tag) == "key"), None)
        if key is not None:
            yield types.SimpleNamespace(key=int(key))
