"""``vcenter/raw_soap``: RetrievePropertiesEx answered without pyVmomi's parser.

The vCenter simulator never pages an answer (it ignores ``maxObjects`` and has no
``ContinueRetrievePropertiesEx``), but vCenter does: here a stub stands in for the
HTTP side (a fake, as the simulator cannot produce a second page) and answers with
two pages, then with garbage.  What the pages hold is read as pyVmomi reads it in
``test_filter_policy_vcsim.py``, against the simulator.
"""
from __future__ import annotations

import http.client
from typing import Any

import pytest
from xml.etree import ElementTree

from networking_dvs_fabric.vcenter import raw_soap

_ENVELOPE = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
             'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
             '<{method}Response xmlns="urn:vim25"><returnval>{inner}</returnval>'
             '</{method}Response></soapenv:Body></soapenv:Envelope>')


def _objects(*moids: str) -> str:
    return "".join(
        f'<objects><obj type="DistributedVirtualPortgroup">{moid}</obj>'
        f'<propSet><name>name</name><val xsi:type="xsd:string">pg {moid}</val></propSet>'
        '<propSet><name>config.defaultPortConfig.blocked</name><val xsi:type="BoolPolicy">'
        '<inherited>false</inherited><value>true</value></val></propSet></objects>'
        for moid in moids)


class _Response:
    def __init__(self, body: bytes) -> None:
        self._body, self.status, self.reason = body, 200, "OK"

    def read(self) -> bytes:
        return self._body

    def getheader(self, name: str) -> str | None:
        return None


class _Stub:
    """Answers each request with the next body; records what was asked."""

    cookie, versionId, path = "vmware_soap_session=1", "urn:vim25/8.0", "/sdk"

    def __init__(self, bodies: list[str]) -> None:
        self.bodies = [b.encode() for b in bodies]
        self.asked: list[tuple[str, list]] = []
        self.dropped = 0
        self.returned = 0
        stub = self

        class _Conn:
            def request(self, *args: Any) -> None:
                pass

            def getresponse(self) -> _Response:
                return _Response(stub.bodies.pop(0))

            def close(self) -> None:
                pass
        self._conn = _Conn

    def SerializeRequest(self, mo: Any, info: Any, args: list) -> bytes:  # noqa: N802
        self.asked.append((info.wsdlName, args))
        return b"<request/>"

    def GetConnection(self) -> Any:  # noqa: N802
        return self._conn()

    def ReturnConnection(self, conn: Any) -> None:  # noqa: N802
        self.returned += 1

    def DropConnections(self) -> None:  # noqa: N802
        self.dropped += 1


class _Collector:
    def __init__(self, stub: _Stub) -> None:
        self._stub = stub


def test_every_page_is_read_and_the_next_asked_for_with_the_token() -> None:
    stub = _Stub([
        _ENVELOPE.format(method="RetrievePropertiesEx",
                         inner="<token>t-1</token>" + _objects("pg-1", "pg-2")),
        _ENVELOPE.format(method="ContinueRetrievePropertiesEx", inner=_objects("pg-3"))])
    seen: list[tuple[str, int]] = []
    raw_soap.observers.append(lambda method, n: seen.append((method, n)))
    try:
        found = raw_soap.retrieve(_Collector(stub), [], page=2)
    finally:
        raw_soap.observers.pop()
    assert [moid for moid, _ in found] == ["pg-1", "pg-2", "pg-3"]
    assert [name for name, _ in stub.asked] == ["RetrievePropertiesEx",
                                                "ContinueRetrievePropertiesEx"]
    assert stub.asked[0][1][1].maxObjects == 2 and stub.asked[1][1] == ["t-1"]
    assert seen == [("RetrievePropertiesEx", 2), ("ContinueRetrievePropertiesEx", 1)]
    props = raw_soap.readable(found[2][1])
    assert props["name"] == "pg pg-3"
    blocked = props["config.defaultPortConfig.blocked"]
    assert blocked.value is True and blocked.inherited is False
    assert stub.returned == 2 and stub.dropped == 0


def test_a_paged_answer_left_part_way_is_cancelled_with_its_token() -> None:
    """A reader that stops early (an error in its loop) leaves vCenter holding the
    rest of the answer for the token until the session ends: it is told to drop it."""
    stub = _Stub([
        _ENVELOPE.format(method="RetrievePropertiesEx",
                         inner="<token>t-7</token>" + _objects("pg-1", "pg-2")),
        _ENVELOPE.format(method="CancelRetrievePropertiesEx", inner="")])
    objects = raw_soap.retrieve_each(_Collector(stub), [], page=2)
    assert next(objects)[0] == "pg-1"
    objects.close()
    assert [name for name, _ in stub.asked] == ["RetrievePropertiesEx",
                                                "CancelRetrievePropertiesEx"]
    assert stub.asked[1][1] == ["t-7"]
    # The last page has no token: nothing to cancel.
    stub = _Stub([_ENVELOPE.format(method="RetrievePropertiesEx",
                                   inner=_objects("pg-1", "pg-2"))])
    objects = raw_soap.retrieve_each(_Collector(stub), [])
    next(objects)
    objects.close()
    assert [name for name, _ in stub.asked] == ["RetrievePropertiesEx"]


def test_an_answer_that_is_not_xml_is_a_temporary_failure_and_drops_the_connections() -> None:
    stub = _Stub(["<html>proxy error"])
    with pytest.raises(http.client.HTTPException, match="unreadable answer"):
        raw_soap.retrieve(_Collector(stub), [])
    assert stub.dropped == 1


def test_values_read_as_pyvmomi_reads_them() -> None:
    """Booleans and integers by field, types with or without a prefix, absent fields
    None and absent arrays empty."""
    body = _ENVELOPE.format(method="RetrievePropertiesEx", inner=(
        '<objects><obj type="X">pg-9</obj><propSet><name>config.defaultPortConfig.'
        'filterPolicy</name><val xsi:type="DvsFilterPolicy"><filterConfig '
        'xsi:type="vim25:DvsTrafficFilterConfig"><agentName>a</agentName><trafficRuleset>'
        '<enabled>true</enabled><rules><sequence>10</sequence><qualifier '
        'xsi:type="DvsIpNetworkRuleQualifier"><protocol><value>6</value><negate>false'
        '</negate></protocol></qualifier></rules></trafficRuleset></filterConfig></val>'
        '</propSet></objects>'))
    (_, props), = raw_soap.retrieve(_Collector(_Stub([body])), [])
    policy = raw_soap.readable(props)["config.defaultPortConfig.filterPolicy"]
    config, = policy.filterConfig
    assert config.wsdl_name == "DvsTrafficFilterConfig"
    rule, = config.trafficRuleset.rules
    assert config.trafficRuleset.enabled is True and rule.sequence == 10
    qualifier, = rule.qualifier
    assert qualifier.protocol.value == 6 and qualifier.protocol.negate is False
    assert qualifier.sourceAddress is None and rule.description is None
    assert config.trafficRuleset.rules[0] is rule        # read once
    assert raw_soap.Xml(ElementTree.fromstring("<filterPolicy/>")).filterConfig == []
