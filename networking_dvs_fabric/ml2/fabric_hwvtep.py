"""The ``fabric_hwvtep`` mechanism driver: VXLAN networks on leaves that speak hardware_vtep.

Top level of a hierarchical binding.  For a ``vxlan`` segment and a binding host
the topology places (a vCenter cluster's compute host, an ESXi host, a KVM or
SR-IOV host), it allocates a dynamic VLAN segment on the host's physical network
and lets the next level bind it (``vsphere_dvs`` for vSphere, Open vSwitch for a
KVM host, ...).  No switch I/O while binding: the network is recorded in the
journal in precommit, inside Neutron's own transaction, and the fabric worker
(``get_workers``, in ``neutron-periodic-workers``) programs the leaves.  A port
it binds holds a provisioning block, so it stays DOWN until the worker sees the
leaves carry it (``fabric/provisioning.py``).
"""
from __future__ import annotations

import logging
import time

from neutron.db import segments_db
from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc
from neutron_lib.api.definitions import portbindings
from neutron_lib.db import api as db_api
from neutron_lib.plugins.ml2 import api

from networking_dvs_fabric import levels, names, runtime
from networking_dvs_fabric.fabric import provisioning
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.ml2 import fabric_bindings, segments
from networking_dvs_fabric.topology import HostDirectory, Topology
from networking_dvs_fabric.vcenter import errors

LOG = logging.getLogger(__name__)

DRIVER_NAME = names.FABRIC_DRIVER
RESOURCE_NETWORK = names.RESOURCE_NETWORK
INACTIVE_BINDING_DELAYS = (0.5, 3.0)
HOLD_TRIES = 3
UNPLACED_WARN_EVERY = 300.0
ConfigurationError = runtime.FabricConfigurationError


class SegmentReleasedUnderBind(n_exc.NeutronException):
    message = ("dynamic VLAN segment of network %(network)s on physical network %(physnet)s "
               "was released under the bind %(tries)d times in a row")


