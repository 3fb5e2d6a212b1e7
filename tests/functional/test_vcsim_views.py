"""The lab simulator's container views learn of created objects as vCenter's do.

govmomi 0.24's own views found a new object by walking the whole inventory down from
their root (lab/vcsim/container_views.go replaces that walk with one up from the new
object); what a client sees must be what it saw before, and what vCenter shows: a new
port group or VM is in every view whose root holds it, and in no other.  (These
assertions hold for govmomi's own views too: they guard the replacement's behaviour;
its speed is `bench scale`'s, see docs/benchmarks.md.)
"""
from __future__ import annotations

import shutil
from typing import Iterator

import pytest
from pyVim.connect import Disconnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from networking_dvs_fabric.lab import vcsim as vcsim_mod
from networking_dvs_fabric.lab.vcsim import VCenterSimulator

from tests.functional.test_vcsim import connect, entities

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("needs the Debian packages golang-go and golang-github-vmware-govmomi-dev",
                allow_module_level=True)


@pytest.fixture(scope="module")
def si(tmp_path_factory: pytest.TempPathFactory) -> Iterator[vim.ServiceInstance]:
    with VCenterSimulator(tmp_path_factory.mktemp("vcsim-views")) as simulator:
        service = connect(simulator)
        yield service
        Disconnect(service)


def names(view: vim.view.ContainerView) -> set[str]:
    return {obj.name for obj in view.view}


def make_vm(si: vim.ServiceInstance, name: str, cluster: vim.ClusterComputeResource,
            host: vim.HostSystem) -> vim.VirtualMachine:
    datacenter = entities(si, vim.Datacenter)["DC0"]
    spec = vim.vm.ConfigSpec(name=name, guestId="otherGuest64", numCPUs=1, memoryMB=64,
                             files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"))
    task = datacenter.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool,
                                             host=host)
    WaitForTask(task)
    return task.info.result


def test_new_port_groups_and_vms_are_in_the_views_that_hold_them(
        si: vim.ServiceInstance) -> None:
    content = si.content
    views = content.viewManager
    clusters = entities(si, vim.ClusterComputeResource)
    c0, c1 = clusters["DC0_C0"], clusters["DC0_C1"]
    datacenter = entities(si, vim.Datacenter)["DC0"]
    made = [views.CreateContainerView(content.rootFolder,
                                      [vim.dvs.DistributedVirtualPortgroup], True),
            views.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True),
            # The drivers' watches: views over the datacenter.
            views.CreateContainerView(datacenter, [vim.dvs.DistributedVirtualPortgroup],
                                      True),
            views.CreateContainerView(datacenter, [vim.VirtualMachine], True),
            views.CreateContainerView(c0, [vim.VirtualMachine], True),
            views.CreateContainerView(c1, [vim.VirtualMachine], True),
            views.CreateContainerView(content.rootFolder, [vim.VirtualMachine], False)]
    pgs, all_vms, dc_pgs, dc_vms, c0_vms, c1_vms, top_level_vms = made
    try:
        before = {view: names(view) for view in made}
        dvs = entities(si, vim.DistributedVirtualSwitch)["DVS0"]
        WaitForTask(dvs.AddDVPortgroup_Task([vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name="views-pg", type="earlyBinding", numPorts=0)]))
        make_vm(si, "views-vm-c0", c0, c0.host[0])
        make_vm(si, "views-vm-c1", c1, c1.host[1])

        assert names(pgs) == before[pgs] | {"views-pg"}
        assert names(dc_pgs) == before[dc_pgs] | {"views-pg"}
        assert names(all_vms) == before[all_vms] | {"views-vm-c0", "views-vm-c1"}
        assert names(dc_vms) == before[dc_vms] | {"views-vm-c0", "views-vm-c1"}
        # A cluster's view never gets the other cluster's new VM.  (Nor, as govmomi's
        # own view, its own: the simulator sets a new VM's pool and host after it
        # announces the VM.  The drivers' watches start at the datacenter.)
        assert "views-vm-c1" not in names(c0_vms) and "views-vm-c0" not in names(c1_vms)
        # Not recursive: the root folder holds no VM directly.
        assert names(top_level_vms) == before[top_level_vms] == set()
    finally:
        for view in made:
            view.Destroy()


def test_a_watch_over_a_view_reports_the_new_port_group(si: vim.ServiceInstance) -> None:
    content = si.content
    pcq = vmodl.query.PropertyCollector
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vim.dvs.DistributedVirtualPortgroup], True)
    collector = content.propertyCollector.CreatePropertyCollector()
    try:
        collector.CreateFilter(pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=view, skip=True, selectSet=[pcq.TraversalSpec(
                name="view", path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                      pathSet=["name"])]), False)
        first = collector.WaitForUpdatesEx("", pcq.WaitOptions(maxWaitSeconds=5))
        dvs = entities(si, vim.DistributedVirtualSwitch)["DVS0"]
        WaitForTask(dvs.AddDVPortgroup_Task([vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name="watched-pg", type="earlyBinding", numPorts=0)]))
        entered: set[str] = set()
        version = first.version
        for _ in range(10):
            update = collector.WaitForUpdatesEx(version, pcq.WaitOptions(maxWaitSeconds=2))
            if update is None:
                continue
            version = update.version
            entered |= {change.val for fs in update.filterSet for obj in fs.objectSet
                        if obj.kind == "enter" for change in obj.changeSet}
            if "watched-pg" in entered:
                break
        assert entered == {"watched-pg"}
    finally:
        collector.Destroy()
        view.Destroy()
