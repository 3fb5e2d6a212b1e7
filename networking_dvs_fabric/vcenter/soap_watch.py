"""``WaitForUpdatesEx`` as a small raw SOAP call, its answer parsed into plain values.

The port group watch runs in every Neutron API process and parses every update.
pyVmomi's SOAP deserialiser costs ~1 ms of CPU for an update of one port group
(~40 XML elements), taken under the GIL while the request that created the port
group is still running.  ``ElementTree`` does the same parse in C for a fraction of
that.  Only the long poll goes this way: the PropertyCollector, its filter and the
cancel are still pyVmomi calls (rare).

The call goes over the same pyVmomi stub as the rest of the watch's session
(``raw_soap.post``: its connection pool, TLS context, cookie and API version).  A
SOAP fault (HTTP 500) is raised as the very fault pyVmomi would raise -
``NotAuthenticated``, ``RequestCanceled`` and the like; never read as "no updates".
"""
from __future__ import annotations

import dataclasses
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from pyVmomi import SoapAdapter, vmodl

from networking_dvs_fabric.vcenter import raw_soap

_REQUEST = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema">\n'
    '<soapenv:Body><WaitForUpdatesEx xmlns="{ns}">'
    '<_this type="PropertyCollector">{pc}</_this>'
    '<version>{version}</version>'
    '<options><maxWaitSeconds>{wait}</maxWaitSeconds></options>'
    '</WaitForUpdatesEx></soapenv:Body>\n</soapenv:Envelope>')
_METHOD = vmodl.query.PropertyCollector._GetMethodInfo("WaitForUpdatesEx")


class SoapWatchError(Exception):
    """The answer to WaitForUpdatesEx was neither an update set nor a readable fault."""


@dataclasses.dataclass(frozen=True)
class PropertyChange:
    name: str
    op: str          # add, remove, assign, indirectRemove
    val: Any         # text; a ManagedObjectReference as its moid; None when unset


@dataclasses.dataclass(frozen=True)
class ObjectUpdate:
    moid: str
    kind: str        # enter, modify, leave
    changes: tuple[PropertyChange, ...]


@dataclasses.dataclass(frozen=True)
class UpdateSet:
    version: str
    truncated: bool
    objects: tuple[ObjectUpdate, ...]


def _value(elem: ElementTree.Element) -> Any:
    """A ``val``: its text - for a ManagedObjectReference (``xsi:type``), the moid.

    A complex value (child elements) is handed over as the element itself; none of
    the watched properties has one.
    """
    if len(elem):
        return elem
    return elem.text or ""


def parse_update_set(body: bytes) -> UpdateSet | None:
    """The ``returnval`` of a WaitForUpdatesExResponse; None if it has none (no change)."""
    root = ElementTree.fromstring(body)
    soap_body = next((c for c in root if raw_soap.local(c.tag) == "Body"), None)
    if soap_body is None or not len(soap_body):
        raise SoapWatchError("WaitForUpdatesEx: answer without a SOAP body")
    response = soap_body[0]
    if raw_soap.local(response.tag) != "WaitForUpdatesExResponse":
        raise SoapWatchError("WaitForUpdatesEx: unexpected answer "
                             f"{raw_soap.local(response.tag)!r}")
    returnval = next((c for c in response if raw_soap.local(c.tag) == "returnval"), None)
    if returnval is None:
        return None
    version: str | None = None
    truncated = False
    objects: list[ObjectUpdate] = []
    for part in returnval:
        tag = raw_soap.local(part.tag)
        if tag == "version":
            version = part.text or ""
        elif tag == "truncated":
            truncated = (part.text or "").strip() in ("true", "1")
        elif tag == "filterSet":
            for object_set in part:
                if raw_soap.local(object_set.tag) != "objectSet":
                    continue
                moid = kind = None
                changes: list[PropertyChange] = []
                for item in object_set:
                    itag = raw_soap.local(item.tag)
                    if itag == "obj":
                        moid = item.text or ""
                    elif itag == "kind":
                        kind = item.text or ""
                    elif itag == "changeSet":
                        name = op = None
                        val = None
                        for field in item:
                            ftag = raw_soap.local(field.tag)
                            if ftag == "name":
                                name = field.text or ""
                            elif ftag == "op":
                                op = field.text or ""
                            elif ftag == "val":
                                val = _value(field)
                        if name is None or op is None:
                            raise SoapWatchError("WaitForUpdatesEx: changeSet without name/op")
                        changes.append(PropertyChange(name, op, val))
                    # missingSet: properties vCenter could not read; ignored, as before.
                if moid is None or kind is None:
                    raise SoapWatchError("WaitForUpdatesEx: objectSet without obj/kind")
                objects.append(ObjectUpdate(moid, kind, tuple(changes)))
    if version is None:
        raise SoapWatchError("WaitForUpdatesEx: update set without a version")
    return UpdateSet(version, truncated, tuple(objects))


class UpdateWaiter:
    """``pc.WaitForUpdatesEx(version, maxWaitSeconds=...)`` without pyVmomi's parser."""

    def __init__(self, pc: Any) -> None:
        self._pc = pc
        self._stub = pc._stub
        self._pc_moid = escape(pc._moId)
        self._ns = SoapAdapter.GetWsdlNamespace(self._stub.version)

    def wait(self, version: str, max_wait_seconds: int) -> UpdateSet | None:
        request = _REQUEST.format(ns=self._ns, pc=self._pc_moid, version=escape(version),
                                  wait=int(max_wait_seconds)).encode("utf-8")
        try:
            body = raw_soap.post(self._stub, request, _METHOD,
                                 "networking-dvs-fabric pg-watch")
        except raw_soap.RawSoapError as exc:
            raise SoapWatchError(str(exc)) from exc
        return parse_update_set(body)
