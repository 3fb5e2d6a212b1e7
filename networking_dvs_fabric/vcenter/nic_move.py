"""Move a VM's NIC to another port group of the same DVS (``ReconfigVM_Task``).

The NIC is the one whose MAC is the port's (Nova sets it, ``addressType manual``);
its device key, model and everything else stay, only the backing's port group
changes - the guest sees no new card.  A VM without such a NIC moves nothing.
"""
from __future__ import annotations

import logging
from typing import Any

from pyVmomi import vim

from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.session import VCenterSession

LOG = logging.getLogger(__name__)


def _nic_with_mac(devices: Any, mac: str) -> Any | None:
    for device in devices or []:
        if isinstance(device, vim.vm.device.VirtualEthernetCard) and \
                (device.macAddress or "").lower() == mac.lower():
            return device
    return None


def move_nic(session: VCenterSession, vm_moid: str, mac: str, dvs_uuid: str,
             pg_key: str) -> bool:
    """Put the VM's NIC with ``mac`` on port group ``pg_key``.  False: no such NIC."""
    what = f"move the NIC {mac} of VM {vm_moid} to port group {pg_key}"

    def read(si: Any) -> Any:
        vm = vim.VirtualMachine(vm_moid, si._stub)
        return vm.config.hardware.device if vm.config else []
    devices = session.invoke(read, f"read the NICs of VM {vm_moid}")
    nic = _nic_with_mac(devices, mac)
    if nic is None:
        return False
    backing = getattr(nic, "backing", None)
    port = getattr(backing, "port", None)
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo) \
            and port is not None and port.portgroupKey == pg_key \
            and port.switchUuid == dvs_uuid:
        return True
    nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(switchUuid=dvs_uuid, portgroupKey=pg_key))
    spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
        operation=vim.vm.device.VirtualDeviceSpec.Operation.edit, device=nic)])
    task = session.invoke(lambda si: vim.VirtualMachine(vm_moid, si._stub).ReconfigVM_Task(spec),
                          what)
    try:
        session.wait_for_task(task, what)
    except errors.VCenterNotFound:
        return False
    LOG.info("Moved NIC %(mac)s of VM %(vm)s to port group %(pg)s",
             {"mac": mac, "vm": vm_moid, "pg": pg_key})
    return True
