"""What one port group create and one release cost vCenter, as the DVS fills up.

Every SOAP call the test's own thread makes is recorded where pyVmomi sends it
(``SoapStubAdapter.InvokeMethod``: methods and property reads alike; ``raw_soap``'s
observers for the reads parsed without pyVmomi), with the
number of objects its answer held; the port group watch's thread is not counted
(it follows changes, one update per change, whatever the DVS holds).  A create and
a release with 10 port groups on the DVS and with 70 must make the same calls and
get the same answers' sizes: nothing of them lists the DVS's port groups.
"""
from __future__ import annotations

import shutil
import ssl
import threading
import uuid
from typing import Any, Iterator
from unittest import mock

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import SoapAdapter, vim

from networking_dvs_fabric.lab import vcsim as vcsim_mod
from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.vcenter import naming, pg_users, raw_soap
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.portgroups import NO_CREATE_DVPG, PortGroupManager
from vcsim_backend import DVS, PHYSNET, started_backend

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("needs the Debian packages golang-go and golang-github-vmware-govmomi-dev",
                allow_module_level=True)

Call = tuple[str, int]      # (SOAP method, objects in the answer)


def _size(result: Any) -> int:
    if result is None:
        return 0
    objects = getattr(result, "objects", None)        # a RetrieveResult
    if objects is not None:
        return len(objects)
    return len(result) if isinstance(result, list) else 1


class Calls:
    """Record the SOAP calls this thread makes inside ``with``."""

    def __enter__(self) -> list[Call]:
        self.calls: list[Call] = []
        original = SoapAdapter.SoapStubAdapter.InvokeMethod
        thread = threading.get_ident()
        calls = self.calls

        def invoke(stub: Any, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:
            result = None
            try:
                result = original(stub, mo, info, args, outerStub)
                return result
            finally:
                if threading.get_ident() == thread:
                    calls.append((info.wsdlName, _size(result)))
        def raw(method: str, objects: int) -> None:         # ``raw_soap``'s calls
            if threading.get_ident() == thread:
                calls.append((method, objects))
        self._raw = raw
        self._patch = mock.patch.object(SoapAdapter.SoapStubAdapter, "InvokeMethod", invoke)
        self._patch.start()
        raw_soap.observers.append(raw)
        return self.calls

    def __exit__(self, *exc: Any) -> None:
        self._patch.stop()
        raw_soap.observers.remove(self._raw)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCenterSimulator]:
    simulator = VCenterSimulator(tmp_path_factory.mktemp("vcsim-costs"))
    with simulator:
        yield simulator


@pytest.fixture(scope="module")
def backend(sim: VCenterSimulator) -> Iterator[VSphereBackend]:
    with started_backend(sim) as made:
        yield made


@pytest.fixture(scope="module")
def admin(sim: VCenterSimulator) -> Iterator[Any]:
    si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username, pwd=sim.password,
                      sslContext=ssl.create_default_context(cafile=str(sim.ca_file)))
    yield si
    Disconnect(si)


def _fill(admin: Any, backend: VSphereBackend, total: int) -> None:
    """Port groups on the DVS up to ``total``: others' networks' (marked, so the watch
    follows them) and a few without a marker."""
    dvs = vim.DistributedVirtualSwitch(backend.inventory().dvs[DVS].moid, admin._stub)
    missing = total - len(dvs.portgroup)
    specs = [vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=f"filler-{uuid.uuid4()}", type="earlyBinding", numPorts=8,
        description=naming.marker(str(uuid.uuid4())) if i % 5 else "an admin's")
        for i in range(missing)]
    if specs:
        WaitForTask(dvs.AddDVPortgroup_Task(specs))
    assert len(dvs.portgroup) == total


def _costs(backend: VSphereBackend) -> tuple[list[Call], list[Call], list[Call]]:
    """The calls of: a create (by a bind), a concurrent creator's losing create, and
    the release of the network's port group."""
    network_id = str(uuid.uuid4())
    with Calls() as create:
        made = backend.ensure_port_group(PHYSNET, network_id, "costs", 300)
    manager = PortGroupManager(backend.session, backend.inventory().dvs[DVS])
    with Calls() as loser:
        assert manager.create(made.pg_name, network_id, 300).key == made.pg_key
    with Calls() as release:
        assert backend.release_port_group(DVS, network_id, lambda pg=None: False)
    assert backend.network_port_groups(DVS, network_id, full=False) == []
    return create, loser, release


def test_create_and_release_cost_the_same_with_10_or_70_port_groups(admin, backend) -> None:
    _costs(backend)     # learns once what this vCenter lacks (CreateDVPortgroup_Task)
    assert backend.session.traits.get(NO_CREATE_DVPG) is True
    _fill(admin, backend, 10)
    small = _costs(backend)
    _fill(admin, backend, 70)
    big = _costs(backend)
    assert small == big
    for calls in small:
        # Never an answer as long as the DVS's list (the simulator's 4 VMs: one read).
        assert calls and max(size for _, size in calls) < 10, calls
    create, _, release = small
    # The simulator has no CreateDVPortgroup_Task: the port group made is found by name.
    assert [name for name, _ in create] == [
        "AddDVPortgroup_Task", "Fetch", "FindChild", "RetrievePropertiesEx"]
    assert ("Destroy_Task", 1) in release


def test_a_vcenter_that_fills_network_vm_is_asked_once_for_a_port_groups_vms(
        admin, backend) -> None:
    """The simulator never fills ``Network.vm``; against vCenter, which does, that
    is learnt once and a port group's VMs cost one read (taken here as learnt)."""
    network_id = str(uuid.uuid4())
    made = backend.ensure_port_group(PHYSNET, network_id, "users", 301)
    manager = PortGroupManager(backend.session, backend.inventory().dvs[DVS],
                               backend.inventory().datacenter_moid)
    pg = manager.read(made.pg_key)
    with Calls() as scanned:
        assert manager.vms_using(pg) == []
    assert "CreateContainerView" in [name for name, _ in scanned]     # every VM read
    backend.session.traits[pg_users.FILLS_NETWORK_VM] = True
    try:
        with Calls() as asked:
            assert manager.vms_using(pg) == []
    finally:
        del backend.session.traits[pg_users.FILLS_NETWORK_VM]
    assert asked == [("RetrievePropertiesEx", 1)]
    assert backend.release_port_group(DVS, network_id, lambda pg=None: False)
