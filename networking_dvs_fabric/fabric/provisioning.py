"""A port is ACTIVE when the fabric carries it: Neutron's provisioning blocks.

``fabric_hwvtep`` holds a block (entity :data:`ENTITY`) on every port it binds
(:func:`hold`).  While a port has any block, ML2 leaves it DOWN; when the last
one is lifted, ML2's ``_port_provisioned`` makes it ACTIVE.  Other holders
compose with ours: ML2's DHCP block, an L2 agent's block below us.

The fabric worker lifts ours for each port whose network now sits, as wanted, on
every leaf port the port needs (:func:`carried_ports` finds them, :func:`complete`
lifts the blocks: inline, :func:`complete_carried`, or on the completer's thread,
``completer.py``):

* a port bound to an ESXi or KVM host: the host's leaf ports;
* a port bound to a cluster, ``pre_provision``: every leaf port of the cluster;
* a port bound to a cluster, ``on_demand``: the leaf ports of the ESXi host the
  vCenter watcher saw its VM on - none before that, so the port stays DOWN
  until the VM runs somewhere and its network reached that host's leaf ports.

A network a leaf refuses never lands there, so its ports keep the block and
stay DOWN; the journal entry says why (``dvs-fabric journal``).  Only the
port's active binding counts (a live migration's destination does not).
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from concurrent import futures
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import sqlalchemy as sa
from neutron.db import models_v2, provisioning_blocks
from neutron.db.models import provisioning_block
from neutron.plugins.ml2 import models as ml2_models
from neutron.plugins.ml2.common import constants as ml2_constants
from neutron.plugins.ml2.drivers import mech_agent
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from neutron_lib.plugins import directory as plugins
from neutron_lib.plugins.ml2 import api
from oslo_db import exception as db_exc

from networking_dvs_fabric import names
from networking_dvs_fabric.db import models
from networking_dvs_fabric.fabric.api import NetworkOnLeaf
from networking_dvs_fabric.fabric.intent import BoundPort, NetworkIntent
from networking_dvs_fabric.journal.worker import TemporaryFailure
from networking_dvs_fabric.security.membership import VIF_DETAILS_SET
from networking_dvs_fabric.security.model import BLOCKED as BLOCKED_SET
from networking_dvs_fabric.topology import HostDirectory, LeafPort, Topology
from networking_dvs_fabric.vcenter import errors

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)

ENTITY = names.FABRIC_DRIVER


def hold(plugin_context, port_id: str) -> None:
    """Keep the port DOWN until the fabric carries it (joins an open transaction)."""
    provisioning_blocks.add_provisioning_component(plugin_context, port_id,
                                                   resources.PORT, ENTITY)


def release(plugin_context, port_id: str) -> None:
    """Drop our block without making the port ACTIVE: it is no longer bound through us."""
    provisioning_blocks.remove_provisioning_component(plugin_context, port_id,
                                                      resources.PORT, ENTITY)


# Ports ML2 lets turn ACTIVE on their agent's report alone.  (A DVR interface is
# reported per host, and never lifts a block: left out.)
AGENT_REPORTED = frozenset(ml2_constants.NO_PBLOCKS_TYPES) - {
    n_const.DEVICE_OWNER_DVR_INTERFACE}


def match_agent_hold(context: api.PortContext) -> None:
    """A port of a kind ML2 gives no agent block, just bound through us or just left
    us (``update_port_precommit`` of the change): hold the agent's block exactly when
    an agent's driver bound the level below ours on a host where its agent runs, so
    the port is ACTIVE only once that agent wired it, as without us.  Otherwise drop
    one an earlier binding of ours left (ML2 never holds one on such a port): bound
    next by ``vsphere_dvs`` or moved off the fabric, it would keep the port DOWN."""
    port = context.current
    if port.get("device_owner") not in AGENT_REPORTED:
        return
    agent_driver = _agent_driver_below(context)
    if agent_driver is None:
        provisioning_blocks.remove_provisioning_component(
            context.plugin_context, port["id"], resources.PORT,
            provisioning_blocks.L2_AGENT_ENTITY)
        return
    if port.get("status") == n_const.PORT_STATUS_ACTIVE:
        return                          # as ML2's agent drivers: nothing to wait for
    provisioning_blocks.add_provisioning_component(
        context.plugin_context, port["id"], resources.PORT,
        provisioning_blocks.L2_AGENT_ENTITY)
    LOG.debug("fabric_hwvtep: port %(port)s (%(owner)s) waits for the %(agent)s on "
              "%(host)s too", {"port": port["id"], "owner": port.get("device_owner"),
                               "agent": agent_driver.agent_type, "host": context.host})


def _agent_driver_below(context: api.PortContext):
    """The agent mechanism driver that bound the port's bottom level, if its agent
    runs on the binding's host; else None."""
    if not context.host or not context.binding_levels:
        return None
    plugin = plugins.get_plugin()
    drivers = getattr(getattr(plugin, "mechanism_manager", None), "mech_drivers", {})
    below = getattr(drivers.get(context.binding_levels[-1][api.BOUND_DRIVER]), "obj", None)
    if isinstance(below, mech_agent.AgentMechanismDriverBase) and \
            context.host_agents(below.agent_type):
        return below
    return None


