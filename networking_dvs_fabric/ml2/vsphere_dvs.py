"""The ``vsphere_dvs`` mechanism driver: VLAN segments on a DVS, for vCenter clusters.

Binds, at whatever level ML2 asks, a ``vlan`` segment whose physical_network is
mapped to a DVS, for a binding host that is a mapped cluster (or an ESXi host)
on that DVS.  Before answering it makes sure the network's port group exists
with the segment's VLAN; Nova's VMware driver reads ``vif_details``.  Everything
else is left to other drivers.
"""
from __future__ import annotations

import logging
import ssl
import time

from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc
from neutron_lib.api.definitions import portbindings
from neutron_lib.db import api as db_api
from neutron_lib.plugins.ml2 import api
from neutron_lib.utils import helpers
from oslo_config import cfg

from networking_dvs_fabric import opts
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.wakeup import Waker
from networking_dvs_fabric.ml2.sweeper import PortGroupSweeper
from networking_dvs_fabric.vcenter import errors, naming
from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
from networking_dvs_fabric.vcenter.session import VCenterSession, config_from_conf

LOG = logging.getLogger(__name__)

DRIVER_NAME = "vsphere_dvs"
VIF_TYPE_DVS = "dvs"
RESOURCE_PORT_GROUP = "port_group"


class ConfigurationError(n_exc.NeutronException):
    message = "[ml2_vsphere] %(option)s: %(reason)s"


class StartError(n_exc.NeutronException):
    message = "vsphere_dvs cannot start: %(reason)s"


def _mappings(option: str, values: list[str]) -> dict[str, str]:
    try:
        return helpers.parse_mappings(values, unique_values=False)
    except ValueError as exc:
        raise ConfigurationError(option=option, reason=str(exc)) from exc


