"""``VmWatch`` against the real vCenter simulator.

Every change is made by "someone else" (a separate pyVmomi session, ``Admin``), each
test on a VM of its own; every check is on what ``VmWatch.resync``/``wait`` return.
The simulator emits no migration events by itself: the tests post them.
"""
from __future__ import annotations

import datetime
import shutil
import ssl
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from networking_dvs_fabric.lab import vcsim as vcsim_mod
from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.vcenter import vm_state
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession
from networking_dvs_fabric.vcenter.vm_state import Change, MigrationStarting, Nic, VmGone, VmState
from networking_dvs_fabric.vcenter.vm_watch import VmWatch, WatchLost

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("needs the Debian packages golang-go and golang-github-vmware-govmomi-dev",
                allow_module_level=True)

WAIT_SECONDS = 2
DVS = "DVS0"
CARD = vim.vm.device.VirtualEthernetCard
VDS = vim.dvs.VmwareDistributedVirtualSwitch


class Admin:
    """Someone else changing vCenter: a separate pyVmomi session."""

    def __init__(self, sim: VCenterSimulator) -> None:
        self.si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                               pwd=sim.password,
                               sslContext=ssl.create_default_context(cafile=str(sim.ca_file)))
        self.content = self.si.content

    def close(self) -> None:
        try:
            Disconnect(self.si)
        except Exception:  # noqa: BLE001 - the simulator may be gone
            pass

    def _all(self, kind: type) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder, [kind],
                                                            True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def named(self, kind: type, name: str) -> Any:
        return next(obj for obj in self._all(kind) if obj.name == name)

    @property
    def datacenter(self) -> Any:
        return self.named(vim.Datacenter, "DC0")

    def dvs(self) -> Any:
        return self.named(vim.DistributedVirtualSwitch, DVS)

    def create_port_group(self, name: str, vlan: int) -> Any:
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=name, type="earlyBinding", numPorts=8,
            defaultPortConfig=VDS.VmwarePortConfigPolicy(
                vlan=VDS.VlanIdSpec(vlanId=vlan, inherited=False)))
        WaitForTask(self.dvs().AddDVPortgroup_Task([spec]))
        return self.named(vim.dvs.DistributedVirtualPortgroup, name)

    def create_vm(self, name: str, host_name: str = "DC0_C0_H0") -> Any:
        """A powered-on VM without NICs on ``host_name``."""
        host = self.named(vim.HostSystem, host_name)
        config = vim.vm.ConfigSpec(name=name, guestId="otherGuest64", numCPUs=1,
                                   memoryMB=64, files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"))
        WaitForTask(self.datacenter.vmFolder.CreateVM_Task(
            config=config, pool=host.parent.resourcePool, host=host))
        vm = self.named(vim.VirtualMachine, name)
        WaitForTask(vm.PowerOnVM_Task())
        return vm

    def add_nic(self, vm: Any, pg: Any, mac: str, iface_id: str, index: int = 0) -> None:
        """A NIC as Nova's VMware driver adds it: manual MAC, DVS port, nvp.iface-id.N."""
        nic = vim.vm.device.VirtualVmxnet3(
            key=-47, addressType="manual", macAddress=mac,
            backing=CARD.DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
                switchUuid=self.dvs().uuid, portgroupKey=pg.key)))
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)],
            extraConfig=[vim.option.OptionValue(key=f"nvp.iface-id.{index}",
                                                value=iface_id)])))

    def remove_nics(self, vm: Any) -> None:
        nics = [dev for dev in vm.config.hardware.device if isinstance(dev, CARD)]
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=nic)
            for nic in nics])))

    def post_migration(self, kind: type, vm: Any, destination: Any) -> None:
        """A migration event as vCenter writes it (with the datacenter argument)."""
        source = vm.runtime.host
        fields: dict[str, Any] = dict(
            key=0, chainId=0, createdTime=datetime.datetime.now(datetime.timezone.utc),
            userName="drs", vm=vim.event.VmEventArgument(vm=vm, name=vm.name),
            datacenter=vim.event.DatacenterEventArgument(datacenter=self.datacenter,
                                                         name="DC0"),
            computeResource=vim.event.ComputeResourceEventArgument(
                computeResource=source.parent, name=source.parent.name))
        if kind is vim.event.DrsVmMigratedEvent:
            fields.update(host=_host_arg(destination), sourceHost=_host_arg(source))
        else:
            fields.update(host=_host_arg(source), destHost=_host_arg(destination))
        self.content.eventManager.PostEvent(kind(**fields))


