"""What Neutron says must exist, for the audit and the sync: port groups and fabric networks.

A network has one port group per DVS and *set* (``security/model.set_key``): each
set of its ports with a binding on a host of that DVS, and the set a port's NIC
still sits on until the policy worker moves it - the same sets a release keeps
(``usage.wanted_sets``), so what the audit calls an orphan is what a release
deletes.  Each port group holds its set's policy (``security/desired.py``).
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
from networking_dvs_fabric.security import desired, translate
from networking_dvs_fabric.security.model import PortGroupPolicy
from networking_dvs_fabric.vcenter import naming, usage


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
    out: dict[Key, ExpectedPortGroup] = {}
    for network_id, name, physnet, vlan in rows:
        dvs = dvs_mappings.get(physnet or "")
        if dvs is None or dvs not in hosts:
            continue
        for set_key in usage.wanted_sets(context, network_id, hosts[dvs]):
            out[(dvs, network_id, set_key)] = ExpectedPortGroup(
                dvs, network_id, name or "", physnet, int(vlan), set_key)
    return out


def policy(context, network_id: str, set_key: str) -> WantedPolicy:
    """The policy the network's port group of ``set_key`` must hold, read now."""
    try:
        return WantedPolicy(desired.policy_for_set(context, network_id, set_key))
    except translate.PolicyTooLarge as exc:
        return WantedPolicy(None, str(exc))


def policies(context, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], WantedPolicy]:
    """(network, set) -> its policy: one computation per network and set, however
    many DVSs carry it."""
    return {key: policy(context, *key) for key in sorted(set(keys))}


def fabric_networks(context) -> set[str]:
    """Every network with a VXLAN segment (the fabric's candidates)."""
    with db_api.CONTEXT_READER.using(context):
        return {row[0] for row in context.session.query(
            segment_models.NetworkSegment.network_id).filter(
            segment_models.NetworkSegment.network_type == n_const.TYPE_VXLAN).distinct()}