class FabricHwvtepMechanismDriver(api.MechanismDriver):
    """Hierarchical port binding of VXLAN networks onto leaf switches."""

    runtime: runtime.Runtime
    topology: Topology
    directory: HostDirectory | None

    def initialize(self) -> None:
        self.runtime = runtime.for_process()
        self.topology = self.runtime.require_topology()
        settings = self.runtime.fabric_settings
        self.mode = settings.mode
        self.mac_distribution = settings.mac_distribution
        self.directory = self.runtime.directory
        if self.directory is None:
            LOG.info("fabric_hwvtep: no [ml2_vsphere] vcenter_url; only hosts with a "
                     "physical_network in the topology file are served")
        self.waker = self.runtime.waker
        self._unplaced_warned: dict[str, float] = {}
        LOG.info("fabric_hwvtep ready: %(leaves)d leaves, %(hosts)d hosts in %(file)s, "
                 "mode %(mode)s, MAC distribution %(macs)s",
                 {"leaves": len(self.topology.leaves), "hosts": len(self.topology.hosts),
                  "file": self.runtime.topology_file, "mode": self.mode,
                  "macs": self.mac_distribution})

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2

    def get_workers(self) -> list:
        # Imported here: API processes never run the worker nor load ovsdbapp.
        from networking_dvs_fabric.fabric.worker import FabricWorker
        from networking_dvs_fabric.sync.full_sync import FullSync
        fabric_worker = FabricWorker(self.runtime)
        # Its repair converges the leaves with the worker's own handler; a leaf's new
        # identity wakes the worker, which checks the leaves' on every pass; its port
        # groups' part runs on a thread of its own, started with the worker.
        full_sync = FullSync(self.runtime, fabric_worker.sync, wake=fabric_worker.wake)
        fabric_worker.add_housekeeping(full_sync.run_if_due)
        fabric_worker.add_pass_hook(full_sync.run_if_leaf_changed)
        fabric_worker.add_companion(full_sync)
        workers = [fabric_worker]
        if self.directory is not None:
            from networking_dvs_fabric.watcher.worker import VCenterWatcher
            workers.append(VCenterWatcher(self.runtime))
        return workers

    # -- binding --------------------------------------------------------------
    def bind_port(self, context: api.PortContext) -> None:
        for segment in context.segments_to_bind:
            if segment.get(api.NETWORK_TYPE) != n_const.TYPE_VXLAN:
                continue
            try:
                placement = self.topology.placement(context.host, self.directory)
            except errors.VCenterError as exc:
                LOG.error("fabric_hwvtep: cannot place host %(host)s for port %(port)s: "
                          "%(err)s", {"host": context.host, "port": context.current["id"],
                                      "err": exc})
                return
            if placement is None:
                self._unplaced(context)
                if self._fabric_vlans_offered(context):
                    # ML2 offers the network's dynamic VLAN segments (ours, made for
                    # hosts behind the leaves) at the top level too: an agent mapping
                    # their physical network would bind straight into a VLAN no leaf
                    # carries for this host.  Refuse the port instead (this works as
                    # fabric_hwvtep is listed before the bottom drivers, as a top
                    # level of a hierarchical binding must be).
                    context.set_binding(segment[api.ID],
                                        portbindings.VIF_TYPE_BINDING_FAILED, {})
                return
            dynamic, active_host = self._allocate_and_hold(context, placement.physical_network)
            if dynamic is None:
                LOG.error("fabric_hwvtep: cannot bind port %(port)s of network %(net)s: no "
                          "VLAN left on physical network %(physnet)s (its VLAN range in "
                          "[ml2_type_vlan] network_vlan_ranges is used up)",
                          {"physnet": placement.physical_network,
                           "port": context.current["id"],
                           "net": context.network.current["id"]})
                return
            LOG.info("fabric_hwvtep: port %(port)s on %(host)s: VNI %(vni)s -> VLAN %(vlan)s "
                     "on %(physnet)s", {"port": context.current["id"], "host": context.host,
                                        "vni": segment[api.SEGMENTATION_ID],
                                        "vlan": dynamic[api.SEGMENTATION_ID],
                                        "physnet": placement.physical_network})
            context.continue_binding(segment[api.ID], [dynamic])
            if active_host not in (None, context.host):
                self._record_inactive_binding(context)
            return

    def _fabric_vlan(self, context: api.PortContext,
                     binding_levels: list[dict] | None) -> str | None:
        return fabric_bindings.fabric_vlan(context, binding_levels,
                                           self.runtime.fabric_physical_networks())

    def _fabric_vlans_offered(self, context: api.PortContext) -> bool:
        """Are the fabric's dynamic VLAN segments among the segments offered to bind?
        Static provider VLAN segments of a multi-segment network are not the fabric's,
        nor another top-level driver's dynamic ones (on physical networks not ours)."""
        ours = self.runtime.fabric_physical_networks()
        offered = {s[api.ID] for s in context.segments_to_bind
                   if s.get(api.NETWORK_TYPE) == n_const.TYPE_VLAN
                   and s.get(api.PHYSICAL_NETWORK) in ours}
        return bool(offered) and bool(offered & fabric_bindings.dynamic_segment_ids(context))

    def _unplaced(self, context: api.PortContext) -> None:
        """A VXLAN port on a host the topology does not place is left to other drivers
        (a host doing VXLAN in software binds it itself); when none binds it, the log must
        say why: a warning naming the host and the topology file, at most once per host
        every ``UNPLACED_WARN_EVERY`` seconds (ML2 tries each bind several times)."""
        host = context.host
        now = time.monotonic()
        if now - self._unplaced_warned.get(host, -UNPLACED_WARN_EVERY) < UNPLACED_WARN_EVERY:
            LOG.debug("fabric_hwvtep: host %s not in the fabric topology", host)
            return
        self._unplaced_warned[host] = now
        LOG.warning("fabric_hwvtep: binding host %(host)s of port %(port)s is not in the "
                    "fabric topology file %(file)s (nor an ESXi host of a cluster it "
                    "names): the port is not bound through the fabric, nor into a VLAN "
                    "the fabric made for other hosts; add the host and its leaf ports to "
                    "the file",
                    {"host": host, "port": context.current["id"],
                     "file": self.runtime.topology_file})

    def _allocate_and_hold(self, context: api.PortContext,
                           physical_network: str) -> tuple[dict | None, str | None]:
        """The network's dynamic VLAN segment on ``physical_network``, locked against a
        concurrent release (``segments`` module doc), and the port's active binding host.

        (None, None) when the VLAN range is used up.  A segment released between ML2's
        answer and the lock is asked for again: ML2 then allocates a new one.
        """
        for _ in range(HOLD_TRIES):
            try:
                dynamic = context.allocate_dynamic_segment(
                    {api.NETWORK_TYPE: n_const.TYPE_VLAN,
                     api.PHYSICAL_NETWORK: physical_network})
            except n_exc.NoNetworkAvailable:
                dynamic = None        # the VLAN range is used up (nothing was allocated)
            if dynamic is None:
                return None, None
            with db_api.CONTEXT_WRITER.using(context.plugin_context):
                held, active_host = segments.hold(context.plugin_context, dynamic[api.ID],
                                                  context.current["id"])
                if held:
                    # DOWN until the leaves carry it; in the lock's transaction, so
                    # it costs the bind no commit of its own.
                    provisioning.hold(context.plugin_context, context.current["id"])
            if held:
                return dynamic, active_host
            LOG.info("fabric_hwvtep: segment %(seg)s of network %(net)s was released while "
                     "port %(port)s was being bound; asking for the segment again",
                     {"seg": dynamic[api.ID], "net": context.network.current["id"],
                      "port": context.current["id"]})
        raise SegmentReleasedUnderBind(network=context.network.current["id"],
                                       physnet=physical_network, tries=HOLD_TRIES)

    def _record_inactive_binding(self, context: api.PortContext) -> None:
        """A second, inactive binding (live migration's destination) is being made.

        ML2 stores it without calling any precommit/postcommit hook, a moment after
        this bind returns.  So the network is journaled here, due a little later,
        twice (level-triggered: a repeat costs nothing), so the worker finds the new
        binding levels in the database and prepares the destination.
        """
        network_id = context.current["network_id"]
        with db_api.CONTEXT_WRITER.using(context.plugin_context):
            for delay in INACTIVE_BINDING_DELAYS:
                store.record(context.plugin_context, RESOURCE_NETWORK, network_id,
                             "inactive-binding", delay=delay)
        LOG.info("fabric_hwvtep: inactive binding of port %(port)s on %(host)s: the "
                 "destination will be prepared", {"port": context.current["id"],
                                                  "host": context.host})

    # -- intent: recorded in Neutron's transaction ----------------------------
    def _record(self, plugin_context, network_id: str) -> None:
        with db_api.CONTEXT_WRITER.using(plugin_context):
            store.record(plugin_context, RESOURCE_NETWORK, network_id)

    def update_port_precommit(self, context: api.PortContext) -> None:
        if fabric_bindings.only_status_changed(context):
            return      # a status change (ours, when the leaves carry the port) needs nothing
        ours = self._fabric_vlan(context, context.binding_levels) is not None
        was_ours = self._fabric_vlan(context, context.original_binding_levels) is not None
        if not (ours or was_ours):
            return
        self._record(context.plugin_context, context.current["network_id"])
        if was_ours and not ours:
            provisioning.release(context.plugin_context, context.current["id"])
        elif ours and (fabric_bindings.activated_without_bind(context) or
                       _bound_straight_into_fabric_vlan(context)):
            provisioning.hold(context.plugin_context, context.current["id"])
        if ours != was_ours:
            provisioning.match_agent_hold(context)   # a port only its agent reports up

    def delete_port_precommit(self, context: api.PortContext) -> None:
        if self._fabric_vlan(context, context.binding_levels) is not None:
            self._record(context.plugin_context, context.current["network_id"])

    def delete_network_precommit(self, context: api.NetworkContext) -> None:
        if any(s.get(api.NETWORK_TYPE) == n_const.TYPE_VXLAN
               for s in context.network_segments or []):
            self._record(context.plugin_context, context.current["id"])

    # -- after commit: wake the worker, give back unused VLAN segments -----------
    def update_port_postcommit(self, context: api.PortContext) -> None:
        old = self._fabric_vlan(context, context.original_binding_levels)
        new = self._fabric_vlan(context, context.binding_levels)
        if old is not None or new is not None:
            self.waker.wake()
        if old is not None and old != new:
            self._release_if_unused(context, old)
        if context.vif_type == portbindings.VIF_TYPE_BINDING_FAILED or (
                new is None and fabric_bindings.bound_elsewhere(context)):
            # A level below us refused, or another driver bound the port on a segment
            # of its own: nothing is bound through us, so our block and the VLAN our
            # bind_port took must not keep the port DOWN or the VLAN used.
            self._release_after_failed_binding(context)
            provisioning.release(context.plugin_context, context.current["id"])

    def delete_port_postcommit(self, context: api.PortContext) -> None:
        segment = self._fabric_vlan(context, context.binding_levels)
        if segment is not None:
            self.waker.wake()
            self._release_if_unused(context, segment)
        if context.vif_type == portbindings.VIF_TYPE_BINDING_FAILED:
            self._release_after_failed_binding(context)

    def _release_after_failed_binding(self, context: api.PortContext) -> None:
        """A binding that failed below us (or ended elsewhere) leaves no level of ours,
        so ML2 keeps the dynamic segment we allocated for it: give it back if nothing
        uses it."""
        if not context.host:
            return
        try:
            placement = self.topology.placement(context.host, self.directory)
        except errors.VCenterError:
            return
        if placement is None:
            return
        segment = segments_db.get_dynamic_segment(
            context.plugin_context, context.current["network_id"],
            physical_network=placement.physical_network)
        if segment is not None:
            self._release_if_unused(context, segment[api.ID])

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self.waker.wake()

    def _release_if_unused(self, context: api.PortContext, segment_id: str) -> None:
        """Release a dynamic segment we allocated once no binding uses it, under the
        lock that keeps a concurrent bind from being undercut (``segments``)."""
        outcome = segments.release_if_unused(context.plugin_context, segment_id,
                                             context.current["id"],
                                             context.release_dynamic_segment)
        if outcome == "released":
            LOG.info("fabric_hwvtep: released dynamic segment %s (no port bound through "
                     "it)", segment_id)
        elif outcome == "bind_running":
            LOG.info("fabric_hwvtep: dynamic segment %s kept: a port of its network is "
                     "being bound", segment_id)


def _bound_straight_into_fabric_vlan(context: api.PortContext) -> bool:
    """This update is the binding of the port straight into the fabric's VLAN (see
    :func:`fabric_bindings.fabric_vlan`): hold the port DOWN for the leaves (the bind
    that reached us first usually holds it already; a repeat is a no-op), and say so
    (it is rare, and what the port's levels show is unusual)."""
    level_ids = fabric_bindings.level_ids
    if levels.bound_by(context.binding_levels, DRIVER_NAME) or \
            level_ids(context.binding_levels) == level_ids(context.original_binding_levels):
        return False
    LOG.warning("fabric_hwvtep: port %(port)s on %(host)s was bound by %(driver)s straight "
                "into the fabric's VLAN segment %(seg)s at the top level (the level under "
                "fabric_hwvtep refused a moment before); the leaves carry it all the same",
                {"port": context.current["id"], "host": context.host,
                 "driver": context.binding_levels[0].get(api.BOUND_DRIVER),
                 "seg": (context.binding_levels[0].get(api.BOUND_SEGMENT) or {}).get(api.ID)})
    return True