def _host_arg(host: Any) -> Any:
    return vim.event.HostEventArgument(host=host, name=host.name)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def gather(watch: VmWatch, done: Callable[[list[Change]], bool],
           timeout: float = 5.0) -> list[Change]:
    """Everything ``wait()`` returns until ``done`` holds for it (or the time is up)."""
    seen: list[Change] = []
    deadline = time.monotonic() + timeout
    while not done(seen) and time.monotonic() < deadline:
        seen.extend(watch.wait())
    return seen


def states_of(seen: list[Change], moid: str) -> list[VmState]:
    return [c for c in seen if isinstance(c, VmState) and c.moid == moid]


def last_state(seen: list[Change], moid: str) -> VmState | None:
    states = states_of(seen, moid)
    return states[-1] if states else None


def session_for(sim: VCenterSimulator) -> VCenterSession:
    return VCenterSession(VCenterConfig(url=sim.url, username=sim.username,
                                        password=sim.password, ca_file=str(sim.ca_file),
                                        request_timeout=30, retries=2, backoff=0.1))


def datacenter_moid(session: VCenterSession) -> str:
    return next(obj._moId for obj, props in session.retrieve(session.si, vim.Datacenter,
                                                               ["name"])
                if props["name"] == "DC0")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCenterSimulator]:
    simulator = VCenterSimulator(tmp_path_factory.mktemp("vcsim"))
    with simulator:
        yield simulator


@pytest.fixture(scope="module")
def admin(sim: VCenterSimulator) -> Iterator[Admin]:
    a = Admin(sim)
    yield a
    a.close()


@pytest.fixture
def session(sim: VCenterSimulator) -> Iterator[VCenterSession]:
    s = session_for(sim)
    yield s
    s.close()


@pytest.fixture
def watch(session: VCenterSession) -> Iterator[VmWatch]:
    w = VmWatch(session, datacenter_moid(session), wait_seconds=WAIT_SECONDS)
    yield w
    w.close()


@pytest.fixture
def vm(admin: Admin) -> Iterator[Any]:
    machine = admin.create_vm(_unique("vm"))
    yield machine
    try:
        if machine.runtime.powerState == "poweredOn":
            WaitForTask(machine.PowerOffVM_Task())
        WaitForTask(machine.Destroy_Task())
    except Exception:  # noqa: BLE001 - the test may have destroyed it
        pass


# -- the picture on resync ------------------------------------------------------------
def test_resync_returns_vms_with_host_names_and_nics(watch: VmWatch) -> None:
    states = {s.name: s for s in watch.resync()}
    assert {"DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1", "DC0_C1_RP0_VM0",
            "DC0_C1_RP0_VM1"} <= set(states)
    state = states["DC0_C1_RP0_VM0"]
    assert state.moid.startswith("vm-")
    assert state.host is not None and state.host.startswith("DC0_C1_H")   # a name, not moid
    assert state.powered_on is True
    [nic] = state.nics                  # the simulator's VMs: one E1000 on DC0_DVPG0
    assert nic.mac == nic.mac.lower() and nic.mac.count(":") == 5
    assert nic.port_group_key is not None and nic.port_group_key.startswith("dvportgroup-")
    assert nic.dvs_uuid and nic.iface_id is None
    assert state.claims == () and state.vm_uuid is None        # not a VM of Nova's


def test_wait_before_resync_raises(watch: VmWatch) -> None:
    with pytest.raises(WatchLost):
        watch.wait()


# -- VM changes -------------------------------------------------------------------------
def test_new_vm_then_nic_with_iface_id(watch: VmWatch, admin: Admin) -> None:
    watch.resync()
    vm = admin.create_vm(_unique("nic"))
    try:
        seen = gather(watch, lambda s: bool(states_of(s, vm._moId)))
        state = last_state(seen, vm._moId)
        assert state is not None and state.name == vm.name
        assert state.host == "DC0_C0_H0" and state.nics == ()

        pg = admin.create_port_group(_unique("pg"), vlan=321)
        iface_id, mac = str(uuid.uuid4()), "00:50:56:AB:CD:01"
        admin.add_nic(vm, pg, mac, iface_id)
        seen = gather(watch, lambda s: any(st.nics for st in states_of(s, vm._moId)))
        state = last_state(seen, vm._moId)
        assert state is not None
        # The watch reports the NIC and the claim; which NIC carries the port is
        # checked against Neutron later (vm_state.place), never assumed.
        assert state.nics == (Nic(mac=mac.lower(), port_group_key=pg.key,
                                  dvs_uuid=admin.dvs().uuid),)
        assert state.claims == (iface_id,)

        admin.remove_nics(vm)
        seen = gather(watch, lambda s: any(not st.nics for st in states_of(s, vm._moId)))
        state = last_state(seen, vm._moId)
        assert state is not None and state.nics == ()

        WaitForTask(vm.PowerOffVM_Task())
        seen = gather(watch, lambda s: any(not st.powered_on for st in states_of(s, vm._moId)))
        state = last_state(seen, vm._moId)
        assert state is not None and state.powered_on is False
        assert state.host == "DC0_C0_H0"     # the rest of the merged state is kept

        WaitForTask(vm.Destroy_Task())
        seen = gather(watch, lambda s: VmGone(vm._moId) in s)
        assert VmGone(vm._moId) in seen
    finally:
        try:
            WaitForTask(vm.Destroy_Task())
        except Exception:  # noqa: BLE001 - destroyed above
            pass


