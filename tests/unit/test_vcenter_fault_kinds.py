"""Every vCenter fault has a kind: temporary (retried later) or permanent (reported).

``VCenterSession`` maps each fault pyVmomi raises - from a call or as a task's
error - to the project's errors (``vcenter/faults.py``) with ``temporary`` set and
a message naming the call (so the object), the fault's type and vCenter's words.
The workers decide on the kind: a sweep logs a failing port group and goes on; a
journal entry fails for good on a permanent fault (``dvs-fabric journal`` shows
it) and is retried on a temporary one.

Faults come from govmomi's simulator wherever it produces them with real calls:
DuplicateName, InvalidArgument, NotSupported, AlreadyExists, InvalidName,
ResourceInUse, InvalidPowerState, RequestCanceled, ManagedObjectNotFound.
The simulator checks no privileges, has no concurrent writers, never times out
and cannot fail a task with an arbitrary fault: NoPermission, ConcurrentAccess,
TaskInProgress, Timedout, HostCommunication, SystemError and unknown faults are
injected with ``unittest.mock`` - each place says so.
"""
from __future__ import annotations

import contextlib
import threading
import time
import types
import unittest
import uuid
from typing import Any, Callable, Iterator
from unittest import mock

import dvs_ml2_base as base
from neutron_lib import context as n_context
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from networking_dvs_fabric import names
from networking_dvs_fabric.cmd import journal_cmd
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.vcenter import errors, faults, naming, portgroups
from networking_dvs_fabric.vcenter.port_group_worker import PortGroupWorker
from networking_dvs_fabric.vcenter.portgroups import PortGroupManager
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession
from networking_dvs_fabric.vcenter.sweeper import PortGroupSweeper

_SIM = base.SharedSimulator()
PHYSNET1, DVS1 = "physnet-dvs1", "DVS1"       # a second DVS, without hosts
DENIED = "Permission to perform this operation was denied."


def setUpModule() -> None:
    _SIM.start()
    vc = base.VCenter(_SIM.get())
    try:
        dc = next(d for d in vc._objects(vim.Datacenter) if d.name == "DC0")
        WaitForTask(dc.networkFolder.CreateDVS_Task(vim.DistributedVirtualSwitch.CreateSpec(
            configSpec=vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(name=DVS1))))
    finally:
        vc.close()


def tearDownModule() -> None:
    _SIM.stop()


@contextlib.contextmanager
def destroy_raises(moid: str, fault: BaseException) -> Iterator[list[str]]:
    """``Destroy_Task`` of port group ``moid`` raises ``fault``.

    A mock, because the simulator checks no privileges and has no other writers:
    it never refuses a delete with NoPermission or ConcurrentAccess.  Only this one
    pyVmomi call on this one port group is replaced; every other call, and the
    delete of every other port group, reaches the simulator.  Yields the moids
    whose delete was refused.
    """
    cls = vim.dvs.DistributedVirtualPortgroup
    real = cls.Destroy_Task
    refused: list[str] = []

    def destroy(mo: Any, *args: Any, **kwargs: Any) -> Any:
        if mo._moId == moid:
            refused.append(moid)
            raise fault
        return real.__get__(mo, type(mo))(*args, **kwargs)

    with mock.patch.object(cls, "Destroy_Task", destroy):
        yield refused


