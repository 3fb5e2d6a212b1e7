"""Acting as Nova's VMware driver would, against the lab's vCenter simulator.

Nova binds a port to a cluster's compute host, then creates the VM on some ESXi
host of that cluster with a vNIC on the port group from ``vif_details``, the port's
MAC, and ``nvp.iface-id.<N>`` = the port id in the VM's extraConfig.  DRS or an
admin then moves VMs with vMotion; vCenter announces the start with an event.
This module does those things with pyVmomi so tests, the demo and the benchmark
can watch the project follow.  Not used by the drivers.
"""
from __future__ import annotations

import ssl
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim

DATASTORE = "LocalDS_0"
START_EVENTS = ("VmBeingHotMigratedEvent", "VmBeingMigratedEvent", "DrsVmMigratedEvent")


class FakeNova:
    def __init__(self, vcenter: dict[str, Any]) -> None:
        host, _, rest = vcenter["url"].removeprefix("https://").partition(":")
        port = int(rest.split("/")[0])
        self.si = SmartConnect(host=host, port=port, user=vcenter["username"],
                               pwd=vcenter["password"],
                               sslContext=ssl.create_default_context(cafile=vcenter["ca_file"]))
        self.content = self.si.content

    def close(self) -> None:
        try:
            Disconnect(self.si)
        except Exception:  # noqa: BLE001 - the simulator may be gone already
            pass

    def __enter__(self) -> "FakeNova":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inventory ----------------------------------------------------------------
    def _all(self, kind: type) -> list[Any]:
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder,
                                                            [kind], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def host(self, name: str) -> Any:
        for host in self._all(vim.HostSystem):
            if host.name == name:
                return host
        raise LookupError(f"no ESXi host {name!r}")

    def vm(self, name: str) -> Any:
        for vm in self._all(vim.VirtualMachine):
            if vm.name == name:
                return vm
        raise LookupError(f"no VM {name!r}")

    # -- what Nova does -------------------------------------------------------------
    def boot(self, name: str, esxi_host: str, ports: list[dict[str, Any]]) -> Any:
        """A powered-on VM on ``esxi_host`` with one vNIC per bound port, as Nova makes it."""
        host = self.host(esxi_host)
        cluster = host.parent
        datacenter = cluster.parent
        while not isinstance(datacenter, vim.Datacenter):
            datacenter = datacenter.parent
        card = vim.vm.device.VirtualEthernetCard
        changes, extra = [], []
        for index, port in enumerate(ports):
            details = port["binding:vif_details"]
            nic = vim.vm.device.VirtualVmxnet3(
                key=-100 - index, addressType="manual", macAddress=port["mac_address"],
                backing=card.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(switchUuid=details["dvs_id"],
                                                portgroupKey=details["pg_id"])),
                connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                    startConnected=True, connected=True, allowGuestControl=True))
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=nic))
            extra.append(vim.option.OptionValue(key=f"nvp.iface-id.{index}",
                                                value=port["id"]))
        spec = vim.vm.ConfigSpec(
            name=name, guestId="otherGuest64", numCPUs=1, memoryMB=64,
            files=vim.vm.FileInfo(vmPathName=f"[{DATASTORE}]"),
            deviceChange=changes, extraConfig=extra)
        WaitForTask(datacenter.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool,
                                                      host=host))
        vm = self.vm(name)
        WaitForTask(vm.PowerOnVM_Task())
        return vm

    def announce_migration(self, vm_name: str, destination: str,
                           kind: str = "VmBeingHotMigratedEvent") -> None:
        """Post the migration-start event vCenter sends (the simulator sends none)."""
        vm, dest = self.vm(vm_name), self.host(destination)
        source = vm.runtime.host
        cluster = source.parent
        datacenter = cluster.parent
        while not isinstance(datacenter, vim.Datacenter):
            datacenter = datacenter.parent
        common = dict(
            key=0, chainId=0,
            userName="fake-nova",
            vm=vim.event.VmEventArgument(name=vm.name, vm=vm),
            host=vim.event.HostEventArgument(name=source.name, host=source),
            computeResource=vim.event.ComputeResourceEventArgument(
                name=cluster.name, computeResource=cluster),
            datacenter=vim.event.DatacenterEventArgument(name=datacenter.name,
                                                         datacenter=datacenter))
        if kind == "DrsVmMigratedEvent":
            # DRS reports the move with the destination as the event's host.
            common["host"] = vim.event.HostEventArgument(name=dest.name, host=dest)
            event = vim.event.DrsVmMigratedEvent(
                sourceHost=vim.event.HostEventArgument(name=source.name, host=source),
                **common)
        else:
            event = getattr(vim.event, kind)(
                destHost=vim.event.HostEventArgument(name=dest.name, host=dest), **common)
        event.createdTime = self.si.CurrentTime()
        self.content.eventManager.PostEvent(event)

    def vmotion(self, vm_name: str, destination: str) -> None:
        """Move a running VM to another ESXi host (what vMotion/DRS do)."""
        vm, dest = self.vm(vm_name), self.host(destination)
        WaitForTask(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=dest,
                                                            pool=dest.parent.resourcePool)))

    def detach_nics(self, vm_name: str) -> int:
        """Remove every vNIC of the VM (an interface detach); returns how many."""
        vm = self.vm(vm_name)
        nics = [dev for dev in vm.config.hardware.device
                if isinstance(dev, vim.vm.device.VirtualEthernetCard)]
        if nics:
            WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
                vim.vm.device.VirtualDeviceSpec(operation="remove", device=nic)
                for nic in nics])))
        return len(nics)

    def power_off(self, vm_name: str) -> None:
        WaitForTask(self.vm(vm_name).PowerOffVM_Task())

    def destroy(self, vm_name: str) -> None:
        vm = self.vm(vm_name)
        if vm.runtime.powerState == "poweredOn":
            WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())
