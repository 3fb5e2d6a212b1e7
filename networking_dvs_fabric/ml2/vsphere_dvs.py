"""The ``vsphere_dvs`` mechanism driver: VLAN segments on a DVS, for vCenter clusters.

Binds, at whatever level ML2 asks, a ``vlan`` segment whose physical_network is
mapped to a DVS, for a binding host that is a mapped cluster (or an ESXi host)
on that DVS.  Before answering it checks that the network's MTU fits the DVS's
(refusing the binding, or raising the DVS's MTU with ``raise_dvs_mtu``) and makes
sure the network's port group exists with the segment's VLAN, noted in its guard
row so that no release deletes it meanwhile (``vcenter/usage.ensure_for_bind``);
Nova's VMware driver reads ``vif_details``.  The port is ACTIVE at once, unless someone holds a
provisioning block on it (a top-level driver waiting for its fabric; DHCP).
Everything else is left to other drivers.
"""
from __future__ import annotations

import logging
import time

from neutron.db import models_v2
from neutron.db.models import provisioning_block
from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc
from neutron_lib.api.definitions import portbindings
from neutron_lib.db import api as db_api
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_db import exception as db_exc

from networking_dvs_fabric import names, opts, runtime
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.levels import segment_bound_by
from networking_dvs_fabric.security import callbacks, desired, membership, model, translate
from networking_dvs_fabric.vcenter import errors, usage
from networking_dvs_fabric.vcenter.backend import DVSMtuNotRaised, VSphereBackend

LOG = logging.getLogger(__name__)

DRIVER_NAME = names.VSPHERE_DRIVER
# ML2 tries a failed binding up to ten times in one request: an MTU refusal is
# logged as an ERROR once per port and cause within this many seconds.
REFUSAL_LOG_WINDOW = 60.0
VIF_TYPE_DVS = "dvs"
ConfigurationError = runtime.VSphereConfigurationError


class StartError(n_exc.NeutronException):
    message = "vsphere_dvs cannot start: %(reason)s"


