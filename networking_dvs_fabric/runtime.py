"""The runtime of a process: what its drivers and workers share, built once from configuration.

Both mechanism drivers, and every worker they start, take their parts from one
:class:`Runtime` per process (:func:`for_process`):

- the settings (``[ml2_fabric]`` and ``[ml2_vsphere]``, read once);
- the topology (the leaves and the hosts behind them), when ``topology_file`` is set;
- one vCenter backend, so one vCenter login per process, shared by the drivers,
  the port group watch, the journal workers and the vCenter watcher (the long polls
  run on channels of that login, see ``VCenterSession.channel``);
- the host directory (vCenter's answers to the topology's questions);
- the fabric backend (the leaves' connections; made on first use, so API
  processes never load ovsdbapp);
- the waker (tells the journal workers there is work).

A part is built the first time something asks for it, and only once; building it
is where bad configuration is refused, naming the option.  Nothing here imports a
driver or a worker: they depend on the runtime, never on each other.
"""
from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from typing import Any, Callable

from neutron_lib import exceptions as n_exc
from neutron_lib.utils import helpers
from oslo_config import cfg

from networking_dvs_fabric import opts
from networking_dvs_fabric.fabric.api import FabricBackend
from networking_dvs_fabric.journal.wakeup import Waker
from networking_dvs_fabric.journal.worker import WorkerSettings
from networking_dvs_fabric.start_order import FirstStep
from networking_dvs_fabric.topology import HostDirectory, Topology, TopologyError
from networking_dvs_fabric.vcenter import naming
from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
from networking_dvs_fabric.vcenter.session import VCenterSession, config_from_conf

LOG = logging.getLogger(__name__)


class VSphereConfigurationError(n_exc.NeutronException):
    message = "[ml2_vsphere] %(option)s: %(reason)s"


class FabricConfigurationError(n_exc.NeutronException):
    message = "[ml2_fabric] %(option)s: %(reason)s"


@dataclasses.dataclass(frozen=True)
class FabricSettings:
    mode: str = "pre_provision"
    mac_distribution: str = "controller"
    full_sync_interval: float = 600.0
    ovsdb_connect_timeout: float = 10.0
    ovsdb_transaction_timeout: float = 30.0

    @classmethod
    def from_conf(cls, group: Any) -> "FabricSettings":
        return cls(mode=group.mode, mac_distribution=group.mac_distribution,
                   full_sync_interval=group.full_sync_interval,
                   ovsdb_connect_timeout=group.ovsdb_connect_timeout,
                   ovsdb_transaction_timeout=group.ovsdb_transaction_timeout)


def _mappings(option: str, values: list[str]) -> dict[str, str]:
    try:
        return helpers.parse_mappings(values, unique_values=False)
    except ValueError as exc:
        raise VSphereConfigurationError(option=option, reason=str(exc)) from exc