# -- (1) each fault kind: the error type, its kind and its message ------------------
class TestFaultKinds(unittest.TestCase):
    """Through ``VCenterSession`` on the simulator: real faults, then injected ones."""

    def setUp(self) -> None:
        sim = _SIM.get()
        self.session = VCenterSession(VCenterConfig(
            url=sim.url, username=sim.username, password=sim.password,
            ca_file=str(sim.ca_file), retries=1))
        self.addCleanup(self.session.close)
        self.vc = base.VCenter(sim)
        self.addCleanup(self.vc.close)

    def task(self, what: str, start: Callable[[Any], Any]) -> None:
        task = self.session.invoke(start, what)
        self.session.wait_for_task(task, what)

    def assertFault(self, call: Callable[[], Any], error_type: type, fault_type: type,
                    temporary: bool, *words: str) -> errors.VCenterError:
        """``call`` raises ``error_type`` of that kind, for ``fault_type``, saying ``words``."""
        with self.assertRaises(error_type) as caught:
            call()
        exc = caught.exception
        self.assertIsInstance(exc, errors.VCenterError)
        self.assertIs(temporary, exc.temporary, str(exc))
        self.assertIs(not temporary, exc.permanent, str(exc))
        self.assertIsInstance(exc.fault, fault_type)
        self.assertIs(exc.fault, exc.__cause__)
        text = str(exc)
        if error_type in (errors.VCenterTemporaryFault, errors.VCenterPermanentFault):
            self.assertTrue(text.startswith(f"{type(exc.fault).__name__} in "), text)
            self.assertIn("temporary, retried later" if temporary else
                          "permanent, not retried", text)
        for word in words:
            self.assertIn(word, text)
        return exc

    # -- real faults, from the simulator ------------------------------------------------
    def test_duplicate_name_task_fault_is_permanent(self):
        dvs = self.vc.dvs()
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name="DC0_DVPG0", type="earlyBinding", numPorts=1)
        what = "create port group 'DC0_DVPG0' on DVS DVS0"
        self.assertFault(lambda: self.task(what, lambda si: dvs.AddDVPortgroup_Task([spec])),
                         errors.VCenterPermanentFault, vim.fault.DuplicateName, False,
                         "vim.fault.DuplicateName in the task of " + what, "name=DC0_DVPG0",
                         "object=vim.dvs.DistributedVirtualPortgroup:")

    def test_invalid_argument_task_fault_is_permanent(self):
        vm0, vm1 = self.vc.vm("DC0_C0_RP0_VM0"), self.vc.vm("DC0_C0_RP0_VM1")
        what = "rename VM DC0_C0_RP0_VM0 to DC0_C0_RP0_VM1"
        self.assertFault(lambda: self.task(what, lambda si: vm0.Rename_Task(vm1.name)),
                         errors.VCenterPermanentFault, vmodl.fault.InvalidArgument, False,
                         "vmodl.fault.InvalidArgument in the task of " + what,
                         "invalidProperty=name")
        self.assertEqual("DC0_C0_RP0_VM0", vm0.name)

    def test_invalid_argument_call_fault_is_permanent(self):
        pcq = vmodl.query.PropertyCollector

        def retrieve(si):
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=si.content.rootFolder, skip=False,
                                          selectSet=[pcq.SelectionSpec(name="nowhere")])],
                propSet=[pcq.PropertySpec(type=vim.Folder, pathSet=["name"])])
            return si.content.propertyCollector.RetrievePropertiesEx(
                [spec], pcq.RetrieveOptions())
        self.assertFault(lambda: self.session.invoke(retrieve, "read the root folder"),
                         errors.VCenterPermanentFault, vmodl.fault.InvalidArgument, False,
                         "vmodl.fault.InvalidArgument in read the root folder",
                         "undefined TraversalSpec name")

    def test_invalid_name_is_permanent(self):
        self.assertFault(
            lambda: self.session.invoke(
                lambda si: si.content.setting.QueryOptions("no.such.option"),
                "read vCenter setting no.such.option"),
            errors.VCenterPermanentFault, vim.fault.InvalidName, False,
            "vim.fault.InvalidName in read vCenter setting no.such.option",
            "name=no.such.option")

    def _reconfigure_host(self, operation: str) -> Callable[[], None]:
        dvs = self.vc.dvs()
        host = self.vc.vm().runtime.host      # a member of DVS0, with a VM on DC0_DVPG0
        spec = vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(
            configVersion=dvs.config.configVersion,
            host=[vim.dvs.HostMember.ConfigSpec(operation=operation, host=host)])
        what = f"{operation} host {host.name} on DVS DVS0"
        return lambda: self.task(what, lambda si: dvs.ReconfigureDvs_Task(spec))

    def test_not_supported_is_permanent(self):
        self.assertFault(self._reconfigure_host("edit"), errors.VCenterPermanentFault,
                         vmodl.fault.NotSupported, False,
                         "vmodl.fault.NotSupported in the task of edit host")

    def test_already_exists_is_permanent(self):
        self.assertFault(self._reconfigure_host("add"), errors.VCenterPermanentFault,
                         vim.fault.AlreadyExists, False,
                         "vim.fault.AlreadyExists in the task of add host", "name=DC0_C")

    def test_resource_in_use_is_temporary(self):
        self.assertFault(self._reconfigure_host("remove"), errors.VCenterTemporaryFault,
                         vim.fault.ResourceInUse, True,
                         "vim.fault.ResourceInUse in the task of remove host",
                         "type=DistributedVirtualPortgroup")
        self.assertIn(self.vc.vm().runtime.host, self.vc.dvs().summary.hostMember)

    def test_invalid_state_is_temporary(self):
        vm = self.vc.vm()
        self.assertEqual("poweredOn", vm.runtime.powerState)
        what = f"power on VM {vm.name}"
        self.assertFault(lambda: self.task(what, lambda si: vm.PowerOnVM_Task()),
                         errors.VCenterTemporaryFault, vim.fault.InvalidPowerState, True,
                         "vim.fault.InvalidPowerState in the task of " + what,
                         "existingState=poweredOn")

    def test_request_canceled_is_temporary(self):
        pcq = vmodl.query.PropertyCollector
        dvs = self.vc.dvs()
        pc = self.session.invoke(
            lambda si: si.content.propertyCollector.CreatePropertyCollector(), "collector")
        self.addCleanup(lambda: self.session.invoke(lambda si: pc.Destroy(), "destroy"))
        self.session.invoke(lambda si: pc.CreateFilter(pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=dvs)],
            propSet=[pcq.PropertySpec(type=vim.DistributedVirtualSwitch, pathSet=["name"])]),
            partialUpdates=False), "filter")
        version = self.session.invoke(
            lambda si: pc.WaitForUpdatesEx("", pcq.WaitOptions(maxWaitSeconds=0)).version,
            "first read")
        # Another thread cancels the wait, as a watch's stop() does.
        other = self.session.channel()
        timer = threading.Timer(0.5, other.invoke, (lambda si: pc.CancelWaitForUpdates(),
                                                     "cancel"))
        timer.start()
        self.addCleanup(timer.cancel)
        started = time.monotonic()
        self.assertFault(lambda: self.session.invoke(
            lambda si: pc.WaitForUpdatesEx(version, pcq.WaitOptions(maxWaitSeconds=20)),
            "wait for DVS0"), errors.VCenterTemporaryFault, vmodl.fault.RequestCanceled,
            True, "vmodl.fault.RequestCanceled in wait for DVS0")
        self.assertLess(time.monotonic() - started, 10)

    def test_managed_object_not_found_is_not_found(self):
        def read(si):
            return vim.dvs.DistributedVirtualPortgroup("dvportgroup-9999", si._stub).config
        self.assertFault(lambda: self.session.invoke(read, "read port group dvportgroup-9999"),
                         errors.VCenterNotFound, vmodl.fault.ManagedObjectNotFound, False,
                         "read port group dvportgroup-9999: object "
                         "vim.dvs.DistributedVirtualPortgroup:dvportgroup-9999 no longer exists")

    def test_destroy_of_a_missing_port_group_is_not_found(self):
        what = "delete port group dvportgroup-9999"
        self.assertFault(lambda: self.task(what, lambda si: vim.dvs.DistributedVirtualPortgroup(
            "dvportgroup-9999", si._stub).Destroy_Task()), errors.VCenterNotFound,
            vmodl.fault.ManagedObjectNotFound, False, what, "dvportgroup-9999")

    # -- injected: the simulator cannot produce these ---------------------------------
    # (no privileges, no concurrent writers, no host trouble, no internal errors)
    INJECTED = [
        (vim.fault.NoPermission(msg=DENIED, privilegeId="DVPortgroup.Delete",
                                object=vim.dvs.DistributedVirtualPortgroup("dvportgroup-42")),
         False, [DENIED, "privilegeId=DVPortgroup.Delete",
                 "object=vim.dvs.DistributedVirtualPortgroup:dvportgroup-42"]),
        (vim.fault.NoPermission(msg=DENIED, missingPrivileges=[
            vim.fault.NoPermission.EntityPrivileges(entity=vim.Folder("group-n7"),
                                                    privilegeIds=["DVPortgroup.Create"])]),
         False, ["entity=vim.Folder:group-n7", "privilegeIds=[DVPortgroup.Create]"]),
        (vim.fault.InvalidPrivilege(privilege="DVPortgroup.Nope"), False,
         ["privilege=DVPortgroup.Nope"]),
        (vmodl.fault.NotImplemented(), False, []),
        (vim.fault.DvsNotAuthorized(sessionExtensionKey="x", dvsExtensionKey="com.vmware.nsx"),
         False, ["dvsExtensionKey=com.vmware.nsx"]),
        (vim.fault.ConcurrentAccess(msg="Cannot complete operation due to concurrent "
                                        "modification by another operation."), True,
         ["concurrent modification"]),
        (vim.fault.TaskInProgress(task=vim.Task("task-77")), True, ["task=vim.Task:task-77"]),
        (vim.fault.Timedout(msg="Operation timed out."), True, ["Operation timed out."]),
        (vim.fault.InvalidState(), True, []),
        (vim.fault.DvsOperationBulkFault(), True, []),
        (vmodl.fault.HostNotConnected(msg="host DC0_C0_H0 is not connected"), True,
         ["not connected"]),
        (vmodl.fault.SystemError(reason="vpxd restarting",
                                 faultCause=vim.fault.Timedout(msg="lock wait")), True,
         ["reason=vpxd restarting", "caused by vim.fault.Timedout: lock wait"]),
        # Not in either list: the rule says permanent (errors.py tells why).
        (vim.fault.FileNotFound(file="[ds] nowhere.vmdk"), False, ["file=[ds] nowhere.vmdk"]),
        (vim.fault.VmConfigFault(faultMessage=[vmodl.LocalizableMessage(
            key="vm.cfg", message="something only vCenter knows")]), False,
         ["something only vCenter knows"]),
    ]

    def test_injected_call_faults(self):
        """The fault raised by the pyVmomi call inside ``invoke`` (a stand-in function:
        the simulator cannot raise these)."""
        for fault, temporary, words in self.INJECTED:
            name = type(fault).__name__
            with self.subTest(name):
                def call(si, fault=fault):
                    raise fault
                what = "delete port group 'pg-1' from DVS DVS0"
                self.assertFault(
                    lambda call=call, what=what: self.session.invoke(call, what),
                    errors.VCenterTemporaryFault if temporary else errors.VCenterPermanentFault,
                    type(fault), temporary, f"{name} in {what}", *words)
                self.assertIs(temporary, faults.is_temporary(fault))

    def test_injected_task_faults(self):
        """The fault as a task's error: a stub task (the simulator's tasks cannot end in
        these faults); ``wait_for_task`` itself is the real one."""
        for fault, temporary, words in self.INJECTED:
            name = type(fault).__name__
            with self.subTest(name):
                task = types.SimpleNamespace(
                    info=types.SimpleNamespace(state="error", error=fault, result=None),
                    _moId="task-1")
                what = "create port group 'pg-1' (VLAN 5) on DVS DVS0"
                self.assertFault(
                    lambda task=task, what=what: self.session.wait_for_task(task, what),
                    errors.VCenterTemporaryFault if temporary else errors.VCenterPermanentFault,
                    type(fault), temporary, f"{name} in the task of {what}", *words)

    def test_not_authenticated_in_a_task_is_an_auth_error(self):
        task = types.SimpleNamespace(info=types.SimpleNamespace(
            state="error", error=vim.fault.NotAuthenticated(), result=None))
        self.assertFault(lambda: self.session.wait_for_task(task, "delete port group 'x'"),
                         errors.VCenterAuthError, vim.fault.NotAuthenticated, True,
                         "vim.fault.NotAuthenticated in the task of delete port group 'x'")

    def test_the_two_lists_do_not_overlap(self):
        for temporary in faults.TEMPORARY:
            for permanent in faults.PERMANENT:
                self.assertFalse(issubclass(temporary, permanent) or
                                 issubclass(permanent, temporary), (temporary, permanent))

    def test_every_error_has_a_kind_and_is_a_vcenter_error(self):
        kinds = {
            errors.VCenterError: False, errors.VCenterUnreachable: True,
            errors.VCenterAuthError: True, errors.VCenterCertificateError: True,
            errors.VCenterNotFound: False, errors.VCenterTaskFailed: False,
            errors.VCenterTaskTimeout: True, errors.VCenterFault: False,
            errors.VCenterTemporaryFault: True, errors.VCenterPermanentFault: False,
            errors.PortGroupNotOwned: False, errors.PortGroupNameTaken: False,
            errors.PortGroupInUse: True,
        }
        for cls, temporary in kinds.items():
            with self.subTest(cls.__name__):
                self.assertTrue(issubclass(cls, errors.VCenterError))
                self.assertIs(temporary, cls("x").temporary)
                self.assertIs(not temporary, cls("x").permanent)

        class OldStyle(errors.VCenterError):      # as vm_watch.WatchLost says it
            permanent = False
        self.assertTrue(OldStyle("x").temporary)