class VSphereDVSMechanismDriver(api.MechanismDriver):
    """Port groups on a VMware DVS for Neutron VLAN segments."""

    runtime: runtime.Runtime
    backend: VSphereBackend        # the runtime's: one vCenter login per process

    def initialize(self) -> None:
        self.runtime = runtime.for_process()
        self.backend = self.runtime.require_vcenter()
        self.waker = self.runtime.waker
        self.raise_dvs_mtu: bool = cfg.CONF[opts.VSPHERE_GROUP].raise_dvs_mtu
        self._refusals_logged: dict[tuple, float] = {}
        try:
            # The port group watch starts with the first bind: processes that never
            # bind (neutron-periodic-workers) do not follow vCenter for nothing.
            self.backend.start(watch=False)
        except errors.VCenterError as exc:
            self.backend.stop()
            raise StartError(reason=str(exc))
        # Security group rules the DVS cannot express are refused at the API; rule
        # and membership changes are journaled for the policy worker.
        self.subscriber = callbacks.Subscriber(self._dvs_names, self.waker.wake,
                                               self.backend.settings.max_filter_rules)
        self.subscriber.subscribe()
        LOG.info("vsphere_dvs ready: datacenter %(dc)s, DVS mappings %(dvs)s",
                 {"dc": self.backend.settings.datacenter,
                  "dvs": self.backend.settings.dvs_mappings})

    def _dvs_names(self) -> list[str]:
        return sorted(set(self.backend.settings.dvs_mappings.values()))

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def get_workers(self) -> list:
        # Imported here: API processes never run them.
        from networking_dvs_fabric.vcenter.policy_worker import PolicyWorker
        from networking_dvs_fabric.vcenter.port_group_worker import PortGroupWorker
        from networking_dvs_fabric.vcenter.sweeper import PortGroupSweeper
        return [PortGroupWorker(self.runtime), PortGroupSweeper(self.runtime),
                PolicyWorker(self.runtime)]

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
                if not self._mtu_fits(context, physnet):
                    continue
                network = context.network.current
                started = time.perf_counter()
                name, vlan = network.get("name") or "", int(segment[api.SEGMENTATION_ID])
                port_set = _port_set(context)
                policy = _policy_of(context.plugin_context, network["id"], port_set,
                                    self.backend.settings.max_filter_rules)
                binding = self.backend.ensure_port_group(physnet, network["id"], name, vlan,
                                                         port_set.key, policy)
                ensured_ms = (time.perf_counter() - started) * 1000
                # Written down in the port group's guard row before it is answered: a
                # release in another process never deletes it under us.
                binding = usage.guard_bind(context.plugin_context, self.backend, physnet,
                                           network["id"], name, vlan, context.current["id"],
                                           binding, port_set.key, policy)
            except translate.PolicyTooLarge as exc:
                LOG.error("vsphere_dvs: cannot bind port %(port)s on host %(host)s: "
                          "%(reason)s", {"port": context.current["id"], "host": host,
                                         "reason": exc})
                return
            except (errors.VCenterError, db_exc.DBError) as exc:
                LOG.error("vsphere_dvs: cannot bind port %(port)s on host %(host)s: "
                          "%(reason)s", {"port": context.current["id"], "host": host,
                                         "reason": exc})
                return
            # ACTIVE at once, unless someone holds a provisioning block on the port (a
            # top-level driver such as fabric_hwvtep until its fabric carries the port,
            # ML2 for DHCP): ML2 makes it ACTIVE when the last block goes.
            # A port that is administratively down sits on its network's blocked port
            # group and is DOWN.
            if port_set.key == model.BLOCKED:
                status = n_const.PORT_STATUS_DOWN
            else:
                blocked = _blocked(context.plugin_context, context.current["id"])
                status = None if blocked else n_const.PORT_STATUS_ACTIVE
            context.set_binding(
                segment[api.ID], VIF_TYPE_DVS,
                {"dvs_id": binding.dvs_uuid, "pg_id": binding.pg_key,
                 "dvs_port_group_name": binding.pg_name,
                 membership.VIF_DETAILS_SET: port_set.key,
                 portbindings.VIF_DETAILS_CONNECTIVITY: self.connectivity},
                status=status)
            LOG.info("vsphere_dvs: bound port %(port)s on %(host)s to port group %(pg)s "
                     "(VLAN %(vlan)s, level %(level)d, port group ensured in %(ms).1f ms, "
                     "bind %(total).1f ms)",
                     {"port": context.current["id"], "host": host, "pg": binding.pg_name,
                      "vlan": binding.vlan, "level": len(context.binding_levels or []),
                      "ms": ensured_ms, "total": (time.perf_counter() - started) * 1000})
            return

    def _mtu_fits(self, context: api.PortContext, physnet: str) -> bool:
        """Does the network's MTU fit its DVS's (raised first with raise_dvs_mtu)?

        Checked before anything is written to vCenter: the DVS would drop larger
        frames.  No I/O when the cached inventory's MTU is big enough.
        """
        network = context.network.current
        mtu = int(network.get("mtu") or 0)
        if not mtu:
            return True
        failure = None
        try:
            dvs_mtu = self.backend.dvs_mtu(physnet, mtu, raise_it=self.raise_dvs_mtu)
        except DVSMtuNotRaised as exc:
            failure = str(exc)
            dvs_mtu = self.backend.inventory().dvs[self.backend.dvs_for(physnet)].max_mtu
        if mtu <= dvs_mtu:
            return True
        args = {"port": context.current["id"], "host": context.host,
                "net": network["id"], "name": network.get("name") or "", "mtu": mtu,
                "dvs": self.backend.dvs_for(physnet), "physnet": physnet, "max": dvs_mtu,
                "failure": failure}
        if failure is None:
            cause = ("Lower the network's MTU (for new networks: Neutron's "
                     "global_physnet_mtu or [ml2] physical_network_mtus), raise the DVS's "
                     "MTU in vSphere, or set [ml2_vsphere] raise_dvs_mtu = true")
        else:
            cause = ("Raising it failed: %(failure)s. Raise the DVS's MTU in vSphere or "
                     "lower the network's MTU (for new networks: Neutron's "
                     "global_physnet_mtu or [ml2] physical_network_mtus)")
        self._log_refusal(
            (args["port"], args["net"], mtu, args["dvs"], dvs_mtu, failure is None),
            "vsphere_dvs: not binding port %(port)s on host %(host)s: network %(net)s "
            "(%(name)s) has MTU %(mtu)d, larger than the maxMtu %(max)d of DVS %(dvs)s "
            "(physical network %(physnet)s), which would drop the larger frames. " + cause,
            args)
        return False

    def _log_refusal(self, key: tuple, message: str, args: dict) -> None:
        now = time.monotonic()
        logged = self._refusals_logged
        if len(logged) > 512:
            for old in [k for k, t in logged.items() if now - t > REFUSAL_LOG_WINDOW]:
                del logged[old]
        last = logged.get(key)
        if last is not None and now - last <= REFUSAL_LOG_WINDOW:
            LOG.debug(message, args)
            return
        logged[key] = now
        LOG.error(message, args)

    # -- clean-up: recorded in Neutron's transaction, done by the journal worker --
    # The release itself runs in neutron-periodic-workers (PortGroupWorker), so a
    # vCenter that is down or slow never holds up a port delete, and nothing is
    # forgotten when a process dies: the row stays until the port group is gone.
    def _record_release(self, plugin_context, network_id: str, dvs_name: str) -> None:
        with db_api.CONTEXT_WRITER.using(plugin_context):
            store.record(plugin_context, names.RESOURCE_PORT_GROUP,
                         names.port_group_resource(network_id, dvs_name))

    # -- filters: what changed is journaled for the policy worker -------------------
    def create_port_precommit(self, context: api.PortContext) -> None:
        callbacks.port_changed(context.plugin_context, None, context.current,
                               self._dvs_names())

    def update_port_precommit(self, context: api.PortContext) -> None:
        old = _our_segment(context.original_binding_levels)
        new = _our_segment(context.binding_levels)
        # A bind alone changes no filter: the port's addresses were journaled for its
        # set's port group (and those naming its groups) when it was created, and a
        # port group made by the bind gets the whole policy at once.
        callbacks.port_changed(context.plugin_context, context.original, context.current,
                               self._dvs_names())
        if old is not None and new is not None and \
                membership.key_of_port(context.original) != \
                membership.key_of_port(context.current):
            # Its groups, port security or admin state changed: the worker moves its NIC.
            callbacks.record_port_set(context.plugin_context, context.current["id"])
        if old is None:
            return
        if new is not None and new.get(api.PHYSICAL_NETWORK) == old.get(api.PHYSICAL_NETWORK):
            return
        dvs_name = self.backend.dvs_for(old.get(api.PHYSICAL_NETWORK))
        if dvs_name is not None:
            self._record_release(context.plugin_context, context.current["network_id"],
                                 dvs_name)

    def delete_port_precommit(self, context: api.PortContext) -> None:
        callbacks.port_changed(context.plugin_context, context.current, None,
                               self._dvs_names())
        segment = _our_segment(context.binding_levels)
        dvs_name = self.backend.dvs_for((segment or {}).get(api.PHYSICAL_NETWORK))
        if dvs_name is not None:
            self._record_release(context.plugin_context, context.current["network_id"],
                                 dvs_name)

    def delete_network_precommit(self, context: api.NetworkContext) -> None:
        for dvs_name in sorted(set(self.backend.settings.dvs_mappings.values())):
            self._record_release(context.plugin_context, context.current["id"], dvs_name)

    def create_port_postcommit(self, context: api.PortContext) -> None:
        # A port created with a host is bound in this same request, and its binding's
        # update_port_postcommit wakes the worker: woken here, the worker would plan
        # (reading Neutron's database) while this request is still binding.
        if context.current.get("security_groups") and not context.host:
            self.waker.wake()

    def update_port_postcommit(self, context: api.PortContext) -> None:
        # Ours before or after; or a port in groups whose binding changed (bound by
        # another driver, or not at all: its addresses still count in remote groups).
        if _our_segment(context.original_binding_levels) is not None or \
                _our_segment(context.binding_levels) is not None or \
                (context.current.get("security_groups") and
                 (context.host != context.original_host or
                  context.binding_levels != context.original_binding_levels)):
            self.waker.wake()

    def delete_port_postcommit(self, context: api.PortContext) -> None:
        if _our_segment(context.binding_levels) is not None:
            self.waker.wake()

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self.waker.wake()


