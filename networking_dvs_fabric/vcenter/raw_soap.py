"""SOAP calls answered without pyVmomi's parser: the answer read with ElementTree.

pyVmomi builds a Python object for every XML element of an answer, ~17 µs each: a
port group with a filter of a dozen rules is ~200 elements, ~3.5 ms of CPU under the
GIL, and the audit, the full sync and the watcher read thousands of them.  Here the
request is still serialised by pyVmomi (``SerializeRequest``) and sent over the same
stub (its connection pool, TLS context, session cookie and API version); the answer
is parsed by ElementTree in C.  A SOAP fault (HTTP 500) is deserialised by pyVmomi
(rare) and raised as the very fault pyVmomi would raise (``NotAuthenticated``...).

:func:`retrieve` is ``RetrievePropertiesEx`` (with its continuation tokens); each
property value is handed over as its ``val`` element (:class:`Xml` reads it like
the pyVmomi object it stands for, for the readers of ``security/vim_spec.py``).
"""
from __future__ import annotations

import http.client
import io
import logging
import socket
import zlib
from typing import Any, Callable, Iterable, Iterator
from xml.etree import ElementTree

from pyVmomi import SoapAdapter, vmodl

LOG = logging.getLogger(__name__)

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
_PC = vmodl.query.PropertyCollector
_RETRIEVE = _PC._GetMethodInfo("RetrievePropertiesEx")
_CONTINUE = _PC._GetMethodInfo("ContinueRetrievePropertiesEx")
_CANCEL = _PC._GetMethodInfo("CancelRetrievePropertiesEx")


class RawSoapError(http.client.HTTPException):
    """An answer that is neither what was asked for nor a readable fault (a temporary
    failure to ``VCenterSession.invoke``, as a broken HTTP answer is)."""


# Told of every raw call answered (method name, objects in the answer), as pyVmomi's
# ``InvokeMethod`` is for the rest: what the cost tests and ``bench scale`` count.
observers: list[Callable[[str, int], None]] = []


def notify(method_name: str, objects: int) -> None:
    for observe in list(observers):
        observe(method_name, objects)


def local(tag: str) -> str:
    """A tag without its namespace; an ``xsi:type`` without its prefix."""
    return tag.rpartition("}")[2].rpartition(":")[2]


def headers(stub: Any, agent: str) -> dict[str, str]:
    found = {"Cookie": stub.cookie, "SOAPAction": stub.versionId,
             "Content-Type": "text/xml; charset=UTF-8", "User-Agent": agent}
    custom = getattr(stub, "_customHeaders", None)
    if custom:
        found.update(custom)
    return found


def post(stub: Any, request: bytes, method: Any, agent: str) -> bytes:
    """POST ``request`` over the stub; the answer's body (HTTP 200), or the fault raised."""
    conn = stub.GetConnection()
    try:
        conn.request("POST", stub.path, request, headers(stub, agent))
        resp = conn.getresponse()
        body = resp.read()
    except (socket.error, http.client.HTTPException):
        conn.close()
        stub.DropConnections()     # as pyVmomi: the server may be sick
        raise
    cookie = resp.getheader("Set-Cookie")
    if cookie:
        stub.cookie = cookie       # as pyVmomi: the server may renew the session
    status = resp.status
    if status not in (200, 500):
        conn.close()
        raise http.client.HTTPException(f"{method.name}: HTTP {status} {resp.reason}")
    stub.ReturnConnection(conn)
    encoding = (resp.getheader("Content-Encoding") or "identity").lower()
    if encoding == "gzip":
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    if status == 500:
        raise _fault(stub, body, method)
    return body


def _fault(stub: Any, body: bytes, method: Any) -> BaseException:
    try:
        fault = SoapAdapter.SoapResponseDeserializer(stub).Deserialize(
            io.BytesIO(body), method.result)
    except Exception as exc:  # noqa: BLE001 - any unreadable fault is still a fault
        return RawSoapError(f"{method.name} failed (HTTP 500, unreadable fault: {exc}): "
                            f"{body[:500]!r}")
    if isinstance(fault, BaseException):
        return fault
    return RawSoapError(f"{method.name} failed (HTTP 500): {body[:500]!r}")


