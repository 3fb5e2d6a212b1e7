"""The VM watch's first read of the datacenter, against the real vCenter simulator.

``VmWatch.resync`` reads every VM in one answer (26 MB with 5,000 VMs) without
pyVmomi's parser (``vcenter/vm_first_read.py``).  What it makes of each VM must be
what pyVmomi reads of the same VM: VMs as Nova makes them (several cards, one port
detached and its key freed, a card of the template on another port group), powered
off, and the simulator's own.  And pyVmomi must parse no more of a resync with more
VMs: every element it parses is counted.
"""
from __future__ import annotations

import uuid
from typing import Any, Iterator
from unittest import mock

import pytest
from pyVim.task import WaitForTask
from pyVmomi import SoapAdapter, vim
from test_vm_watch import Admin, datacenter_moid, session_for

from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.vcenter import vm_state
from networking_dvs_fabric.vcenter.session import VCenterSession
from networking_dvs_fabric.vcenter.vm_state import VM_PROPERTIES, VmState
from networking_dvs_fabric.vcenter.vm_watch import VmWatch

CARD = vim.vm.device.VirtualEthernetCard


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCenterSimulator]:
    with VCenterSimulator(tmp_path_factory.mktemp("vcsim")) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def someone(vcsim: VCenterSimulator) -> Iterator[Admin]:
    other = Admin(vcsim)
    yield other
    other.close()


@pytest.fixture
def session(vcsim: VCenterSimulator) -> Iterator[VCenterSession]:
    s = session_for(vcsim)
    yield s
    s.close()


def nova_vm(someone: Admin, pgs: list[Any], powered_on: bool = True) -> Any:
    """A VM as Nova makes it: a template card on ``pgs[0]``, then one card per port
    (``nvp.iface-id.N``) on the others; the second port is then detached as Nova
    detaches it (card removed, its key says ``free``)."""
    name = f"nova-{uuid.uuid4().hex[:8]}"
    host = someone.named(vim.HostSystem, "DC0_C0_H1")
    dvs_uuid = someone.dvs().uuid
    cards = [vim.vm.device.VirtualDeviceSpec(operation="add", device=_card(
        kind, -100 - n, dvs_uuid, pg.key)) for n, (kind, pg) in enumerate(
            zip((vim.vm.device.VirtualE1000, vim.vm.device.VirtualVmxnet3,
                 vim.vm.device.VirtualE1000e), pgs))]
    ports = [str(uuid.uuid4()) for _ in pgs[1:]]
    extra = [vim.option.OptionValue(key="nvp.vm-uuid", value=str(uuid.uuid4()))]
    extra += [vim.option.OptionValue(key=f"nvp.iface-id.{n}", value=port)
              for n, port in enumerate(ports)]
    spec = vim.vm.ConfigSpec(name=name, guestId="otherGuest64", numCPUs=1, memoryMB=64,
                             files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
                             deviceChange=cards, extraConfig=extra)
    WaitForTask(someone.datacenter.vmFolder.CreateVM_Task(
        config=spec, pool=host.parent.resourcePool, host=host))
    vm = someone.named(vim.VirtualMachine, name)
    detached = [d for d in vm.config.hardware.device if isinstance(d, CARD)][-1]
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=detached)],
        extraConfig=[vim.option.OptionValue(key=f"nvp.iface-id.{len(ports) - 1}",
                                            value="free")])))
    if powered_on:
        WaitForTask(vm.PowerOnVM_Task())
    return vm


def _card(kind: type, key: int, dvs_uuid: str, pg_key: str) -> Any:
    mac = "fa:16:3e:%02x:%02x:%02x" % tuple(uuid.uuid4().bytes[:3])
    return kind(key=key, addressType="manual", macAddress=mac.upper(),
                backing=CARD.DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
                    switchUuid=dvs_uuid, portgroupKey=pg_key)),
                connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                    startConnected=True, connected=True, allowGuestControl=True))


def as_pyvmomi_reads_them(session: VCenterSession) -> dict[str, VmState]:
    """Every VM's state from the same properties read (and parsed) by pyVmomi."""
    si = session.si
    hosts = {obj._moId: props["name"]
             for obj, props in session.retrieve(si, vim.HostSystem, ["name"])}
    out = {}
    for obj, props in session.retrieve(si, vim.VirtualMachine, list(VM_PROPERTIES)):
        host = props.get("runtime.host")
        extra = list(props.get(vm_state.EXTRA_CONFIG) or [])
        out[obj._moId] = VmState(
            moid=obj._moId, name=props.get("name") or "",
            host=hosts.get(host._moId) if host is not None else None,
            powered_on=props.get("runtime.powerState") == "poweredOn",
            nics=vm_state.nics_of(list(props.get(vm_state.DEVICES) or [])),
            claims=vm_state.claims_of(extra), vm_uuid=vm_state.vm_uuid_of(extra))
    return out


def resync(session: VCenterSession) -> list[VmState]:
    watch = VmWatch(session, datacenter_moid(session), wait_seconds=2)
    try:
        return watch.resync()
    finally:
        watch.close()


def test_the_first_read_sees_every_vm_as_pyvmomi_reads_it(someone: Admin,
                                                          session: VCenterSession) -> None:
    pgs = [someone.create_port_group(f"pg-{uuid.uuid4().hex[:6]}", 100 + n)
           for n in range(3)]
    running = nova_vm(someone, pgs)
    stopped = nova_vm(someone, pgs, powered_on=False)
    seen = {state.moid: state for state in resync(session)}
    assert seen == as_pyvmomi_reads_them(session)
    vm = seen[running._moId]
    assert vm.powered_on and vm.host == "DC0_C0_H1"
    assert [nic.port_group_key for nic in vm.nics] == [pgs[0].key, pgs[1].key]
    assert all(nic.mac == nic.mac.lower() and nic.dvs_uuid for nic in vm.nics)
    assert len(vm.claims) == 1 and vm.vm_uuid         # the detached port's key is free
    assert not seen[stopped._moId].powered_on
    assert len(seen) >= 6                              # the simulator's own VMs too


def test_pyvmomi_parses_no_more_of_a_first_read_with_more_vms(
        someone: Admin, session: VCenterSession) -> None:
    pgs = [someone.create_port_group(f"pg-{uuid.uuid4().hex[:6]}", 200 + n)
           for n in range(2)]
    resync(session)                          # the session's own first calls out of the way
    before = len(resync(session))
    few = _elements_parsed_by_pyvmomi(lambda: resync(session))
    for _ in range(8):
        nova_vm(someone, pgs)
    assert len(resync(session)) == before + 8
    more = _elements_parsed_by_pyvmomi(lambda: resync(session))
    assert more == few, f"pyVmomi parsed {few} elements, then {more} with 8 VMs more"


def _elements_parsed_by_pyvmomi(call: Any) -> int:
    parsed = 0
    original = SoapAdapter.SoapDeserializer.StartElementHandler

    def counting(self: Any, tag: str, attr: Any) -> Any:
        nonlocal parsed
        parsed += 1
        return original(self, tag, attr)

    with mock.patch.object(SoapAdapter.SoapDeserializer, "StartElementHandler", counting):
        call()
    return parsed