def vcenter_backend_from_conf(group: Any,
                              deployment: Callable[[], str | None] = lambda: None
                              ) -> VSphereBackend:
    """A (not yet started) backend from ``[ml2_vsphere]``; bad options raise, naming them."""
    dvs_mappings = _mappings("dvs_mappings", group.dvs_mappings)
    if not dvs_mappings:
        raise VSphereConfigurationError(option="dvs_mappings",
                                        reason="map at least one physical_network to a DVS")
    try:
        naming.check_format(group.port_group_name_format)
    except naming.NameFormatError as exc:
        raise VSphereConfigurationError(option="port_group_name_format", reason=str(exc))
    missing = [name for name in ("vcenter_url", "username", "password", "datacenter")
               if not getattr(group, name)]
    if missing:
        raise VSphereConfigurationError(option=", ".join(missing), reason="required, not set")
    if group.ca_file and not group.insecure:
        try:
            ssl.create_default_context(cafile=group.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise VSphereConfigurationError(
                option="ca_file", reason=f"cannot read {group.ca_file!r} as PEM: {exc}")
    vcenter = config_from_conf(group)
    settings = BackendSettings(
        datacenter=group.datacenter, dvs_mappings=dvs_mappings,
        host_mappings=_mappings("host_mappings", group.host_mappings),
        name_format=group.port_group_name_format,
        unreachable_holdoff=group.unreachable_holdoff,
        max_port_groups=group.max_port_groups, max_filter_rules=group.max_filter_rules)
    return VSphereBackend(settings, lambda: VCenterSession(vcenter), deployment)


_UNBUILT: Any = object()


LEAVES_FIRST_TIMEOUT = 60.0
WATCHER_FIRST_TIMEOUT = 180.0


class Runtime:
    """One process's shared parts; see the module docstring."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        fabric_group, vsphere_group = conf[opts.FABRIC_GROUP], conf[opts.VSPHERE_GROUP]
        self._fabric_group, self._vsphere_group = fabric_group, vsphere_group
        self.worker_settings = WorkerSettings.from_conf(fabric_group)
        self.fabric_settings = FabricSettings.from_conf(fabric_group)
        self.sweep_interval: float = vsphere_group.cleanup_interval
        self.topology_file: str | None = fabric_group.topology_file
        self._lock = threading.RLock()
        self._vcenter: Any = _UNBUILT
        self._directory: Any = _UNBUILT
        self._topology: Topology | None = None
        self._waker: Waker | None = None
        self._fabric: FabricBackend | None = None
        self._deployment: str | None = None
        # What comes first at a worker process's start (``start_order``).
        self._leaves_first = FirstStep("the leaves' first full sync", LEAVES_FIRST_TIMEOUT)
        self._watcher_first = FirstStep("the vCenter watcher's first full read",
                                        WATCHER_FIRST_TIMEOUT)

    # -- the leaves first ----------------------------------------------------------
    def expect_leaves(self) -> None:
        """A fabric worker runs in this process: the other workers' first passes wait
        for its first full sync of the leaves (``leaves_repaired``)."""
        self._leaves_first.expect()

    def leaves_repaired(self) -> None:
        self._leaves_first.done()

    def wait_for_leaves(self, stop: threading.Event) -> None:
        """At a worker process's start, the fabric worker's first repair of the leaves
        (after an outage: every network a switch missed) comes before the other
        workers' first passes (the watcher's full read, the policy and port-group
        backlogs): they all share one interpreter, and the leaves carry the traffic.
        At most ``LEAVES_FIRST_TIMEOUT``; at once where no fabric worker runs."""
        self._leaves_first.wait(stop)

    def expect_watcher_read(self) -> None:
        """A vCenter watcher runs in this process: the start's port-group audit waits
        for its first full read (``watcher_read_done``)."""
        self._watcher_first.expect()

    def watcher_read_done(self) -> None:
        """The watcher's first full read ended, or will not run here (another process
        holds the watcher's lease, vCenter does not answer, stopping)."""
        self._watcher_first.done()

    def wait_for_watcher_read(self, stop: threading.Event) -> None:
        """The watcher's first full read (where every VM runs) before the start's read
        of every port group: at 4,000 port groups and 5,000 VMs the two side by side
        each took longer than both one after the other.  At most
        ``WATCHER_FIRST_TIMEOUT``; at once where no watcher runs."""
        self._watcher_first.wait(stop)

    # -- which deployment we are ---------------------------------------------------
    @property
    def deployment_id(self) -> str:
        """This deployment's id (``db/deployment.py``), read from Neutron's database once."""
        with self._lock:
            if self._deployment is None:
                from neutron_lib import context as n_context

                from networking_dvs_fabric.db import deployment
                self._deployment = deployment.deployment_id(n_context.get_admin_context())
            return self._deployment

    def _deployment_id(self) -> str | None:
        return self.deployment_id

    # -- vCenter --------------------------------------------------------------
    @property
    def vcenter(self) -> VSphereBackend | None:
        """The vCenter backend; None when ``[ml2_vsphere] vcenter_url`` is not set."""
        with self._lock:
            if self._vcenter is _UNBUILT:
                if not self._vsphere_group.vcenter_url:
                    return None
                self._vcenter = vcenter_backend_from_conf(self._vsphere_group,
                                                          self._deployment_id)
            return self._vcenter

    def require_vcenter(self) -> VSphereBackend:
        """The vCenter backend, or the configuration error that says what is missing."""
        with self._lock:
            if self._vcenter is _UNBUILT or self._vcenter is None:
                self._vcenter = vcenter_backend_from_conf(self._vsphere_group,
                                                          self._deployment_id)
            return self._vcenter

    @property
    def directory(self) -> HostDirectory | None:
        """vCenter's answers for the topology (None: no vCenter configured)."""
        with self._lock:
            if self._directory is _UNBUILT:
                backend = self.vcenter
                if backend is None:
                    self._directory = None
                else:
                    from networking_dvs_fabric.vcenter.hosts import VCenterHostDirectory
                    self._directory = VCenterHostDirectory(backend)
            return self._directory

    # -- the fabric -----------------------------------------------------------
    def require_topology(self) -> Topology:
        with self._lock:
            if self._topology is None:
                path = self._fabric_group.topology_file
                if not path:
                    raise FabricConfigurationError(option="topology_file",
                                                   reason="required, not set")
                try:
                    self._topology = Topology.load(path)
                except TopologyError as exc:
                    raise FabricConfigurationError(option="topology_file", reason=str(exc))
            return self._topology

    def fabric_physical_networks(self) -> frozenset[str]:
        """The physical networks the fabric's VLANs can be on (``Topology``'s)."""
        return self.require_topology().physical_networks(self.directory)

    @property
    def topology(self) -> Topology | None:
        """The topology; None when ``[ml2_fabric] topology_file`` is not set."""
        if not self._fabric_group.topology_file:
            return None
        return self.require_topology()

    @property
    def fabric(self) -> FabricBackend:
        """The leaves' backend, connected on first use (needs the topology)."""
        with self._lock:
            if self._fabric is None:
                from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
                settings = self.fabric_settings
                self._fabric = HwvtepBackend(
                    list(self.require_topology().leaves.values()),
                    connect_timeout=settings.ovsdb_connect_timeout,
                    txn_timeout=settings.ovsdb_transaction_timeout,
                    deployment=self._deployment_id)
            return self._fabric

    @property
    def fabric_in_use(self) -> bool:
        return self._fabric is not None

    # -- wake-ups -------------------------------------------------------------
    @property
    def waker(self) -> Waker:
        with self._lock:
            if self._waker is None:
                try:
                    self._waker = Waker(self._fabric_group.wakeup_targets)
                except ValueError as exc:
                    raise FabricConfigurationError(option="wakeup_targets", reason=str(exc))
            return self._waker

    # -- the end --------------------------------------------------------------
    def close_fabric(self) -> None:
        """Close the leaves' connections (made again on the next use)."""
        with self._lock:
            fabric, self._fabric = self._fabric, None
        if fabric is not None:
            fabric.close()

    def close(self) -> None:
        """Stop everything this runtime started; it is not this process's runtime any
        more (the next :func:`for_process` builds a new one)."""
        global _current
        with _process_lock:
            if _current is not None and _current[1] is self:
                _current = None
        self.close_fabric()
        with self._lock:
            backend = self._vcenter
        if isinstance(backend, VSphereBackend):
            backend.stop()


_process_lock = threading.Lock()
_current: tuple[tuple, Runtime] | None = None


def _fingerprint(conf: cfg.ConfigOpts) -> tuple:
    """What the runtime is built from: every option of the project's two groups."""
    values = []
    for group, options in opts.list_opts():
        for opt in options:
            value = conf[group][opt.dest]
            values.append((group, opt.dest, tuple(value) if isinstance(value, list) else value))
    return tuple(values)


def for_process(conf: cfg.ConfigOpts = cfg.CONF) -> Runtime:
    """This process's runtime (made on the first call).

    Configuration is read once per process; a process whose configuration differs
    from the one its runtime was built from (a test that starts Neutron again with
    other options) gets a new runtime.
    """
    global _current
    opts.register_opts(conf)
    key = _fingerprint(conf)
    with _process_lock:
        if _current is None or _current[0] != key:
            _current = (key, Runtime(conf))
        return _current[1]


def forget() -> None:
    """Close this process's runtime, if any (tests: each starts from nothing)."""
    with _process_lock:
        current = _current[1] if _current is not None else None
    if current is not None:
        current.close()
