"""Port groups' settings (``config.defaultPortConfig``) read from vCenter, for the dataplane agent.

``read_settings`` reads chosen port groups' settings in one PropertyCollector call.
``SettingsPoll`` does so every ``period`` seconds in a thread of its own (on a channel
of the agent's login) and hands what it read to the agent: govmomi's simulator
notifies no PropertyCollector of a port group reconfigure (``ReconfigureDVPortgroup_Task``
calls no ``Map.Update``) and leaves ``config.configVersion`` as it was, so a change can
only be seen by reading the setting again.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable

from pyVmomi import vim, vmodl

from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.session import VCenterSession, collect

LOG = logging.getLogger("dataplane")
SETTING = "config.defaultPortConfig"


def read_settings(session: VCenterSession, moids: Iterable[str]) -> dict[str, Any]:
    """moid -> ``config.defaultPortConfig`` of these port groups (a deleted one left out)."""
    wanted = sorted(set(moids))

    def read(si: Any) -> dict[str, Any]:
        pcq = vmodl.query.PropertyCollector
        spec = pcq.FilterSpec(
            objectSet=[pcq.ObjectSpec(obj=vim.dvs.DistributedVirtualPortgroup(moid, si._stub),
                                      skip=False) for moid in wanted],
            propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                      pathSet=[SETTING])])
        return {obj._moId: props.get(SETTING)
                for obj, props in collect(si.content.propertyCollector, [spec])}
    try:
        return session.invoke(read, "read port group settings") if wanted else {}
    except errors.VCenterNotFound:
        if len(wanted) == 1:
            return {}
        # One of them is gone: read each, so the others are still seen.
        return {moid: setting for one in wanted
                for moid, setting in read_settings(session, [one]).items()}


class SettingsPoll:
    """Every ``period`` s: ``wanted()`` (moid -> key), read those, ``on_read({key: setting})``."""

    def __init__(self, session: VCenterSession, wanted: Callable[[], dict[str, str]],
                 on_read: Callable[[dict[str, Any]], None], period: float,
                 stop: threading.Event) -> None:
        self._session = session
        self._wanted = wanted
        self._on_read = on_read
        self._period = period
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="pg-settings", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        session = self._session.channel()
        failing = False
        try:
            while not self._stop.wait(self._period):
                keys = self._wanted()
                try:
                    settings = read_settings(session, keys)
                except (errors.VCenterError, OSError) as exc:
                    if not failing:
                        LOG.warning("dataplane: filter: port group settings unreadable "
                                    "(%s); trying again every %.1f s", exc, self._period)
                    failing = True
                    continue
                if failing:
                    LOG.info("dataplane: filter: port group settings readable again")
                failing = False
                try:
                    self._on_read({keys[moid]: setting for moid, setting in settings.items()})
                except Exception:  # noqa: BLE001 - the poll must outlive one bad round
                    LOG.exception("dataplane: filter: applying port group settings failed")
        finally:
            session.close()