class Landed:
    """Which networks each leaf now holds as wanted: every converge that succeeded.

    A success of the make-before-break step counts as well: that step adds all the
    network wants and only keeps something old besides.
    """

    def __init__(self) -> None:
        self._on: dict[str, set[str]] = defaultdict(set)

    def add(self, leaf: str, network_ids: Iterable[str]) -> None:
        self._on[leaf].update(network_ids)

    def holds(self, leaf: str, network_id: str) -> bool:
        return network_id in self._on.get(leaf, ())


def needed_leaf_ports(port: BoundPort, topology: Topology, directory: HostDirectory | None,
                      mode: str) -> frozenset[LeafPort]:
    """Leaf ports that must carry ``port``'s VLAN before it is ACTIVE (empty: not
    known yet, or not in the fabric)."""
    placement = topology.placement(port.host, directory, port.physical_network)
    if placement is None:
        return frozenset()
    if placement.location is None and mode == "on_demand":
        if port.vm_host is None:
            return frozenset()          # the watcher has not seen the VM yet
        seat = topology.placement(port.vm_host, directory, port.physical_network)
        return seat.leaf_ports if seat is not None else frozenset()
    return placement.leaf_ports


def carried(intents: Mapping[str, NetworkIntent | None],
            desired: Mapping[str, Mapping[str, NetworkOnLeaf | None]], landed: Landed,
            topology: Topology, directory: HostDirectory | None,
            mode: str) -> dict[str, BoundPort]:
    """Port id -> active binding, for every port the leaves now carry."""
    out: dict[str, BoundPort] = {}
    for network_id, intent in intents.items():
        for port in (intent.ports if intent else ()):
            if not port.active:
                continue
            need = needed_leaf_ports(port, topology, directory, mode)
            if need and all(_on_leaf(desired, landed, lp, network_id, port.vlan)
                            for lp in need):
                out[port.port_id] = port
    return out


def _on_leaf(desired: Mapping[str, Mapping[str, NetworkOnLeaf | None]], landed: Landed,
             leaf_port: LeafPort, network_id: str, vlan: int) -> bool:
    want = desired.get(leaf_port.leaf, {}).get(network_id)
    return (want is not None and (leaf_port.port, vlan) in want.bindings
            and landed.holds(leaf_port.leaf, network_id))


def _blocked(context, ports: Mapping[str, BoundPort]) -> list[str]:
    """Those of ``ports`` holding our block and still bound where the intent saw them."""
    if not ports:
        return []
    block = provisioning_block.ProvisioningBlock
    binding = ml2_models.PortBinding
    with db_api.CONTEXT_READER.using(context):
        rows = context.session.query(models_v2.Port.id, binding.host).join(
            block, block.standard_attr_id == models_v2.Port.standard_attr_id).join(
            binding, binding.port_id == models_v2.Port.id).filter(
            models_v2.Port.id.in_(sorted(ports)), block.entity == ENTITY,
            binding.status == n_const.ACTIVE).all()
    return sorted(row.id for row in rows if row.host == ports[row.id].host)


