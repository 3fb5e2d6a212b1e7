"""Look into the lab's vCenter with plain pyVmomi - independent of the driver's code.

The demo prints what it finds here and the integration tests assert on it, so
a bug in the driver's own vCenter layer cannot hide itself.
"""
from __future__ import annotations

import dataclasses
import ssl
import urllib.parse
from typing import Any

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl


@dataclasses.dataclass(frozen=True)
class PortGroupView:
    name: str
    key: str
    vlan: int | None
    description: str
    dvs_uuid: str


class VCenterProbe:
    def __init__(self, vcenter: dict[str, Any]) -> None:
        parsed = urllib.parse.urlsplit(vcenter["url"])
        context = ssl.create_default_context(cafile=vcenter["ca_file"])
        self.si = SmartConnect(host=parsed.hostname, port=parsed.port, path=parsed.path,
                               user=vcenter["username"], pwd=vcenter["password"],
                               sslContext=context)
        self.dvs_names = set(vcenter["dvs"].values())

    def close(self) -> None:
        Disconnect(self.si)

    def __enter__(self) -> "VCenterProbe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, vim_type: type) -> list[Any]:
        content = self.si.content
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim_type], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def dvs(self, name: str) -> Any:
        for switch in self._all(vim.DistributedVirtualSwitch):
            if switch.name == name:
                return switch
        raise LookupError(f"no DVS named {name}")

    def port_groups(self, dvs_name: str) -> list[PortGroupView]:
        """The DVS's port groups, read in one property-collector call, so one deleted
        while being read is simply not listed (the workers delete port groups at any
        moment).  Reading each port group's properties one by one is not safe here:
        the simulator's accessor (``Fetch``) panics on an object deleted a moment
        before and closes the connection without an answer."""
        switch = self.dvs(dvs_name)
        pc = self.si.content.propertyCollector
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                obj=switch, skip=True,
                selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                    name="portgroups", type=vim.DistributedVirtualSwitch,
                    path="portgroup", skip=False)])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vim.dvs.DistributedVirtualPortgroup,
                pathSet=["name", "key", "config.description",
                         "config.defaultPortConfig"])])
        views = []
        result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        while result is not None:
            for content in result.objects:
                props = {prop.name: prop.val for prop in content.propSet}
                if "name" not in props:
                    continue
                vlan_spec = getattr(props.get("config.defaultPortConfig"), "vlan", None)
                vlan = getattr(vlan_spec, "vlanId", None)
                views.append(PortGroupView(
                    name=props["name"], key=props["key"],
                    vlan=int(vlan) if isinstance(vlan, int) else None,
                    description=props.get("config.description") or "",
                    dvs_uuid=switch.uuid))
            token = result.token
            result = pc.ContinueRetrievePropertiesEx(token) if token else None
        return views

    def port_groups_of_network(self, dvs_name: str, network_id: str) -> list[PortGroupView]:
        return [pg for pg in self.port_groups(dvs_name) if network_id in pg.name]

    def port_group_object(self, key: str) -> Any:
        for pg in self._all(vim.dvs.DistributedVirtualPortgroup):
            if pg.key == key:
                return pg
        raise LookupError(f"no port group with key {key}")
