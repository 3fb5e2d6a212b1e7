"""What Neutron says must exist, for the audit and the sync: port groups and fabric networks.

A network has one port group per DVS and *set* (``security/model.set_key``): each
set of its ports with a binding on a host of that DVS, and the set a port's NIC
still sits on until the policy worker moves it - the same sets a release keeps
(``usage.wanted_sets``), so what the audit calls an orphan is what a release
deletes.  Each port group holds its set's policy (``security/desired.py``).

The audit asks about every port group at once, at every worker start and every
``full_sync_interval``: :func:`port_groups` and :func:`policies` read Neutron in a
fixed number of queries however many networks and sets there are (the same inputs
``membership.set_inputs`` reads for one set, read for all sets together), so the
full sync's cost grows with the cloud, not with its square.
"""
from __future__ import annotations

import dataclasses
from typing import Collection, Iterable, Mapping

from neutron.db import models_v2
from neutron.db.models import segment as segment_models
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib import constants as n_const
from neutron_lib.db import api as db_api

from networking_dvs_fabric import names
from networking_dvs_fabric.security import desired, membership, model, translate
from networking_dvs_fabric.security.model import PortGroupPolicy
from networking_dvs_fabric.vcenter import naming, sweeper_needs


@dataclasses.dataclass(frozen=True)
class ExpectedPortGroup:
    dvs: str
    network_id: str
    network_name: str
    physical_network: str
    vlan: int
    set_key: str = naming.OPEN_SET


@dataclasses.dataclass(frozen=True)
class WantedPolicy:
    """A set's policy on a network.  ``policy`` None with no ``error``: no port of
    the set is on the network any more (its port group only waits for a NIC to be
    moved, then for the release); ``error``: it cannot be made (too many rules)."""
    policy: PortGroupPolicy | None
    error: str | None = None


Key = tuple[str, str, str]      # (DVS, network, set)


def port_groups(context, dvs_mappings: Mapping[str, str],
                hosts: Mapping[str, Collection[str]],
                network_ids: Collection[str] | None = None) -> dict[Key, ExpectedPortGroup]:
    """(DVS, network, set) -> the port group the ports vsphere_dvs bound need.

    ``hosts``: the binding hosts of each DVS to look at (a DVS not in it is left
    out: its inventory could not be read).  ``network_ids``: only these networks.
    """
    with db_api.CONTEXT_READER.using(context):
        query = (context.session.query(
            models_v2.Network.id, models_v2.Network.name,
            segment_models.NetworkSegment.physical_network,
            segment_models.NetworkSegment.segmentation_id)
            .join(segment_models.NetworkSegment,
                  segment_models.NetworkSegment.network_id == models_v2.Network.id)
            .join(ml2_models.PortBindingLevel,
                  ml2_models.PortBindingLevel.segment_id == segment_models.NetworkSegment.id)
            .filter(ml2_models.PortBindingLevel.driver == names.VSPHERE_DRIVER,
                    segment_models.NetworkSegment.network_type == n_const.TYPE_VLAN))
        if network_ids is not None:
            query = query.filter(models_v2.Network.id.in_(list(network_ids)))
        rows = query.distinct().all()
    on_dvs: dict[str, list] = {}
    for row in rows:
        dvs = dvs_mappings.get(row[2] or "")
        if dvs is not None and dvs in hosts:
            on_dvs.setdefault(dvs, []).append(row)
    out: dict[Key, ExpectedPortGroup] = {}
    for dvs, dvs_rows in sorted(on_dvs.items()):
        needed = sweeper_needs.needed_sets(context, {r[0] for r in dvs_rows}, hosts[dvs])
        for network_id, name, physnet, vlan in dvs_rows:
            for set_key in needed[network_id]:
                out[(dvs, network_id, set_key)] = ExpectedPortGroup(
                    dvs, network_id, name or "", physnet, int(vlan), set_key)
    return out


def policy(context, network_id: str, set_key: str) -> WantedPolicy:
    """The policy the network's port group of ``set_key`` must hold, read now."""
    try:
        return WantedPolicy(desired.policy_for_set(context, network_id, set_key))
    except translate.PolicyTooLarge as exc:
        return WantedPolicy(None, str(exc))


_FIXED = {model.OPEN: model.OPEN_POLICY, model.BLOCKED: model.BLOCKED_POLICY}


def policies(context, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], WantedPolicy]:
    """(network, set) -> its policy, what :func:`policy` says of each, read for all
    of them in a fixed number of queries."""
    keys = sorted(set(keys))
    out = {key: WantedPolicy(_FIXED[key[1]]) for key in keys if key[1] in _FIXED}
    wanted = [key for key in keys if key not in out]
    members: dict[tuple[str, str], list[membership.PortSet]] = {}
    for port_set in membership.port_sets(
            context, port_ids=_ports_of(context, {n for n, _ in wanted})).values():
        members.setdefault((port_set.network_id, port_set.key), []).append(port_set)
    # membership.set_inputs' own reads, for every set's ports at once.
    own = membership.addresses(context, [p.port_id for key in wanted
                                         for p in members.get(key, ())])
    rules = membership.rules_of(context, {g for key in wanted for g in
                                          _groups(members.get(key))})
    remote = membership.members_addresses(
        context, {r["remote_group_id"] for r in rules if r.get("remote_group_id")})
    named = membership.address_groups(context, {r["remote_address_group_id"] for r in rules
                                                if r.get("remote_address_group_id")})
    for key in wanted:
        if not members.get(key):
            out[key] = WantedPolicy(None)       # no port of the set on the network
            continue
        groups = set(_groups(members[key]))
        own_rules = [r for r in rules if r["security_group_id"] in groups]
        try:
            out[key] = WantedPolicy(translate.policy_for_set(
                own_rules, own.of(p.port_id for p in members[key]),
                {r["remote_group_id"]: remote[r["remote_group_id"]] for r in own_rules
                 if r.get("remote_group_id")},
                {r["remote_address_group_id"]: named[r["remote_address_group_id"]]
                 for r in own_rules if r.get("remote_address_group_id")},
                foreign_mac=any(p.port_id in own.foreign_mac for p in members[key])))
        except translate.PolicyTooLarge as exc:
            out[key] = WantedPolicy(None, str(exc))
    return out


def _groups(members: list[membership.PortSet] | None) -> tuple[str, ...]:
    """The security groups of a set (its ports all have the same)."""
    return members[0].security_group_ids if members else ()


def _ports_of(context, network_ids: Collection[str]) -> list[str]:
    if not network_ids:
        return []
    with db_api.CONTEXT_READER.using(context):
        return sorted(row[0] for row in context.session.query(models_v2.Port.id).filter(
            models_v2.Port.network_id.in_(sorted(network_ids))).all())


def fabric_networks(context) -> set[str]:
    """Every network with a VXLAN segment (the fabric's candidates)."""
    with db_api.CONTEXT_READER.using(context):
        return {row[0] for row in context.session.query(
            segment_models.NetworkSegment.network_id).filter(
            segment_models.NetworkSegment.network_type == n_const.TYPE_VXLAN).distinct()}