# -- (2) and (3): the sweep and the journal worker with the vsphere_dvs driver ------------
class VSphereFaultsTestCase(base.VSphereDVSTestCase):
    shared = _SIM
    vlan_ranges = base.VSphereDVSTestCase.vlan_ranges + [f"{PHYSNET1}:100:199"]

    def vsphere_options(self):
        return {**super().vsphere_options(),
                "dvs_mappings": [f"{base.PHYSNET}:{base.DVS}", f"{PHYSNET1}:{DVS1}"]}

    def unused_port_group(self, physnet: str = base.PHYSNET, dvs: str = base.DVS,
                          vlan: int = 150) -> base.PG:
        """One of our port groups that no Neutron port uses (a network deleted meanwhile)."""
        network_id = str(uuid.uuid4())
        made = self.mech.backend.ensure_port_group(physnet, network_id, "gone", vlan)
        pg = self.vc.port_group(made.pg_key, dvs_name=dvs)
        assert pg is not None
        self.assertIn(naming.marker(network_id, self.mech.backend.deployment()),
                      pg.description or "")
        return pg


class TestSweep(VSphereFaultsTestCase):

    def test_sweep_goes_past_a_port_group_whose_delete_is_refused(self):
        refused = self.unused_port_group(vlan=151)       # first: listed before the others
        other = self.unused_port_group(vlan=152)
        on_dvs1 = self.unused_port_group(PHYSNET1, DVS1, vlan=153)
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        self.assertEqual([], sweeper.sweep_once())        # first sweep: suspects only

        fault = vim.fault.NoPermission(
            msg=DENIED, privilegeId="DVPortgroup.Delete",
            object=vim.dvs.DistributedVirtualPortgroup(refused.moid))
        with destroy_raises(refused.moid, fault) as tried, \
                self.assertLogs(base.LOGGER, "WARNING") as logs:
            deleted = sweeper.sweep_once()
        self.assertEqual([refused.moid], tried)
        self.assertIn(other.name, deleted)
        self.assertIn(on_dvs1.name, deleted)                 # the next DVS too
        self.assertNotIn(refused.name, deleted)
        self.assertIsNotNone(self.vc.port_group(refused.key))
        self.assertIsNone(self.vc.port_group(other.key))
        self.assertIsNone(self.vc.port_group(on_dvs1.key, dvs_name=DVS1))
        text = base.log_lines(logs.records)
        for word in (f"port group {refused.name} on DVS {base.DVS} not removed",
                     "permanent", "vim.fault.NoPermission", "DVPortgroup.Delete",
                     f"delete port group {refused.name!r} from DVS {base.DVS}"):
            self.assertIn(word, text)

        # The privilege granted: the next sweep removes it (it stayed a suspect).
        self.assertIn(refused.name, sweeper.sweep_once())
        self.assertIsNone(self.vc.port_group(refused.key))

    def test_sweep_goes_past_a_dvs_it_cannot_list(self):
        on_dvs0 = self.unused_port_group(vlan=161)
        on_dvs1 = self.unused_port_group(PHYSNET1, DVS1, vlan=162)
        dvs0 = self.vc.dvs()
        real_retrieve = portgroups.raw_soap.retrieve_each

        def retrieve(pc, specs, *args, **kwargs):
            # A mock: the simulator checks no privileges.  Reading DVS0's port groups
            # is refused as vCenter refuses a user without System.Read on it.
            specs = list(specs)
            if specs[0].objectSet[0].obj._moId == dvs0._moId:
                raise vim.fault.NoPermission(msg=DENIED, privilegeId="System.Read",
                                             object=specs[0].objectSet[0].obj)
            return real_retrieve(pc, specs, *args, **kwargs)

        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        with mock.patch.object(portgroups.raw_soap, "retrieve_each", retrieve), \
                self.assertLogs(base.LOGGER, "WARNING") as logs:
            self.assertEqual([], sweeper.sweep_once())
            self.assertIn(on_dvs1.name, sweeper.sweep_once())
        text = base.log_lines(logs.records)
        self.assertIn(f"DVS {base.DVS} not readable now", text)
        self.assertIn("vim.fault.NoPermission in list port groups of DVS DVS0", text)
        self.assertIn("privilegeId=System.Read", text)
        self.assertIsNotNone(self.vc.port_group(on_dvs0.key))
        self.assertIsNone(self.vc.port_group(on_dvs1.key, dvs_name=DVS1))


