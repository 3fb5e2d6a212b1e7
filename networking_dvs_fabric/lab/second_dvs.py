"""The lab's second DVS (``lab up --second-dvs``): cluster DC0_C1 moves from DVS0 to DVS1.

One DVS carries at most ~4,000 networks with bound ports (one VLAN each on its
physical network); a second DVS on a physical network of its own reuses the same
VLAN numbers for other networks.  The simulator's model has one DVS with every
host, so after it starts this reshapes it with pyVmomi, as an administrator would:

1. ``CreateDVS_Task`` DVS1 in the datacenter's network folder (the simulator
   ignores ``configSpec.host``), then ``ReconfigureDvs_Task`` adds C1's hosts;
2. C1's own VMs (the simulator's, one NIC each on DVS0's ``DC0_DVPG0``) get their
   NICs moved to a port group of DVS1 (``ReconfigVM_Task`` edit): vCenter, and the
   simulator, refuse to take a host off a DVS while its VMs use the DVS's port
   groups (``ResourceInUse``);
3. ``ReconfigureDvs_Task`` removes C1's hosts from DVS0.

The members are read back (``summary.hostMember``, what the driver reads).  The
simulator (govmomi 0.24.2) leaves the removed hosts' ``network`` and the old port
groups' ``host`` lists as they were; nothing here or in the driver reads those.
Applying it again to a simulator that already has it changes nothing.
"""
from __future__ import annotations

import ssl
import urllib.parse
from typing import Any, Iterable

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.procs import LabError

# Where the moved clusters' own VMs' NICs go (not a Neutron port group: no marker).
VM_PORT_GROUP = f"{topology.DATACENTER}_{topology.SECOND_DVS_NAME}_VM_NETWORK"


def _objects(si: Any, kind: type) -> list[Any]:
    content = si.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def _named(si: Any, kind: type, name: str) -> Any | None:
    return next((obj for obj in _objects(si, kind) if obj.name == name), None)


def _members(dvs: Any) -> set[str]:
    return {host.name for host in dvs.summary.hostMember or []}


def _reconfigure_members(dvs: Any, operation: str, hosts: Iterable[Any]) -> None:
    vds = vim.dvs.VmwareDistributedVirtualSwitch
    WaitForTask(dvs.ReconfigureDvs_Task(vds.ConfigSpec(
        configVersion=dvs.config.configVersion,
        host=[vim.dvs.HostMember.ConfigSpec(operation=operation, host=h) for h in hosts])))


def _port_group(dvs: Any, name: str) -> Any:
    for pg in dvs.portgroup:
        if pg.name == name:
            return pg
    vds = vim.dvs.VmwareDistributedVirtualSwitch
    WaitForTask(dvs.AddDVPortgroup_Task([vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, type="earlyBinding", numPorts=8,
        defaultPortConfig=vds.VmwarePortConfigPolicy(
            vlan=vds.VlanIdSpec(vlanId=0, inherited=False)))]))
    for pg in dvs.portgroup:
        if pg.name == name:
            return pg
    raise LabError(f"vCenter: port group {name} missing on {dvs.name} right after creating it")


def _move_vm_nics(hosts: Iterable[Any], old: Any, new: Any, pg: Any) -> None:
    """Every NIC of the hosts' VMs on a port group of ``old`` goes to ``pg`` on ``new``."""
    card = vim.vm.device.VirtualEthernetCard
    for host in hosts:
        for vm in host.vm:
            nics = [dev for dev in vm.config.hardware.device if isinstance(dev, card)
                    and getattr(getattr(dev.backing, "port", None), "switchUuid",
                                None) == old.uuid]
            for nic in nics:
                nic.backing = card.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(switchUuid=new.uuid, portgroupKey=pg.key))
            if nics:
                WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
                    vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)
                    for nic in nics])))


def reshape(si: Any) -> None:
    """Make the simulator's inventory the second-DVS lab's (idempotent)."""
    datacenter = _named(si, vim.Datacenter, topology.DATACENTER)
    dvs0 = _named(si, vim.DistributedVirtualSwitch, topology.DVS_NAME)
    if datacenter is None or dvs0 is None:
        raise LabError(f"vCenter: no datacenter {topology.DATACENTER} or DVS "
                       f"{topology.DVS_NAME} to add the second DVS beside")
    moving = []
    for name in topology.SECOND_DVS_CLUSTERS:
        cluster = _named(si, vim.ClusterComputeResource, name)
        if cluster is None:
            raise LabError(f"vCenter: no cluster {name} to move to the second DVS")
        moving += list(cluster.host)

    dvs1 = _named(si, vim.DistributedVirtualSwitch, topology.SECOND_DVS_NAME)
    if dvs1 is None:
        task = datacenter.networkFolder.CreateDVS_Task(vim.DistributedVirtualSwitch.CreateSpec(
            configSpec=vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(
                name=topology.SECOND_DVS_NAME)))
        WaitForTask(task)
        dvs1 = task.info.result
    joining = [h for h in moving if h.name not in _members(dvs1)]
    if joining:
        _reconfigure_members(dvs1, "add", joining)
    leaving = [h for h in moving if h.name in _members(dvs0)]
    if leaving:
        _move_vm_nics(leaving, dvs0, dvs1, _port_group(dvs1, VM_PORT_GROUP))
        _reconfigure_members(dvs0, "remove", leaving)

    # Read back: did vCenter really take it?
    want = {c: set(topology.esxi_hosts(c)) for c in topology.CLUSTERS}
    want0 = set().union(*(hosts for c, hosts in want.items()
                          if topology.dvs_of_cluster(c, True) == topology.DVS_NAME))
    want1 = set().union(*(hosts for c, hosts in want.items()
                          if topology.dvs_of_cluster(c, True) == topology.SECOND_DVS_NAME))
    got0, got1 = _members(dvs0), _members(dvs1)
    if (got0, got1) != (want0, want1):
        raise LabError(f"vCenter did not take the second DVS: {topology.DVS_NAME} members "
                       f"{sorted(got0)} (want {sorted(want0)}), {topology.SECOND_DVS_NAME} "
                       f"members {sorted(got1)} (want {sorted(want1)})")


def apply(url: str, username: str, password: str, ca_file: str) -> None:
    """Connect to the lab's vCenter and ``reshape`` it."""
    parsed = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    si = SmartConnect(host=parsed.hostname, port=parsed.port, path=parsed.path,
                      user=username, pwd=password, sslContext=context)
    try:
        reshape(si)
    finally:
        Disconnect(si)
