"""Acting as Nova's VMware driver would, against the lab's vCenter simulator.

Nova binds a port to a cluster's compute host, then creates the VM on some ESXi
host of that cluster with a vNIC on the port group from ``vif_details``, the port's
MAC (``addressType manual``), model E1000 unless the image asks for another, and in
the VM's extraConfig ``nvp.vm-uuid`` = the instance (every port's ``device_id``) and
``nvp.iface-id.<N>`` = the port id, N the lowest index not in use: a detached port's
key is set to ``free`` and the next attach takes it, whatever the card's position
among the VM's devices (new cards go after the existing ones; a VM from a template
may carry cards that are not Neutron's).  DRS or an admin then moves VMs with
vMotion; vCenter announces the start with an event.
This module does those things with pyVmomi so tests, the demo and the benchmark
can watch the project follow.  Not used by the drivers.
"""
from __future__ import annotations

import ssl
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter.session import collect

DATASTORE = "LocalDS_0"
IFACE_ID = "nvp.iface-id."
FREE = "free"
NIC_MODELS = {"e1000": vim.vm.device.VirtualE1000, "e1000e": vim.vm.device.VirtualE1000e,
              "vmxnet3": vim.vm.device.VirtualVmxnet3}
DEFAULT_NIC_MODEL = "e1000"            # Nova's default VIF model for vSphere
_CARD = vim.vm.device.VirtualEthernetCard
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

    def _named(self, kind: type, name: str, what: str) -> Any:
        """The object of ``kind`` called ``name``: every name in one PropertyCollector
        read (not one round trip per object: a lab may hold thousands of VMs)."""
        pcq = vmodl.query.PropertyCollector
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder,
                                                            [kind], True)
        try:
            spec = pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=view, skip=True, selectSet=[
                    pcq.TraversalSpec(name="view", path="view", skip=False,
                                      type=vim.view.ContainerView)])],
                propSet=[pcq.PropertySpec(type=kind, pathSet=["name"])])
            for obj, props in collect(self.content.propertyCollector, [spec]):
                if props.get("name") == name:
                    return obj
        finally:
            view.Destroy()
        raise LookupError(f"no {what} {name!r}")

    def host(self, name: str) -> Any:
        return self._named(vim.HostSystem, name, "ESXi host")

    def port_group(self, name: str) -> tuple[str, str]:
        """(DVS uuid, key) of the port group called ``name``."""
        pg = self._named(vim.dvs.DistributedVirtualPortgroup, name, "port group")
        return pg.config.distributedVirtualSwitch.uuid, pg.key

    def vm(self, name: str) -> Any:
        return self._named(vim.VirtualMachine, name, "VM")

    # -- what Nova does -------------------------------------------------------------
    def boot(self, name: str, esxi_host: str, ports: list[dict[str, Any]],
             nic_model: str = DEFAULT_NIC_MODEL,
             template_nics: list[tuple[str, str, str]] = (),
             instance_uuid: str | None = None) -> Any:
        """A powered-on VM on ``esxi_host`` with one vNIC per bound port, as Nova makes it.

        ``template_nics``: (MAC, DVS uuid, port group key) of cards the VM's template
        already has, before Neutron's.  ``instance_uuid``: for a VM booted without
        ports (otherwise it is the ports' ``device_id``).
        """
        host = self.host(esxi_host)
        cluster = host.parent
        datacenter = cluster.parent
        while not isinstance(datacenter, vim.Datacenter):
            datacenter = datacenter.parent
        changes = [vim.vm.device.VirtualDeviceSpec(
            operation="add", device=_nic(NIC_MODELS[DEFAULT_NIC_MODEL], -200 - n, mac, dvs, pg))
            for n, (mac, dvs, pg) in enumerate(template_nics)]
        extra = [vim.option.OptionValue(key="nvp.vm-uuid",
                                        value=instance_uuid or _instance(ports))]
        for index, port in enumerate(ports):
            changes.append(vim.vm.device.VirtualDeviceSpec(
                operation="add", device=_port_nic(port, nic_model, -100 - index)))
            extra.append(vim.option.OptionValue(key=f"{IFACE_ID}{index}", value=port["id"]))
        spec = vim.vm.ConfigSpec(
            name=name, guestId="otherGuest64", numCPUs=1, memoryMB=64,
            files=vim.vm.FileInfo(vmPathName=f"[{DATASTORE}]"),
            deviceChange=changes, extraConfig=extra)
        task = datacenter.vmFolder.CreateVM_Task(config=spec, pool=cluster.resourcePool,
                                                 host=host)
        WaitForTask(task)
        vm = task.info.result           # the new VM: no search through every VM
        WaitForTask(vm.PowerOnVM_Task())
        return vm

    def attach(self, vm_name: str, port: dict[str, Any],
               nic_model: str = DEFAULT_NIC_MODEL) -> int:
        """Nova's interface attach: a new card after the others, the lowest free index.
        Returns the index N of ``nvp.iface-id.N``."""
        vm = self.vm(vm_name)
        # The simulator appends a key set again instead of replacing it: the last wins.
        keys = {o.key: o.value for o in vm.config.extraConfig or []}
        used = {int(key[len(IFACE_ID):]) for key, value in keys.items()
                if key.startswith(IFACE_ID) and key[len(IFACE_ID):].isdigit()
                and value and value != FREE}
        index = next(n for n in range(len(used) + 1) if n not in used)
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(
                operation="add", device=_port_nic(port, nic_model, -300))],
            extraConfig=[vim.option.OptionValue(key=f"{IFACE_ID}{index}",
                                                value=port["id"])])))
        return index

    def detach(self, vm_name: str, port: dict[str, Any]) -> None:
        """Nova's interface detach: the card with the port's MAC goes, its key says free."""
        vm = self.vm(vm_name)
        mac = port["mac_address"].lower()
        cards = [dev for dev in vm.config.hardware.device
                 if isinstance(dev, _CARD) and (dev.macAddress or "").lower() == mac]
        keys = [o.key for o in vm.config.extraConfig or []
                if o.key.startswith(IFACE_ID) and o.value == port["id"]]
        WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="remove", device=card)
                          for card in cards],
            extraConfig=[vim.option.OptionValue(key=key, value=FREE) for key in keys])))

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
        self.relocate(self.vm(vm_name), self.host(destination))

    @staticmethod
    def relocate(vm: Any, dest: Any) -> None:
        """``vmotion`` with the VM and host objects already found (a benchmark times
        the move, not the lookup by name, which reads every VM's name)."""
        WaitForTask(vm.RelocateVM_Task(vim.vm.RelocateSpec(host=dest,
                                                            pool=dest.parent.resourcePool)))

    def power_off(self, vm_name: str) -> None:
        WaitForTask(self.vm(vm_name).PowerOffVM_Task())

    def destroy(self, vm_name: str) -> None:
        vm = self.vm(vm_name)
        if vm.runtime.powerState == "poweredOn":
            WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())


def _instance(ports: list[dict[str, Any]]) -> str:
    """The instance the ports belong to: Nova sets each port's device_id to it first."""
    devices = {port.get("device_id") or "" for port in ports}
    if len(devices) != 1 or "" in devices:
        raise ValueError("Nova boots a VM with ports whose device_id is its instance uuid; "
                         f"these ports say {sorted(devices)}")
    return devices.pop()


def _nic(model: type, key: int, mac: str, dvs_uuid: str, pg_key: str) -> Any:
    return model(
        key=key, addressType="manual", macAddress=mac,
        backing=_CARD.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(switchUuid=dvs_uuid, portgroupKey=pg_key)),
        connectable=vim.vm.device.VirtualDevice.ConnectInfo(
            startConnected=True, connected=True, allowGuestControl=True))


def _port_nic(port: dict[str, Any], model: str, key: int) -> Any:
    details = port["binding:vif_details"]
    return _nic(NIC_MODELS[model], key, port["mac_address"], details["dvs_id"],
                details["pg_id"])