class TestJournal(VSphereFaultsTestCase):

    def released_port_group(self) -> tuple[base.PG, str, PortGroupWorker]:
        """A port deleted (its port group's release journalled, not yet handled)."""
        net = self.make_network()
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        self._delete("ports", port["id"], as_admin=True)     # no drain_journal
        return pg, names.port_group_resource(net["id"], base.DVS), \
            PortGroupWorker(self.mech.runtime)

    def journal_rows(self, resource_id: str) -> list[dict]:
        return [row for row in store.rows(n_context.get_admin_context())
                if row["resource_type"] == names.RESOURCE_PORT_GROUP
                and row["resource_id"] == resource_id]

    def test_permanent_fault_fails_the_entry_after_one_pass(self):
        pg, resource_id, worker = self.released_port_group()
        fault = vim.fault.NoPermission(msg=DENIED, privilegeId="DVPortgroup.Delete",
                                       object=vim.dvs.DistributedVirtualPortgroup(pg.moid))
        with destroy_raises(pg.moid, fault) as tried, \
                self.assertLogs(base.LOGGER, "ERROR") as logs:
            self.assertTrue(worker.run_once())
        self.assertEqual([pg.moid], tried)
        rows = self.journal_rows(resource_id)
        self.assertEqual([store.FAILED], [row["state"] for row in rows])
        error = rows[0]["last_error"]
        for word in ("vim.fault.NoPermission", f"delete port group {pg.name!r} from DVS DVS0",
                     DENIED, "privilegeId=DVPortgroup.Delete", "permanent, not retried"):
            self.assertIn(word, error)
        self.assertIn("failed for good", base.log_lines(logs.records))
        self.assertIsNotNone(self.vc.port_group(pg.key))
        self.assertFalse(worker.run_once())                  # not retried
        # As ``dvs-fabric journal`` lists it: the fault within the 100 characters shown.
        listing = journal_cmd.format_rows(self.journal_rows(resource_id))
        line = next(line for line in listing.splitlines() if resource_id[:48] in line)
        self.assertIn("failed", line)
        self.assertIn("vim.fault.NoPermission in delete port group", line)

    def test_temporary_fault_leaves_the_entry_pending_for_retry(self):
        pg, resource_id, worker = self.released_port_group()
        fault = vim.fault.ConcurrentAccess(msg="concurrent modification by another operation")
        with destroy_raises(pg.moid, fault) as tried, self.assertLogs(base.LOGGER, "WARNING"):
            self.assertTrue(worker.run_once())
        self.assertEqual([pg.moid], tried)
        rows = self.journal_rows(resource_id)
        self.assertEqual([store.PENDING], [row["state"] for row in rows])
        self.assertEqual(1, rows[0]["attempts"])
        for word in ("vim.fault.ConcurrentAccess", f"delete port group {pg.name!r}",
                     "temporary, retried later"):
            self.assertIn(word, rows[0]["last_error"])
        self.assertIsNotNone(self.vc.port_group(pg.key))

        # The other writer done: the retry (after its back-off) deletes it.
        self.assertTrue(base.wait_for(worker.run_once, timeout=10, interval=0.1))
        self.assertEqual([store.COMPLETED],
                         [row["state"] for row in self.journal_rows(resource_id)])
        self.assertPortGroupGone(pg.key)

    def test_resource_in_use_on_delete_is_still_port_group_in_use(self):
        """vCenter refusing the delete with ResourceInUse: kept and retried, as before."""
        pg, resource_id, worker = self.released_port_group()
        # A mock: the simulator's Destroy_Task of a port group never checks for users.
        fault = vim.fault.ResourceInUse(name=pg.name, type=vim.dvs.DistributedVirtualPortgroup)
        with destroy_raises(pg.moid, fault), self.assertLogs(base.LOGGER, "WARNING") as logs:
            self.assertTrue(worker.run_once())
        rows = self.journal_rows(resource_id)
        self.assertEqual([store.PENDING], [row["state"] for row in rows])
        self.assertIn("still used by VMs Neutron does not know", rows[0]["last_error"])
        self.assertIn("vCenter says it is in use; kept, will retry",
                      base.log_lines(logs.records))
        self.assertIsNotNone(self.vc.port_group(pg.key))


