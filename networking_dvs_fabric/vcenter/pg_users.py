"""Which VMs have a NIC on a port group: what keeps a port group from being deleted.

vCenter lists them in the port group's ``vm`` (``Network.vm``): one read, however
many VMs the datacenter has; it also refuses to delete a port group in use
(``ResourceInUse``).  govmomi's simulator (0.24.2, the lab's) does neither: it
never fills ``Network.vm``, only each VM's ``network``.  So every VM's
``network`` is read too until this vCenter is seen to fill ``Network.vm`` - a VM's
port group that lists the VM - which is then remembered for the process
(``VCenterSession.traits``).  Against vCenter that is the first delete only; against
the simulator every delete reads every VM (a fixed number of calls all the same).
"""
from __future__ import annotations

import logging
from typing import Any

from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter.session import VCenterSession, collect

LOG = logging.getLogger(__name__)

# A ``VCenterSession.traits`` key: vCenter fills ``Network.vm``.
FILLS_NETWORK_VM = "fills Network.vm"
_DVPG = vim.dvs.DistributedVirtualPortgroup


def vms_on(session: VCenterSession, pg_moid: str, pg_name: str,
           datacenter_moid: str | None = None) -> list[str] | None:
    """Names of the VMs with a NIC on port group ``pg_moid``; None: it is gone.

    A VM that disappears while this reads is left out; only the port group's own
    absence gives None.
    """
    def read(si: Any) -> list[str] | None:
        pg_obj = _DVPG(pg_moid, si._stub)
        pcq = vmodl.query.PropertyCollector
        spec = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=pg_obj, skip=False, selectSet=[
                # ``vm`` is Network's (a port group is one): named by the type declaring it.
                pcq.TraversalSpec(name="vms", path="vm", skip=False, type=vim.Network)])],
            propSet=[pcq.PropertySpec(type=_DVPG, pathSet=["key"]),
                     pcq.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])])
        try:
            found = collect(si.content.propertyCollector, [spec])
        except vmodl.fault.ManagedObjectNotFound as exc:
            if getattr(exc.obj, "_moId", None) == pg_moid:
                return None
            raise
        if not any(obj._moId == pg_moid for obj, _ in found):
            return None
        users = {obj._moId: props.get("name", obj._moId) for obj, props in found
                 if isinstance(obj, vim.VirtualMachine)}
        if not session.traits.get(FILLS_NETWORK_VM):
            users.update(_by_network(session, si, pg_obj, set(users), datacenter_moid))
        return sorted(users.values())
    return session.invoke(read, f"find VMs on port group {pg_name!r}")


def _by_network(session: VCenterSession, si: Any, pg_obj: Any, listed: set[str],
                datacenter_moid: str | None) -> dict[str, str]:
    """The VMs whose ``network`` holds ``pg_obj`` (moid -> name), read from every VM
    of the datacenter; on the way, learn whether vCenter fills ``Network.vm``
    (``listed``: the VMs ``pg_obj.vm`` lists)."""
    root = vim.Datacenter(datacenter_moid, si._stub) if datacenter_moid else None
    users: dict[str, str] = {}
    probe: tuple[str, Any] | None = None
    for obj, props in session.retrieve(si, vim.VirtualMachine,
                                       ["name", "network", "config.template"], root=root):
        nets = [net for net in props.get("network") or [] if isinstance(net, _DVPG)]
        if any(net._moId == pg_obj._moId for net in nets):
            users[obj._moId] = props.get("name", obj._moId)
        if probe is None and nets and props.get("config.template") is False:
            probe = (obj._moId, nets[0])
    if probe is not None:
        vm_moid, net = probe
        try:
            fills = vm_moid in (listed if net._moId == pg_obj._moId
                                else {vm._moId for vm in net.vm or []})
        except vmodl.fault.ManagedObjectNotFound:       # gone meanwhile: ask next time
            fills = False
        if fills:
            LOG.info("vCenter %s fills Network.vm: the VMs of a port group are read from "
                     "it alone from now on", session.config.url)
            session.traits[FILLS_NETWORK_VM] = True
    return users