def carried_ports(intents: Mapping[str, NetworkIntent | None],
                  desired: Mapping[str, Mapping[str, NetworkOnLeaf | None]],
                  landed: Landed, runtime: "Runtime"
                  ) -> tuple[dict[str, BoundPort], dict[str, str], dict[str, Exception]]:
    """The ports the leaves now carry, the network of each, and a
    :class:`TemporaryFailure` per network when vCenter was needed to place them and
    did not answer."""
    try:
        ports = carried(intents, desired, landed, runtime.require_topology(),
                        runtime.directory, runtime.fabric_settings.mode)
    except errors.VCenterError as exc:
        return {}, {}, {n: TemporaryFailure(f"vCenter needed to place ports: {exc}")
                        for n in intents}
    network_of = {p.port_id: n for n, intent in intents.items() if intent
                  for p in intent.ports if p.port_id in ports}
    return ports, network_of, {}


def complete_carried(context, intents: Mapping[str, NetworkIntent | None],
                     desired: Mapping[str, Mapping[str, NetworkOnLeaf | None]],
                     landed: Landed, runtime: "Runtime") -> dict[str, Exception]:
    """Lift our block from every port the leaves now carry (ML2 makes it ACTIVE when
    no other block is left).  Runs outside any transaction, in the worker's process.

    Returns a :class:`TemporaryFailure` per network whose ports could not be told
    (vCenter or the database away): its journal entry is retried, which converges
    with no changes and tries again.
    """
    ports, network_of, failures = carried_ports(intents, desired, landed, runtime)
    return failures or complete(context, ports, network_of)


def complete(context, ports: Mapping[str, BoundPort], network_of: Mapping[str, str],
             between: Callable[[], None] = lambda: None,
             parallel: int = 1) -> dict[str, Exception]:
    """Lift our block from ``ports`` (carried, as ``carried`` found them) that still
    hold it and are still bound where the intent saw them; a failure per network.
    ``between`` runs before each port (the completer's thread gives way there).

    ``parallel``: ports told at once, each on a context of its own (not on SQLite,
    which has one writer).  ML2's status update of one port is a dozen round trips
    to the database (~0.3 s a port here, nearly all Neutron's); several at once
    overlap those waits."""
    waiting = _blocked(context, ports)
    if not waiting:
        return {}
    if parallel > 1 and _single_writer(context):
        parallel = 1            # SQLite: one writer at a time ("database is locked")
    failures: dict[str, Exception] = {}

    def tell(port_id: str) -> None:
        between()
        own = context if parallel <= 1 else n_context.get_admin_context()
        try:
            provisioning_blocks.provisioning_complete(own, port_id, resources.PORT, ENTITY)
        except Exception as exc:  # noqa: BLE001 - the leaves are right; retry the telling
            failures[network_of[port_id]] = TemporaryFailure(
                f"port {port_id} is carried but its status was not updated: {exc}")

    if parallel <= 1:
        for port_id in waiting:
            tell(port_id)
    else:
        with futures.ThreadPoolExecutor(max_workers=parallel,
                                        thread_name_prefix="dvs-fabric-status") as pool:
            for done in [pool.submit(tell, port_id) for port_id in waiting]:
                done.result()          # tell() keeps its failures; _Stopping comes here
    # ML2 logs and swallows an error of its status update (_port_provisioned), after
    # our block is gone; a process without the ML2 plugin (``dvs-fabric sync``) has
    # nobody to update it at all.  Such a port gets the block back and its network a
    # retry, which neutron-periodic-workers takes.
    for port_id in _fell_through(context, waiting, ports):
        hold(context, port_id)
        failures[network_of[port_id]] = TemporaryFailure(
            f"port {port_id} is carried but is still DOWN; telling Neutron again")
    LOG.info("fabric: %(n)d port(s) carried by the leaves, provisioning complete%(ids)s",
             {"n": len(waiting), "ids": ": " + ", ".join(waiting) if len(waiting) <= 10
              else ""})
    return failures


