"""The topology's questions answered from vCenter: hosts of a cluster, DVSs of a host.

Backed by :meth:`VSphereBackend.inventory` (one PropertyCollector read, cached).  When
vCenter cannot be reached the last inventory read is used; with none at all the
directory raises the vCenter error: "unknown" must never read as "no hosts", or the
fabric worker would remove what those hosts need.
"""
from __future__ import annotations

import logging

from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.inventory import Inventory

LOG = logging.getLogger(__name__)


class VCenterHostDirectory:
    def __init__(self, backend: VSphereBackend) -> None:
        self.backend = backend
        self._last: Inventory | None = None

    def _inventory(self) -> Inventory:
        try:
            self._last = self.backend.inventory()
        except errors.VCenterError as exc:
            if self._last is None:
                raise
            LOG.warning("vCenter inventory not refreshed (%s); using the last one read", exc)
        assert self._last is not None
        return self._last

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
