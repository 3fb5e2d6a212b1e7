"""A VM that vCenter first reports half-made is read again whole when it powers on.

govmomi's simulator works out a new VM's "enter" update from the object as it is at
its next 250 ms tick, and ``CreateVM_Task`` registers the VM before it sets its host,
name and extraConfig, without reporting those later (only ``name`` at the end, then
``runtime.powerState`` at power-on).  A tick inside that window left the watch with a
powered-on VM on no host for good: the watcher never placed its ports, so its MAC never
reached the other leaves (issue 12 item 9; 1 VM in 150 booted as FakeNova boots them
while the watch's long poll was pending, 13 enters in 200 back-to-back creations).

The tick cannot be steered, so the test injects that enter: the real simulator and the
real watch, with the one enter of the new VM cut down to what the simulator sends when
its tick falls inside CreateVM_Task (no host, no name, no extraConfig of ours, no NIC).
"""
from __future__ import annotations

import uuid
from typing import Any, Callable, Iterator

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl
from test_vm_watch import (CARD, WAIT_SECONDS, Admin, datacenter_moid, gather, last_state,
                           session_for, states_of)

from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.vcenter.vm_state import EXTRA_CONFIG, Nic
from networking_dvs_fabric.vcenter.vm_watch import VmWatch

HOST = "DC0_C0_H0"
NOT_SET_YET = ("name", "runtime.host", EXTRA_CONFIG)


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCenterSimulator]:
    with VCenterSimulator(tmp_path_factory.mktemp("vcsim")) as simulator:
        yield simulator


@pytest.fixture
def someone(vcsim: VCenterSimulator) -> Iterator[Admin]:
    other = Admin(vcsim)
    yield other
    other.close()


@pytest.fixture
def vm_watch(vcsim: VCenterSimulator) -> Iterator[VmWatch]:
    session = session_for(vcsim)
    watch = VmWatch(session, datacenter_moid(session), wait_seconds=WAIT_SECONDS)
    yield watch
    watch.close()
    session.close()


def half_made_enters(wait_updates: Callable[[int], list[Any]]) -> Callable[[int], list[Any]]:
    """``VmWatch._wait_updates`` whose VM enters look like a tick inside CreateVM_Task."""
    def wait(max_wait: int) -> list[Any]:
        updates = wait_updates(max_wait)
        for filter_update in updates:
            for update in filter_update.objectSet or []:
                if update.kind != "enter" or not isinstance(update.obj, vim.VirtualMachine):
                    continue
                changes = [c for c in update.changeSet or [] if c.name not in NOT_SET_YET]
                for change in changes:
                    if change.name == "config.hardware.device":   # the defaults only
                        change.val = vim.vm.device.VirtualDevice.Array(
                            [d for d in change.val or [] if not isinstance(d, CARD)])
                update.changeSet = vmodl.query.PropertyCollector.Change.Array(changes)
        return updates
    return wait


def boot_as_nova(admin: Admin, name: str, port_group: Any, mac: str, port_id: str) -> Any:
    """CreateVM_Task with the port's NIC and Nova's keys, then power on."""
    nic = vim.vm.device.VirtualE1000(
        key=-100, addressType="manual", macAddress=mac,
        backing=CARD.DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
            switchUuid=admin.dvs().uuid, portgroupKey=port_group.key)))
    host = admin.named(vim.HostSystem, HOST)
    spec = vim.vm.ConfigSpec(
        name=name, guestId="otherGuest64", numCPUs=1, memoryMB=64,
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)],
        extraConfig=[vim.option.OptionValue(key="nvp.vm-uuid", value="instance-1"),
                     vim.option.OptionValue(key="nvp.iface-id.0", value=port_id)])
    WaitForTask(admin.datacenter.vmFolder.CreateVM_Task(
        config=spec, pool=host.parent.resourcePool, host=host))
    vm = admin.named(vim.VirtualMachine, name)
    WaitForTask(vm.PowerOnVM_Task())
    return vm


def test_a_vm_reported_half_made_is_on_its_host_with_its_port_once_powered_on(
        vm_watch: VmWatch, someone: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    vm_watch.resync()
    monkeypatch.setattr(vm_watch, "_wait_updates", half_made_enters(vm_watch._wait_updates))
    port_group = someone.create_port_group(f"pg-{uuid.uuid4().hex[:8]}", vlan=322)
    name, mac, port_id = f"half-{uuid.uuid4().hex[:8]}", "00:50:56:ab:cd:09", str(uuid.uuid4())
    vm = boot_as_nova(someone, name, port_group, mac, port_id)
    try:
        seen = gather(vm_watch, lambda s: any(st.powered_on for st in states_of(s, vm._moId)))
        state = last_state(seen, vm._moId)
        assert state is not None and state.powered_on
        assert (state.name, state.host) == (name, HOST)
        assert state.nics == (Nic(mac=mac, port_group_key=port_group.key,
                                  dvs_uuid=someone.dvs().uuid),)
        assert (state.claims, state.vm_uuid) == ((port_id,), "instance-1")
    finally:
        WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())