def _single_writer(context) -> bool:
    with db_api.CONTEXT_READER.using(context):
        return context.session.get_bind().dialect.name == "sqlite"


def networks_waiting(context) -> list[str]:
    """Networks with a port holding our block and no journal row pending or being
    handled: after a worker process died, carried ports it had not told yet."""
    block = provisioning_block.ProvisioningBlock
    journal = models.JournalEntry
    busy = sa.exists().where(journal.resource_type == names.RESOURCE_NETWORK,
                             journal.resource_id == models_v2.Port.network_id,
                             journal.state.in_([models.PENDING, models.PROCESSING]))
    with db_api.CONTEXT_READER.using(context):
        return sorted({row[0] for row in context.session.query(models_v2.Port.network_id)
                       .join(block, block.standard_attr_id == models_v2.Port.standard_attr_id)
                       .filter(block.entity == ENTITY, ~busy).distinct().all()})


def hold_stranded(context) -> list[str]:
    """Give our block back to the ports a worker that died left DOWN for good, and
    return them: bound through us down to vsphere_dvs (no agent reports such a port's
    state), up, with no provisioning block at all and a NIC not on the blocked port
    group.  Neutron lifts a block in one transaction and updates the status in the
    next: a process killed between the two leaves such a port, and nothing would ever
    look at it again.  With the block back, :func:`networks_waiting` finds its
    network, and the converge that follows tells Neutron as for any carried port."""
    block = provisioning_block.ProvisioningBlock
    binding = ml2_models.PortBinding
    level = ml2_models.PortBindingLevel

    def bound_by(driver: str):
        return sa.exists().where(level.port_id == models_v2.Port.id,
                                 level.host == binding.host, level.driver == driver)
    with db_api.CONTEXT_READER.using(context):
        rows = context.session.query(models_v2.Port.id, binding.vif_details).join(
            binding, binding.port_id == models_v2.Port.id).outerjoin(
            block, block.standard_attr_id == models_v2.Port.standard_attr_id).filter(
            block.entity.is_(None), models_v2.Port.status == n_const.PORT_STATUS_DOWN,
            models_v2.Port.admin_state_up.is_(True), binding.status == n_const.ACTIVE,
            binding.vif_type.notin_([portbindings.VIF_TYPE_UNBOUND,
                                     portbindings.VIF_TYPE_BINDING_FAILED]),
            bound_by(ENTITY), bound_by(names.VSPHERE_DRIVER)).all()
    stranded = sorted(port_id for port_id, details in rows
                      if _nic_set(details) != BLOCKED_SET)
    for port_id in stranded:
        try:
            with db_api.CONTEXT_WRITER.using(context):
                hold(context, port_id)
        except db_exc.DBDuplicateEntry:
            pass                # another process's start gave it back first
    return stranded


def _nic_set(vif_details: str | None) -> str | None:
    """The set of the port group the binding's NIC sits on (vsphere_dvs's key)."""
    try:
        details = json.loads(vif_details or "{}")
    except ValueError:
        return None
    return details.get(VIF_DETAILS_SET) if isinstance(details, dict) else None


def _fell_through(context, port_ids: list[str], ports: Mapping[str, BoundPort]) -> list[str]:
    """Ports still DOWN with no block at all though up and bound where the intent saw
    them: ML2 should have made them ACTIVE."""
    block = provisioning_block.ProvisioningBlock
    binding = ml2_models.PortBinding
    with db_api.CONTEXT_READER.using(context):
        rows = context.session.query(models_v2.Port.id, binding.host).join(
            binding, binding.port_id == models_v2.Port.id).outerjoin(
            block, block.standard_attr_id == models_v2.Port.standard_attr_id).filter(
            models_v2.Port.id.in_(port_ids), block.entity.is_(None),
            models_v2.Port.status == n_const.PORT_STATUS_DOWN,
            models_v2.Port.admin_state_up.is_(True), binding.status == n_const.ACTIVE,
            binding.vif_type.notin_([portbindings.VIF_TYPE_UNBOUND,
                                     portbindings.VIF_TYPE_BINDING_FAILED])).all()
    return sorted(row.id for row in rows if row.host == ports[row.id].host)