def retrieve(pc: Any, specs: Iterable[Any], agent: str = "networking-dvs-fabric",
             page: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``RetrievePropertiesEx`` with its continuation tokens: (moid, {property: value})
    per object; a value is its text (a managed object: its moid), or its element when
    it has fields (read it with :class:`Xml`)."""
    return list(retrieve_each(pc, specs, agent, page))


def retrieve_each(pc: Any, specs: Iterable[Any], agent: str = "networking-dvs-fabric",
                  page: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`retrieve`, one object at a time, each answer parsed as it is read: an
    object's elements are let go once the next is read, so a caller that turns each
    into its own value never holds the parsed answer whole (4,000 port groups with a
    filter each: ~150 MB at once).  The answer's bytes are held whole."""
    stub = pc._stub
    # ``page``: objects per answer (None: vCenter's choice; it pages long answers).
    request = stub.SerializeRequest(pc, _RETRIEVE, [list(specs),
                                                    _PC.RetrieveOptions(maxObjects=page)])
    method = _RETRIEVE
    while True:
        body = post(stub, request, method, agent)
        answer = _Answer(method)
        try:
            yield from answer.objects(body)
        except RawSoapError:
            stub.DropConnections()      # as pyVmomi after an answer it cannot read
            raise
        except GeneratorExit:
            # Left part-way: vCenter keeps the rest of a paged answer for its token
            # until told (the token comes before the objects, so it is known here).
            if answer.token:
                _cancel(stub, pc, answer.token, agent)
            raise
        notify(method.name, answer.count)
        if not answer.token:
            return
        method = _CONTINUE
        request = stub.SerializeRequest(pc, _CONTINUE, [answer.token])


def _cancel(stub: Any, pc: Any, token: str, agent: str) -> None:
    """``CancelRetrievePropertiesEx``: best effort (the server drops it at logout)."""
    try:
        post(stub, stub.SerializeRequest(pc, _CANCEL, [token]), _CANCEL, agent)
    except Exception as exc:  # noqa: BLE001 - the caller is leaving anyway
        LOG.debug("CancelRetrievePropertiesEx of token %s failed: %s", token, exc)


SLICE = 256 * 1024      # bytes of an answer parsed at a time
# Depths in an answer: Envelope 1, Body 2, <method>Response 3, returnval 4, its
# fields (objects, token) 5.
_BODY, _RESPONSE, _FIELD = 2, 3, 5


def pull_events(body: bytes, method_name: str,
                size: int | None = None) -> Iterator[tuple[str, ElementTree.Element]]:
    """ElementTree's (event, element) pairs of an answer, "start" and "end", parsed
    ``size`` bytes at a time (``SLICE``); unparsable XML is a :class:`RawSoapError`."""
    size = size or SLICE
    parser = ElementTree.XMLPullParser(events=("start", "end"))
    try:
        for start in range(0, len(body), size):
            parser.feed(body[start:start + size])
            yield from parser.read_events()
        parser.close()
    except ElementTree.ParseError as exc:
        raise RawSoapError(f"{method_name}: unreadable answer ({exc})") from exc


class _Answer:
    """The objects of one ``(Continue)RetrievePropertiesEx`` answer, read slice by slice."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.token: str | None = None
        self.count = 0

    def objects(self, body: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
        name = self.method.name
        depth, in_body, answered = 0, False, False
        for event, element in pull_events(body, name):
            if event == "start":
                depth += 1
                if depth == _BODY:
                    in_body = local(element.tag) == "Body"
                elif depth == _RESPONSE and in_body:
                    if local(element.tag) != f"{name}Response":
                        raise RawSoapError(
                            f"{name}: unexpected answer {local(element.tag)!r}")
                    answered = True
                continue
            if depth == _FIELD and in_body:
                tag = local(element.tag)
                if tag == "objects":
                    self.count += 1
                    yield _object(element)
                elif tag == "token":
                    self.token = element.text or None
                element.clear()
            elif depth == _BODY and not in_body:
                element.clear()             # the envelope's Header
            depth -= 1
        if not answered:
            raise RawSoapError(f"{name}: answer without a SOAP body")


def _object(element: ElementTree.Element) -> tuple[str, dict[str, Any]]:
    moid = ""
    props: dict[str, Any] = {}
    for item in element:
        tag = local(item.tag)
        if tag == "obj":
            moid = item.text or ""
        elif tag == "propSet":
            name = val = None
            for field in item:
                ftag = local(field.tag)
                if ftag == "name":
                    name = field.text or ""
                elif ftag == "val":
                    val = field if len(field) else (field.text or "")
            if name is not None:
                props[name] = val
    return moid, props


def readable(props: dict[str, Any]) -> dict[str, Any]:
    """``props`` of :func:`retrieve` with each element wrapped in :class:`Xml`."""
    return {name: Xml(val, name.rpartition(".")[2])
            if isinstance(val, ElementTree.Element) else val for name, val in props.items()}


# -- reading a value element as the pyVmomi object it stands for ------------------------
# Fields the project reads that are arrays, integers or booleans (the rest is text).
_ARRAYS = frozenset({"filterConfig", "rules", "qualifier"})
_INTS = frozenset({"vlanId", "sequence", "portNumber", "startPortNumber", "endPortNumber",
                   "prefixLength"})
_BOOLS = frozenset({"enabled", "negate", "inherited"})
# ``value`` is a boolean in a BoolPolicy, an integer in an IntExpression.
_VALUE_OF = {"BoolPolicy": "bool", "IntExpression": "int"}
# A field's type when vCenter does not name it (``xsi:type`` is sent only where the
# field's declared type has subtypes).
_FIELD_TYPES = {"forgedTransmits": "BoolPolicy", "macChanges": "BoolPolicy",
                "allowPromiscuous": "BoolPolicy", "blocked": "BoolPolicy",
                "protocol": "IntExpression"}


class Xml:
    """A value element read by attribute, as ``security/vim_spec.py`` reads pyVmomi's
    objects: ``wsdl_name`` is its ``xsi:type``; an absent field is None (an array: [])."""

    __slots__ = ("_fields", "_values", "wsdl_name")

    def __init__(self, element: ElementTree.Element, field: str = "") -> None:
        self.wsdl_name = local(element.get(XSI_TYPE, "")) or _FIELD_TYPES.get(field, "")
        fields: dict[str, list[ElementTree.Element]] = {}
        for child in element:
            fields.setdefault(local(child.tag), []).append(child)
        self._fields = fields
        self._values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            pass
        values = [self._read(name, child) for child in self._fields.get(name, ())]
        value = values if name in _ARRAYS else (values[0] if values else None)
        self._values[name] = value
        return value

    def _read(self, name: str, child: ElementTree.Element) -> Any:
        if len(child) or not child.get(XSI_TYPE, "xsd:").startswith("xsd:"):
            return Xml(child, name)     # fields, or a type of its own (an action)
        text = (child.text or "").strip()
        kind = _VALUE_OF.get(self.wsdl_name) if name == "value" else None
        if name in _BOOLS or kind == "bool":
            return text in ("true", "1")
        if name in _INTS or kind == "int":
            return int(text)
        return child.text or ""
