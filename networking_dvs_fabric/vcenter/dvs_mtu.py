"""A DVS's MTU, for ``VSphereBackend``: read it, and raise it when allowed.

Split from ``backend.py`` (a mixin: it uses the backend's session, inventory,
locks and fail-fast holdoff).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.inventory import DVSInfo, read_dvs_mtu

LOG = logging.getLogger(__name__)
MTU_RETRY_HOLDOFF = 30.0   # seconds a failed raise of a DVS's MTU is not tried again


class DVSMtuNotRaised(errors.VCenterError):
    """vCenter refused, failed or ignored raising a DVS's MTU."""


class DVSMtu:
    """The MTU half of ``VSphereBackend`` (which provides the attributes used here)."""

    session: Any
    settings: Any
    _inventories: Any       # inventory.InventoryKeeper
    _mtu_failed: dict[str, tuple[float, int, str]]
    inventory: Any          # methods of VSphereBackend
    _lock_for: Any
    _fail_fast: Any

    # -- the DVS's MTU ----------------------------------------------------------
    def dvs_mtu(self, physical_network: str, mtu: int, raise_it: bool = False) -> int:
        """The MTU of the DVS of ``physical_network``, for a network of ``mtu``.

        No I/O when the inventory's MTU is big enough.  Otherwise the DVS's MTU is
        read again (someone may have raised it in vSphere) and, with ``raise_it``,
        raised to ``mtu`` (never lowered) and read back.  Returns the MTU the DVS
        has now; the caller compares.  A raise that fails raises DVSMtuNotRaised.
        """
        return self._fail_fast(lambda: self._dvs_mtu(physical_network, mtu, raise_it))

    def _dvs_mtu(self, physical_network: str, mtu: int, raise_it: bool) -> int:
        dvs_name = self.settings.dvs_mappings[physical_network]
        dvs = self.inventory().dvs[dvs_name]
        if mtu <= dvs.max_mtu:
            return dvs.max_mtu
        with self._lock_for(dvs_name, "max-mtu"):
            current, version = read_dvs_mtu(self.session, dvs)
            self._remember_mtu(dvs_name, current)
            if mtu <= current or not raise_it:
                return current
            until, failed_mtu, why = self._mtu_failed.get(dvs_name, (0.0, 0, ""))
            left = until - time.monotonic()
            if left > 0 and mtu >= failed_mtu:
                raise DVSMtuNotRaised(f"{why} (not tried again for another {left:.0f} s)")
            try:
                current = self._raise_mtu(dvs, current, version, mtu)
            except DVSMtuNotRaised as exc:
                self._mtu_failed[dvs_name] = (time.monotonic() + MTU_RETRY_HOLDOFF, mtu,
                                              str(exc))
                raise
            self._mtu_failed.pop(dvs_name, None)
            self._remember_mtu(dvs_name, current)
            return current

    def _raise_mtu(self, dvs: DVSInfo, current: int, version: str | None, mtu: int) -> int:
        what = f"raise the MTU of DVS {dvs.name} from {current} to {mtu}"
        for attempt in (1, 2):
            spec = vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(
                configVersion=version, maxMtu=mtu)
            try:
                task = self.session.invoke(
                    lambda si, spec=spec: vim.DistributedVirtualSwitch(dvs.moid, si._stub)
                    .ReconfigureDvs_Task(spec), what)
                self.session.wait_for_task(task, what)
                break
            except (vmodl.MethodFault, errors.VCenterError) as exc:
                # vCenter's fault, raw or inside the session's error (``fault``).
                fault = exc if isinstance(exc, vmodl.MethodFault) else \
                    getattr(exc, "fault", None)
                if fault is None:       # unreachable, timed out...: not a refusal
                    raise
                if not isinstance(fault, vim.fault.ConcurrentAccess) or attempt == 2:
                    text = str(exc) if exc is not fault else \
                        (getattr(fault, "msg", None) or type(fault).__name__)
                    raise DVSMtuNotRaised(f"{what}: vCenter refused: {text}") from exc
                # Someone else changed the DVS since we read its config version.
                current, version = read_dvs_mtu(self.session, dvs)
                if mtu <= current:
                    return current
        now, _ = read_dvs_mtu(self.session, dvs)
        if now < mtu:
            raise DVSMtuNotRaised(f"{what}: vCenter accepted the change but the DVS's "
                                  f"maxMtu still reads {now}")
        LOG.warning("Raised the MTU of DVS %(dvs)s from %(old)d to %(new)d "
                    "([ml2_vsphere] raise_dvs_mtu)", {"dvs": dvs.name, "old": current,
                                                      "new": now})
        return now

    def _remember_mtu(self, dvs_name: str, max_mtu: int) -> None:
        """Put a DVS's MTU just read into the cached inventory (no new inventory read)."""
        def change(inventory: Any) -> Any:
            if dvs_name not in inventory.dvs or inventory.dvs[dvs_name].max_mtu == max_mtu:
                return inventory
            dvs = dict(inventory.dvs)
            dvs[dvs_name] = dataclasses.replace(dvs[dvs_name], max_mtu=max_mtu)
            return dataclasses.replace(inventory, dvs=dvs)
        self._inventories.update(change)