class TestSpecialCasesKept(VSphereFaultsTestCase):

    def test_name_taken_on_another_dvs_gives_the_dvs_qualified_name(self):
        """DuplicateName (real, from the simulator) for a name another DVS holds."""
        network_id = str(uuid.uuid4())
        first = self.mech.backend.ensure_port_group(base.PHYSNET, network_id, "same", 171)
        with self.assertLogs(base.LOGGER, "INFO") as logs:
            second = self.mech.backend.ensure_port_group(PHYSNET1, network_id, "same", 172)
        self.assertNotEqual(first.pg_name, second.pg_name)
        self.assertIn(DVS1, second.pg_name)
        self.assertIn("the name is taken elsewhere in the datacenter",
                      base.log_lines(logs.records))

    def test_concurrent_creator_is_adopted(self):
        """DuplicateName (real) for our own port group made meanwhile by another worker."""
        network_id = str(uuid.uuid4())
        backend = self.mech.backend
        name = backend.port_group_name(base.DVS, base.PHYSNET, network_id, "raced")
        self.vc.create_port_group(name, 181, description=naming.marker(network_id))
        manager = PortGroupManager(backend.session, backend.inventory().dvs[base.DVS])
        with self.assertLogs(base.LOGGER, "INFO") as logs:
            pg = manager.create(name, network_id, 181)
        self.assertEqual(name, pg.name)
        self.assertIn("adopting it", base.log_lines(logs.records))
        self.assertEqual(1, len(self.vc.port_groups_of(network_id)))
