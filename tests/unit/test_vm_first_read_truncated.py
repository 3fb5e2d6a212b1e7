"""``vcenter/vm_first_read``: the VM watch's first answer, continued while truncated.

vCenter may cut a large ``WaitForUpdatesEx`` answer (``truncated``) and hand the rest
to the next call with the new version; the simulator never does, so a stub stands in
for the HTTP side here (``test_raw_soap``'s).  What an answer holds is checked against
pyVmomi's reading, on the simulator, in ``tests/functional/test_vm_first_read.py``.
"""
from __future__ import annotations

import http.client

import pytest
from pyVmomi import vim
from test_raw_soap import _ENVELOPE, _Collector, _Stub

from networking_dvs_fabric.vcenter import vm_first_read

_METHOD = "WaitForUpdatesEx"


def _vm(moid: str, host: str) -> str:
    return (f'<objectSet><obj type="VirtualMachine">{moid}</obj><kind>enter</kind>'
            f'<changeSet><name>name</name><op>assign</op>'
            f'<val xsi:type="xsd:string">vm {moid}</val></changeSet>'
            f'<changeSet><name>runtime.host</name><op>assign</op>'
            f'<val type="HostSystem" xsi:type="ManagedObjectReference">{host}</val></changeSet>'
            f'</objectSet>')


def _answer(version: str, truncated: bool, *vms: str) -> str:
    inner = (f"<version>{version}</version><filterSet><filter type=\"PropertyFilter\">"
             f"session[1]1</filter>{''.join(vms)}</filterSet>"
             f"<truncated>{'true' if truncated else 'false'}</truncated>")
    return _ENVELOPE.format(method=_METHOD, inner=inner)


def test_a_truncated_answer_is_continued_from_its_version() -> None:
    stub = _Stub([_answer("1", True, _vm("vm-1", "host-1"), _vm("vm-2", "host-1")),
                  _answer("2", False, _vm("vm-3", "host-2"))])
    version, updates = vm_first_read.wait_updates(_Collector(stub), "")
    assert version == "2"
    assert [name for name, _ in stub.asked] == [_METHOD, _METHOD]
    assert [args[0] for _, args in stub.asked] == ["", "1"]
    assert all(args[1].maxWaitSeconds == 0 for _, args in stub.asked)
    objects = [update for f in updates for update in f.objectSet]
    assert [(o.obj._moId, o.kind) for o in objects] == [
        ("vm-1", "enter"), ("vm-2", "enter"), ("vm-3", "enter")]
    assert all(isinstance(o.obj, vim.VirtualMachine) for o in objects)
    third = {c.name: c.val for c in objects[2].changeSet}
    assert third["name"] == "vm vm-3"
    assert isinstance(third["runtime.host"], vim.HostSystem)
    assert third["runtime.host"]._moId == "host-2"


def test_an_answer_without_updates_keeps_the_version() -> None:
    stub = _Stub([_ENVELOPE.format(method=_METHOD, inner="").replace(
        "<returnval></returnval>", "")])
    assert vm_first_read.wait_updates(_Collector(stub), "7") == ("7", [])


def test_an_answer_that_is_not_xml_is_a_temporary_failure_and_drops_the_connections() -> None:
    stub = _Stub(["<html>proxy error"])
    with pytest.raises(http.client.HTTPException, match="unreadable answer"):
        vm_first_read.wait_updates(_Collector(stub), "")
    assert stub.dropped == 1


def test_another_methods_answer_is_refused() -> None:
    stub = _Stub([_ENVELOPE.format(method="RetrievePropertiesEx", inner="")])
    with pytest.raises(http.client.HTTPException, match="unexpected answer"):
        vm_first_read.wait_updates(_Collector(stub), "")


def test_an_answer_with_a_soap_header_is_read_from_its_body() -> None:
    # A SOAP envelope may carry a Header before its Body (a proxy's, a server's own):
    # its elements are not the answer.
    header = ('<soapenv:Header><operationID xmlns="urn:vim25">op-1</operationID>'
              '<other><version>99</version></other></soapenv:Header>')
    answer = _answer("5", False, _vm("vm-1", "host-1")).replace(
        "<soapenv:Body>", header + "<soapenv:Body>")
    version, updates = vm_first_read.wait_updates(_Collector(_Stub([answer])), "")
    assert version == "5"
    assert [o.obj._moId for f in updates for o in f.objectSet] == ["vm-1"]
