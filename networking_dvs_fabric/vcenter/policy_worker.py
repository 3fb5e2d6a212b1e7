"""The policy worker: port group filters kept right, NICs moved to their set's port group.

Three kinds of journal entries, all level-triggered (the entry only says where to
look; Neutron's tables and vCenter are read afresh):

* ``port_group_policy`` (network:DVS, about a group or all sets): every port group
  of the network on that DVS whose policy is not what its set needs now is
  reconfigured - one vCenter task per port group, however many ports or rules
  changed.  A set no port is in any more is left to the release.
* ``security_group_members`` (network:DVS, about a group): becomes a
  ``port_group_policy`` entry for that network and for every network with sets whose
  rules name the group as remote group (found here, not in the API's transaction).
* ``port_set`` (port): the port's set changed (groups, port security, admin state).
  Make before break: the set's port group is made (or its policy brought up to date,
  this port's addresses included) first; then the VM's NIC is moved to it
  (``ReconfigVM_Task``, found through the watcher's location); then the binding's
  ``vif_details`` name it (Nova reads them again on migration and reboot) and the
  port's status follows admin state; the old port group is handed to the release.

vCenter errors retry (temporary) or fail the entry with the fault (permanent), as
the port group worker does; a failed move leaves the NIC, its binding and its old
port group where they were (``dvs-fabric audit``: ``port_set_pending``).
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from concurrent import futures
from typing import TYPE_CHECKING, Sequence

from neutron.db import models_v2
from neutron.db.models import segment as segment_models
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib import constants as n_const
from neutron_lib.db import api as db_api
from neutron_lib.plugins import directory
from oslo_db import exception as db_exc

from networking_dvs_fabric import names, ownership
from networking_dvs_fabric.db import models as our_models
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.worker import JournalWorker, PermanentFailure
from networking_dvs_fabric.security import callbacks, desired, membership, model, translate
from networking_dvs_fabric.vcenter import errors, nic_move, usage
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.port_group_worker import failure_of
from networking_dvs_fabric.vcenter.portgroups import PortGroup

if TYPE_CHECKING:
    from networking_dvs_fabric.runtime import Runtime

LOG = logging.getLogger(__name__)
# Port group reconfigures a batch runs at once (vCenter runs tasks on different port
# groups side by side; one after another, a rule of a group on 10 networks took ~1.5 s).
PARALLEL = 8


class PolicyHandler:
    def __init__(self, backend: VSphereBackend) -> None:
        self._backend = backend

    def __call__(self, context, entries: Sequence[store.Entry]) -> list[Exception | None]:
        """Plan every entry from Neutron's tables (this thread: one DB session), then
        write the changed filters to vCenter in parallel - one task per port group,
        each port group once however many entries of the batch named it."""
        results: list[Exception | None] = [None] * len(entries)
        started = time.perf_counter()
        listed: dict[str, list[PortGroup]] = {}     # DVS -> its port groups (light)
        members: dict[str, list[str]] = {}          # remote group -> member addresses
        work: dict[str, tuple[str, PortGroup, model.PortGroupPolicy, list[int]]] = {}
        joins = [i for i, entry in enumerate(entries)
                 if entry.resource_type == names.RESOURCE_GROUP_MEMBERS]
        if joins:                       # all of the batch's at once: one fan-out
            verdict = _verdict(lambda: self.fan_out(context, [entries[i] for i in joins]))
            for index in joins:
                results[index] = verdict
        wanted = self._wanted(context, entries, members)
        for index, entry in enumerate(entries):
            if entry.resource_type == names.RESOURCE_PORT_SET:
                results[index] = _verdict(lambda: self.move_port(context, entry.resource_id))
                continue
            if entry.resource_type == names.RESOURCE_GROUP_MEMBERS:
                continue
            network_id, dvs_name = names.parse_port_group_resource(entry.resource_id)
            try:
                found = wanted[index]
                if isinstance(found, Exception):
                    raise found
                changed, failure = self.plan(context, network_id, dvs_name, listed,
                                             wanted=found)
            except Exception as exc:  # noqa: BLE001 - mapped to the entry's verdict
                results[index] = _verdict(exc)
                continue
            if failure is not None:
                results[index] = _verdict(failure)
            for light, want in changed:
                work.setdefault(light.moid, (dvs_name, light, want, []))[3].append(index)
        planned = time.perf_counter()
        if work:
            with futures.ThreadPoolExecutor(max_workers=min(PARALLEL, len(work)),
                                            thread_name_prefix="dvs-filter") as pool:
                done = {pool.submit(self.apply, dvs, light, want): indexes
                        for dvs, light, want, indexes in work.values()}
                for future, indexes in done.items():
                    failure = future.exception()
                    for index in indexes:
                        if failure is not None and results[index] is None:
                            results[index] = _verdict(failure)
            LOG.info("Policy batch: %(n)d entries planned in %(plan).0f ms, %(pgs)d port "
                     "groups written in %(write).0f ms",
                     {"n": len(entries), "plan": (planned - started) * 1000,
                      "pgs": len(work), "write": (time.perf_counter() - planned) * 1000})
        return results

    # -- filters ------------------------------------------------------------------
    def _wanted(self, context, entries: Sequence[store.Entry],
                members: dict[str, list[str]]) -> dict[int, dict | Exception]:
        """Per ``port_group_policy`` entry (by position), the policies its network's
        sets need, or what kept them from being read: one read of Neutron for all the
        batch's networks (per distinct ``about``), not one per network (a member of a
        default group concerns every network of the group)."""
        by_about: dict[frozenset[str] | None, list[int]] = defaultdict(list)
        for index, entry in enumerate(entries):
            if entry.resource_type == names.RESOURCE_PORT_GROUP_POLICY:
                groups = _groups_of(entry.operations)
                by_about[frozenset(groups) if groups is not None else None].append(index)
        out: dict[int, dict | Exception] = {}
        for about, indexes in by_about.items():
            network_of = {i: names.parse_port_group_resource(entries[i].resource_id)[0]
                          for i in indexes}
            try:
                found = desired.policies_for_networks(
                    context, set(network_of.values()),
                    self._backend.settings.max_filter_rules, members, about)
            except Exception as exc:  # noqa: BLE001 - each entry's verdict
                out.update({i: exc for i in indexes})
                continue
            out.update({i: found.get(network_of[i], {}) for i in indexes})
        return out

    def fan_out(self, context, entries: Sequence[store.Entry]) -> None:
        """Members entries become ``port_group_policy`` rows: for each entry's own
        network and for each network whose sets name one of its groups as remote
        group.  Each network is then planned under its own claim, by one worker at a
        time (two workers planning one network from different entries could write an
        older plan over a newer one), in the next pass.

        A whole batch at once: one query for the networks naming the batch's groups,
        then, in one transaction, per (DVS, group) one INSERT of the rows not already
        pending and due.  A default group names itself as remote group, so every port
        created in it concerns every network of the group: one row per network however
        many ports joined (per port it was a row per network: N joins on N networks
        made N*N rows).  Run again after a crash, it records nothing twice while the
        first rows wait."""
        wanted: dict[tuple[str, str], set[str]] = defaultdict(set)  # (DVS, group) -> nets
        for entry in entries:
            network_id, dvs_name = names.parse_port_group_resource(entry.resource_id)
            for group in sorted(_groups_of(entry.operations) or {callbacks.ALL_SETS}):
                wanted[(dvs_name, group)].add(network_id)
        naming = membership.networks_naming(
            context, {group for _, group in wanted if group != callbacks.ALL_SETS})
        recorded = 0
        with db_api.CONTEXT_WRITER.using(context):
            for (dvs_name, group), networks in sorted(wanted.items()):
                networks |= naming.get(group, set())
                recorded += len(store.record_unless_due(
                    context, names.RESOURCE_PORT_GROUP_POLICY,
                    [names.port_group_resource(n, dvs_name) for n in networks],
                    group, covered_by=[callbacks.ALL_SETS]))
        LOG.debug("Policy: %(n)d members entries -> %(r)d port_group_policy rows",
                  {"n": len(entries), "r": recorded})

    def plan(self, context, network_id: str, dvs_name: str,
             listed: dict[str, list[PortGroup]],
             members: dict[str, list[str]] | None = None,
             about: set[str] | None = None,
             wanted: dict | None = None
             ) -> tuple[list[tuple[PortGroup, model.PortGroupPolicy]],
                        translate.PolicyTooLarge | None]:
        """The network's port groups on the DVS whose filter is not the one wanted (and
        a set whose filter cannot be made, if any: that fails the entry).

        Names and markers only (the watched cache, else one light read of the DVS per
        batch): the marker holds the fingerprint of the policy last written.
        """
        backend = self._backend
        if dvs_name not in set(backend.settings.dvs_mappings.values()):
            return [], None
        found = backend.cached_port_groups(dvs_name, network_id)
        if found is None:
            if dvs_name not in listed:
                listed[dvs_name] = backend.port_groups(dvs_name)
            found = [pg for pg in listed[dvs_name] if pg.network_id == network_id]
        ours = [pg for pg in found
                if ownership.owner_of(pg.deployment, backend.deployment()) == ownership.OURS]
        if not ours:
            return [], None
        # ``about``: only the sets a change of these groups can touch (None: all).
        if wanted is None:      # else read already, with the batch's other networks
            wanted = desired.policies_for_network(context, network_id,
                                                  backend.settings.max_filter_rules, members,
                                                  about)
        changed = []
        too_large: list[translate.PolicyTooLarge] = []
        for light in ours:
            if light.set_key == model.OPEN:
                want: model.PortGroupPolicy | None = model.OPEN_POLICY
            elif light.set_key == model.BLOCKED:
                want = model.BLOCKED_POLICY
            else:
                found_want = wanted.get(light.set_key)
                if isinstance(found_want, translate.PolicyTooLarge):
                    too_large.append(found_want)   # the entry fails; the others go on
                    continue
                want = found_want      # None: no port of the set left (for the release)
            if want is not None and light.fingerprint != model.fingerprint(want):
                changed.append((light, want))
        return changed, (too_large[0] if too_large else None)

    def apply(self, dvs_name: str, light: PortGroup, want: model.PortGroupPolicy) -> None:
        """Write ``want`` unless the port group's marker, read again, says it holds it
        already (another worker wrote it since the plan's read).  Its rules are not
        read: a rule changed by hand behind the marker is the audit's ``filter_drift``."""
        backend = self._backend
        started = time.perf_counter()
        pg = backend.read_port_group(dvs_name, light, policy=False)
        if pg.fingerprint == model.fingerprint(want):
            return
        read = time.perf_counter()
        backend.set_policy(dvs_name, pg, want)
        LOG.info("Port group %(pg)s (network %(net)s, set %(set)s): filter updated, "
                 "%(n)d rules (read %(read).0f ms, written %(write).0f ms)",
                 {"pg": pg.name, "net": pg.network_id, "set": pg.set_key,
                  "n": len(want.rules), "read": (read - started) * 1000,
                  "write": (time.perf_counter() - read) * 1000})

    def converge(self, context, network_id: str, dvs_name: str) -> None:
        """Plan and apply one (network, DVS), in this thread."""
        changed, failure = self.plan(context, network_id, dvs_name, {})
        for light, want in changed:
            self.apply(dvs_name, light, want)
        if failure is not None:
            raise failure

    # -- moving a port to its set ---------------------------------------------------
    def move_port(self, context, port_id: str) -> Exception | None:
        found = _bound_port(context, port_id, self._backend)
        if found is None:
            return None             # gone, or not bound by vsphere_dvs (any more)
        port, physnet, vlan, plugged = found
        backend = self._backend
        dvs_name = backend.dvs_for(physnet)
        assert dvs_name is not None
        port_set = membership.port_sets(context, port_ids=[port_id]).get(port_id)
        if port_set is None:
            return None
        network_id = port["network_id"]
        if plugged == port_set.key:
            return None
        want = desired.policy_for_set(context, network_id, port_set.key, including=port_set,
                                      max_rules=backend.settings.max_filter_rules)
        if want is None:
            want = model.BLOCKED_POLICY
        binding = usage.ensure_for_bind(context, backend, physnet, network_id,
                                        port["network_name"], vlan, port_id, port_set.key,
                                        lambda: want)
        # Make before break: the new port group carries every rule this port needs
        # (its addresses among the set's) before its NIC is put there.
        for light in backend.network_port_groups(dvs_name, network_id, full=False):
            if light.key == binding.pg_key and light.fingerprint != model.fingerprint(want):
                backend.set_policy(dvs_name, backend.read_port_group(dvs_name, light,
                                                                     policy=False), want)
        where = _location(context, port_id)
        if where is not None:
            vm_moid, mac = where
            if not nic_move.move_nic(backend.session, vm_moid, mac, binding.dvs_uuid,
                                     binding.pg_key):
                LOG.info("Port %(port)s: VM %(vm)s has no NIC %(mac)s (any more); only "
                         "the binding is updated", {"port": port_id, "vm": vm_moid,
                                                    "mac": mac})
        _rebind(context, port_id, binding, port_set.key, dvs_name, network_id)
        _set_status(context, port_id, plugged, port_set.key)
        LOG.info("Port %(port)s moved from set %(old)s to set %(new)s (port group %(pg)s)",
                 {"port": port_id, "old": plugged, "new": port_set.key,
                  "pg": binding.pg_name})
        return None


def _bound_port(context, port_id: str, backend: VSphereBackend):
    """(port, physical network, VLAN, set its binding names) of a port vsphere_dvs bound."""
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        row = (session.query(models_v2.Port.network_id, models_v2.Network.name)
               .join(models_v2.Network, models_v2.Network.id == models_v2.Port.network_id)
               .filter(models_v2.Port.id == port_id).first())
        if row is None:
            return None
        level = (session.query(segment_models.NetworkSegment.physical_network,
                               segment_models.NetworkSegment.segmentation_id)
                 .join(ml2_models.PortBindingLevel,
                       ml2_models.PortBindingLevel.segment_id ==
                       segment_models.NetworkSegment.id)
                 .filter(ml2_models.PortBindingLevel.port_id == port_id,
                         ml2_models.PortBindingLevel.driver == names.VSPHERE_DRIVER)
                 .first())
        if level is None or backend.dvs_for(level[0]) is None:
            return None
        details = [d for (d,) in session.query(ml2_models.PortBinding.vif_details).filter(
            ml2_models.PortBinding.port_id == port_id,
            ml2_models.PortBinding.status == n_const.ACTIVE).all()]
    plugged = model.OPEN
    for text in details:
        try:
            plugged = json.loads(text or "{}").get(membership.VIF_DETAILS_SET) or model.OPEN
        except ValueError:
            pass
    return ({"network_id": row[0], "network_name": row[1] or ""}, level[0], int(level[1]),
            plugged)


def _location(context, port_id: str) -> tuple[str, str] | None:
    with db_api.CONTEXT_READER.using(context):
        row = context.session.query(our_models.PortLocation.vm_moid,
                                    our_models.PortLocation.mac).filter(
            our_models.PortLocation.port_id == port_id).first()
    return (row[0], row[1]) if row is not None else None


def _rebind(context, port_id: str, binding, set_key: str, dvs_name: str,
            network_id: str) -> None:
    """The port's bindings name the new port group; the old one goes to the release."""
    with db_api.CONTEXT_WRITER.using(context):
        for row in context.session.query(ml2_models.PortBinding).filter(
                ml2_models.PortBinding.port_id == port_id).all():
            try:
                details = json.loads(row.vif_details or "{}")
            except ValueError:
                continue
            if not isinstance(details, dict) or "pg_id" not in details:
                continue
            details.update({"pg_id": binding.pg_key, "dvs_id": binding.dvs_uuid,
                            "dvs_port_group_name": binding.pg_name,
                            membership.VIF_DETAILS_SET: set_key})
            row.vif_details = json.dumps(details)
        store.record(context, names.RESOURCE_PORT_GROUP,
                     names.port_group_resource(network_id, dvs_name))


def _set_status(context, port_id: str, old_key: str, new_key: str) -> None:
    if new_key == model.BLOCKED:
        status = n_const.PORT_STATUS_DOWN
    elif old_key == model.BLOCKED:
        status = n_const.PORT_STATUS_ACTIVE
    else:
        return
    plugin = directory.get_plugin()
    if plugin is not None:
        plugin.update_port_status(context, port_id, status)


def _groups_of(operations: Sequence[str]) -> set[str] | None:
    """The security groups an entry's rows are about; None: some row is about all sets."""
    groups = set(operations)
    return None if not groups or callbacks.ALL_SETS in groups else groups


def _verdict(outcome) -> Exception | None:
    """An entry's verdict from an exception it met (or a call that may raise one)."""
    try:
        if callable(outcome):
            return outcome()
        raise outcome
    except translate.PolicyTooLarge as exc:
        return PermanentFailure(str(exc))
    except (errors.VCenterError, db_exc.DBError) as exc:
        return failure_of(exc)


class PolicyWorker(JournalWorker):
    def __init__(self, runtime: "Runtime") -> None:
        super().__init__("vsphere_dvs policy worker",
                         PolicyHandler(runtime.require_vcenter()),
                         runtime.worker_settings,
                         resource_types=names.POLICY_RESOURCES)
        self.start_after = runtime.wait_for_leaves