def backend_from_conf(group) -> VSphereBackend:
    """A (not yet started) backend from ``[ml2_vsphere]``; bad options raise, naming them."""
    dvs_mappings = _mappings("dvs_mappings", group.dvs_mappings)
    if not dvs_mappings:
        raise ConfigurationError(option="dvs_mappings",
                                 reason="map at least one physical_network to a DVS")
    try:
        naming.check_format(group.port_group_name_format)
    except naming.NameFormatError as exc:
        raise ConfigurationError(option="port_group_name_format", reason=str(exc))
    missing = [name for name in ("vcenter_url", "username", "password", "datacenter")
               if not getattr(group, name)]
    if missing:
        raise ConfigurationError(option=", ".join(missing), reason="required, not set")
    if group.ca_file and not group.insecure:
        try:
            ssl.create_default_context(cafile=group.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(option="ca_file",
                                     reason=f"cannot read {group.ca_file!r} as PEM: {exc}")
    vcenter = config_from_conf(group)
    settings = BackendSettings(
        datacenter=group.datacenter, dvs_mappings=dvs_mappings,
        host_mappings=_mappings("host_mappings", group.host_mappings),
        name_format=group.port_group_name_format,
        unreachable_holdoff=group.unreachable_holdoff)
    return VSphereBackend(settings, lambda: VCenterSession(vcenter))


class VSphereDVSMechanismDriver(api.MechanismDriver):
    """Port groups on a VMware DVS for Neutron VLAN segments."""

    backend: VSphereBackend

    def initialize(self) -> None:
        opts.register_opts(cfg.CONF)
        group = cfg.CONF[opts.VSPHERE_GROUP]
        self.backend = backend_from_conf(group)
        self._sweep_interval = group.cleanup_interval
        self.waker = Waker(cfg.CONF[opts.FABRIC_GROUP].wakeup_targets)
        try:
            # The port group watch starts with the first bind: processes that never
            # bind (neutron-periodic-workers) do not follow vCenter for nothing.
            self.backend.start(watch=False)
        except errors.VCenterError as exc:
            self.backend.stop()
            raise StartError(reason=str(exc))
        LOG.info("vsphere_dvs ready: datacenter %(dc)s, DVS mappings %(dvs)s",
                 {"dc": group.datacenter, "dvs": self.backend.settings.dvs_mappings})

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def get_workers(self) -> list:
        from networking_dvs_fabric.ml2.port_group_worker import PortGroupWorker
        return [PortGroupWorker(self), PortGroupSweeper(self, self._sweep_interval)]

    # -- binding --------------------------------------------------------------
    def bind_port(self, context: api.PortContext) -> None:
        host = context.host
        vnic_type = context.current.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL)
        if vnic_type != portbindings.VNIC_NORMAL:
            # Nova's VMware driver plugs only vNICs on port groups (no SR-IOV, no
            # passthrough): other kinds are for other drivers.
            return
        for segment in context.segments_to_bind:
            physnet = segment.get(api.PHYSICAL_NETWORK)
            if segment.get(api.NETWORK_TYPE) != n_const.TYPE_VLAN or \
                    self.backend.dvs_for(physnet) is None:
                continue
            try:
                if not self.backend.serves(host, physnet):
                    LOG.debug("vsphere_dvs: host %s is not on the DVS of %s", host, physnet)
                    continue
                network = context.network.current
                started = time.perf_counter()
                binding = self.backend.ensure_port_group(
                    physnet, network["id"], network.get("name") or "",
                    int(segment[api.SEGMENTATION_ID]))
            except errors.VCenterError as exc:
                LOG.error("vsphere_dvs: cannot bind port %(port)s on host %(host)s: "
                          "%(reason)s", {"port": context.current["id"], "host": host,
                                         "reason": exc})
                return
            context.set_binding(
                segment[api.ID], VIF_TYPE_DVS,
                {"dvs_id": binding.dvs_uuid, "pg_id": binding.pg_key,
                 "dvs_port_group_name": binding.pg_name,
                 portbindings.VIF_DETAILS_CONNECTIVITY: self.connectivity},
                status=n_const.PORT_STATUS_ACTIVE)
            LOG.info("vsphere_dvs: bound port %(port)s on %(host)s to port group %(pg)s "
                     "(VLAN %(vlan)s, level %(level)d, port group ensured in %(ms).1f ms)",
                     {"port": context.current["id"], "host": host, "pg": binding.pg_name,
                      "vlan": binding.vlan, "level": len(context.binding_levels or []),
                      "ms": (time.perf_counter() - started) * 1000})
            return

    # -- clean-up: recorded in Neutron's transaction, done by the journal worker --
    # The release itself runs in neutron-periodic-workers (PortGroupWorker), so a
    # vCenter that is down or slow never holds up a port delete, and nothing is
    # forgotten when a process dies: the row stays until the port group is gone.
    def _record_release(self, plugin_context, network_id: str, dvs_name: str) -> None:
        with db_api.CONTEXT_WRITER.using(plugin_context):
            store.record(plugin_context, RESOURCE_PORT_GROUP,
                         port_group_resource(network_id, dvs_name))

    def update_port_precommit(self, context: api.PortContext) -> None:
        old = _our_segment(context.original_binding_levels)
        if old is None:
            return
        new = _our_segment(context.binding_levels)
        if new is not None and new.get(api.PHYSICAL_NETWORK) == old.get(api.PHYSICAL_NETWORK):
            return
        dvs_name = self.backend.dvs_for(old.get(api.PHYSICAL_NETWORK))
        if dvs_name is not None:
            self._record_release(context.plugin_context, context.current["network_id"],
                                 dvs_name)

    def delete_port_precommit(self, context: api.PortContext) -> None:
        segment = _our_segment(context.binding_levels)
        dvs_name = self.backend.dvs_for((segment or {}).get(api.PHYSICAL_NETWORK))
        if dvs_name is not None:
            self._record_release(context.plugin_context, context.current["network_id"],
                                 dvs_name)

    def delete_network_precommit(self, context: api.NetworkContext) -> None:
        for dvs_name in sorted(set(self.backend.settings.dvs_mappings.values())):
            self._record_release(context.plugin_context, context.current["id"], dvs_name)

    def update_port_postcommit(self, context: api.PortContext) -> None:
        if _our_segment(context.original_binding_levels) is not None:
            self.waker.wake()

    def delete_port_postcommit(self, context: api.PortContext) -> None:
        if _our_segment(context.binding_levels) is not None:
            self.waker.wake()

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self.waker.wake()


def port_group_resource(network_id: str, dvs_name: str) -> str:
    """Journal resource id of a (network, DVS) port group; network ids hold no ':'."""
    return f"{network_id}:{dvs_name}"


def parse_port_group_resource(resource_id: str) -> tuple[str, str]:
    network_id, _, dvs_name = resource_id.partition(":")
    return network_id, dvs_name


def _our_segment(levels: list[dict] | None) -> dict | None:
    for level in levels or []:
        if level.get(api.BOUND_DRIVER) == DRIVER_NAME:
            return level.get(api.BOUND_SEGMENT)
    return None