def test_iface_id_freed_by_extra_config_alone(watch: VmWatch, admin: Admin, vm: Any) -> None:
    """Nova's detach writes nvp.iface-id.N = "free"; the simulator reports only devices.

    (Any reconfigure makes the simulator report config.hardware.device, never
    config.extraConfig; the watch reads the extraConfig back on a device change.)
    """
    pg = admin.create_port_group(_unique("pg"), vlan=322)
    iface_id = str(uuid.uuid4())
    admin.add_nic(vm, pg, "00:50:56:ab:cd:02", iface_id)
    states = {s.moid: s for s in watch.resync()}
    assert states[vm._moId].claims == (iface_id,)
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(extraConfig=[
        vim.option.OptionValue(key="nvp.iface-id.0", value="free")])))
    seen = gather(watch, lambda s: bool(states_of(s, vm._moId)))
    state = last_state(seen, vm._moId)
    assert state is not None and state.claims == ()
    assert state.nics[0].mac == "00:50:56:ab:cd:02"


def test_relocate_reports_the_new_host_quickly(watch: VmWatch, admin: Admin, vm: Any) -> None:
    watch.resync()
    target = admin.named(vim.HostSystem, "DC0_C0_H2")
    started = time.monotonic()
    WaitForTask(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=target)))
    seen = gather(watch, lambda s: any(st.host == "DC0_C0_H2"
                                       for st in states_of(s, vm._moId)))
    elapsed = time.monotonic() - started
    state = last_state(seen, vm._moId)
    assert state is not None and state.host == "DC0_C0_H2"
    assert elapsed < 2.0, f"runtime.host change reported after {elapsed:.2f} s"


def test_power_off_reported(watch: VmWatch, vm: Any) -> None:
    states = {s.moid: s for s in watch.resync()}
    assert states[vm._moId].powered_on is True
    WaitForTask(vm.PowerOffVM_Task())
    seen = gather(watch, lambda s: bool(states_of(s, vm._moId)))
    assert [st.powered_on for st in states_of(seen, vm._moId)] == [False]


def test_unchanged_vms_are_not_reported(watch: VmWatch, admin: Admin, vm: Any) -> None:
    watch.resync()
    # A change of a property the watch does not follow: nothing to report.
    WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="hello")))
    assert gather(watch, lambda s: False, timeout=1.0) == []


# -- migration events ------------------------------------------------------------------
# VmBeingMigratedEvent cannot be posted to govmomi 0.24.2's simulator: its message
# template is broken ("{{.Host.Name}," - bad character '}'), the request panics.
@pytest.mark.parametrize("kind", [vim.event.VmBeingHotMigratedEvent,
                                  vim.event.VmBeingRelocatedEvent,
                                  vim.event.DrsVmMigratedEvent])
def test_migration_event_reported_exactly_once(watch: VmWatch, admin: Admin, vm: Any,
                                               kind: type) -> None:
    watch.resync()
    destination = admin.named(vim.HostSystem, "DC0_C0_H1")
    admin.post_migration(kind, vm, destination)
    seen = gather(watch, lambda s: any(isinstance(c, MigrationStarting) for c in s))
    starts = [c for c in seen if isinstance(c, MigrationStarting)]
    assert len(starts) == 1
    start = starts[0]
    assert start.vm_moid == vm._moId and start.destination_host == "DC0_C0_H1"
    assert isinstance(start.event_key, int) and start.event_key > 0
    assert abs((datetime.datetime.now(datetime.timezone.utc) - start.created)
               .total_seconds()) < 30
    # latestPage keeps repeating the event: a later event must not bring it back.
    admin.post_migration(kind, vm, admin.named(vim.HostSystem, "DC0_C0_H2"))
    seen = gather(watch, lambda s: any(isinstance(c, MigrationStarting) for c in s))
    again = [c for c in seen if isinstance(c, MigrationStarting)]
    assert [(c.destination_host, c.event_key > start.event_key) for c in again] == \
        [("DC0_C0_H2", True)]
    assert [c for c in gather(watch, lambda s: False, timeout=0.8)
            if isinstance(c, MigrationStarting)] == []


