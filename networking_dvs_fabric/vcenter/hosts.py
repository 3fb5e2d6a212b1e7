"""The topology's questions answered from vCenter: hosts of a cluster, DVSs of a host.

Backed by :meth:`VSphereBackend.inventory` (one PropertyCollector read, kept by
``inventory.InventoryKeeper``): a lookup gets the last inventory read at once - an
old one is refreshed in the background, and a vCenter that cannot be reached costs
a lookup nothing.  With none read at all the directory raises the vCenter error:
"unknown" must never read as "no hosts", or the fabric worker would remove what
those hosts need.
"""
from __future__ import annotations

from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.inventory import Inventory


class VCenterHostDirectory:
    def __init__(self, backend: VSphereBackend) -> None:
        self.backend = backend

    def _inventory(self) -> Inventory:
        # Raises only while no inventory was ever read: a failed refresh of an old one
        # is the backend's to log and retry (``InventoryKeeper``).
        return self.backend.inventory()

    def esxi_hosts(self, binding_host: str) -> list[str] | None:
        inventory = self._inventory()
        moids = inventory.host_ids(binding_host, self.backend.settings.host_mappings)
        names = sorted(name for name, moid in inventory.hosts.items() if moid in moids)
        return names or None

    def physical_networks(self, esxi_host: str) -> dict[str, str]:
        inventory = self._inventory()
        moid = inventory.hosts.get(esxi_host)
        return {physnet: dvs for physnet, dvs in self.backend.settings.dvs_mappings.items()
                if dvs in inventory.dvs and moid in inventory.dvs[dvs].host_ids}

    def mapped_physical_networks(self) -> frozenset[str]:
        return frozenset(self.backend.settings.dvs_mappings)