def _our_segment(levels: list[dict] | None) -> dict | None:
    return segment_bound_by(levels, DRIVER_NAME)


def _blocked(plugin_context, port_id: str) -> bool:
    """Does anyone hold a provisioning block on the port?  (One query.)"""
    block = provisioning_block.ProvisioningBlock
    with db_api.CONTEXT_READER.using(plugin_context):
        return plugin_context.session.query(block.entity).join(
            models_v2.Port, models_v2.Port.standard_attr_id == block.standard_attr_id).filter(
            models_v2.Port.id == port_id).first() is not None


def _port_set(context: api.PortContext) -> membership.PortSet:
    port = context.current
    return membership.PortSet(
        port["id"], port["network_id"], port.get("mac_address") or "",
        membership.key_of_port(port), tuple(sorted(port.get("security_groups") or ())),
        port.get("port_security_enabled", True) is not False,
        port.get("admin_state_up", True) is not False)


def _policy_of(plugin_context, network_id: str, port_set: membership.PortSet,
               max_rules: int):
    """The policy of the port's set's port group, computed only if it must be written."""
    def policy() -> model.PortGroupPolicy:
        found = desired.policy_for_set(plugin_context, network_id, port_set.key,
                                       including=port_set, max_rules=max_rules)
        # Never reached for a port counted in: a set nobody is in gets nothing through.
        return found if found is not None else model.BLOCKED_POLICY
    return policy