@pytest.mark.parametrize("kind,field", [
    (vim.event.VmBeingHotMigratedEvent, "destHost"),
    (vim.event.VmBeingMigratedEvent, "destHost"),
    (vim.event.VmBeingRelocatedEvent, "destHost"),
    (vim.event.DrsVmMigratedEvent, "host"),        # a completed move: host = destination
    (vim.event.VmEmigratingEvent, None),           # names no destination
])
def test_destination_of_each_event_type(kind: type, field: str | None) -> None:
    arg = vim.event.HostEventArgument(name="esx-9")
    event = kind(**{field: arg}) if field else kind(host=arg)
    assert vm_state.destination_of(event) is (arg if field else None)


def test_events_before_resync_are_history(session: VCenterSession, admin: Admin,
                                          vm: Any) -> None:
    admin.post_migration(vim.event.VmBeingHotMigratedEvent, vm,
                         admin.named(vim.HostSystem, "DC0_C0_H1"))
    w = VmWatch(session, datacenter_moid(session), wait_seconds=WAIT_SECONDS)
    try:
        w.resync()
        assert [c for c in gather(w, lambda s: False, timeout=1.0)
                if isinstance(c, MigrationStarting)] == []
    finally:
        w.close()


def test_other_events_and_datacenters_ignored(watch: VmWatch, admin: Admin, vm: Any) -> None:
    watch.resync()
    # A VmEmigratingEvent names no destination: not a start.
    admin.content.eventManager.PostEvent(vim.event.VmEmigratingEvent(
        key=0, chainId=0, createdTime=datetime.datetime.now(datetime.timezone.utc),
        userName="x", vm=vim.event.VmEventArgument(vm=vm, name=vm.name),
        host=_host_arg(vm.runtime.host),
        datacenter=vim.event.DatacenterEventArgument(datacenter=admin.datacenter,
                                                     name="DC0")))
    assert [c for c in gather(watch, lambda s: False, timeout=1.0)
            if isinstance(c, MigrationStarting)] == []


# -- cancel and faults -------------------------------------------------------------------
def test_cancel_ends_a_pending_wait_promptly(watch: VmWatch) -> None:
    watch.resync()
    timer = threading.Timer(0.3, watch.cancel)
    started = time.monotonic()
    timer.start()
    try:
        assert watch.wait() == []
    finally:
        timer.join()
    assert time.monotonic() - started < 1.5
    # A cancel between two waits ends the next one at once, and only that one.
    watch.cancel()
    started = time.monotonic()
    assert watch.wait() == []
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    assert watch.wait() == []
    assert time.monotonic() - started > WAIT_SECONDS - 0.5


def test_terminated_session_raises(watch: VmWatch, session: VCenterSession,
                                   admin: Admin) -> None:
    watch.resync()
    key = session.session_key()
    assert key is not None
    admin.content.sessionManager.TerminateSession([key])
    with pytest.raises(WatchLost, match="NotAuthenticated"):
        for _ in range(3):
            watch.wait()
    # resync on the same session logs in again (VCenterSession.invoke)
    assert len(watch.resync()) >= 4


def test_simulator_restart_raises_then_a_new_watch_resyncs(tmp_path: Path) -> None:
    own = VCenterSimulator(tmp_path / "vcsim").start()
    try:
        first = session_for(own)
        w = VmWatch(first, datacenter_moid(first), wait_seconds=WAIT_SECONDS)
        assert len(w.resync()) == 4
        failure: list[BaseException] = []

        def waiting() -> None:
            try:
                for _ in range(20):
                    w.wait()
            except BaseException as exc:  # noqa: BLE001 - what the test looks at
                failure.append(exc)

        thread = threading.Thread(target=waiting)
        thread.start()
        time.sleep(0.3)
        own.restart_with()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert failure and isinstance(failure[0], WatchLost), failure
        w.close()
        first.close()

        second = session_for(own)
        try:
            w2 = VmWatch(second, datacenter_moid(second), wait_seconds=WAIT_SECONDS)
            states = w2.resync()
            assert len(states) == 4 and all(s.host for s in states)
            w2.close()
        finally:
            second.close()
    finally:
        own.stop()
