"""What Neutron says must exist, for the audit and the sync: port groups and fabric networks."""
from __future__ import annotations

import dataclasses

from neutron.db import models_v2
from neutron.db.models import segment as segment_models
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib import constants as n_const
from neutron_lib.db import api as db_api

from networking_dvs_fabric import names


@dataclasses.dataclass(frozen=True)
class ExpectedPortGroup:
    dvs: str
    network_id: str
    network_name: str
    physical_network: str
    vlan: int


def port_groups(context, dvs_mappings: dict[str, str]) -> dict[tuple[str, str], ExpectedPortGroup]:
    """(DVS, network) -> the port group every port bound by vsphere_dvs needs."""
    with db_api.CONTEXT_READER.using(context):
        rows = (context.session.query(
            models_v2.Network.id, models_v2.Network.name,
            segment_models.NetworkSegment.physical_network,
            segment_models.NetworkSegment.segmentation_id)
            .join(segment_models.NetworkSegment,
                  segment_models.NetworkSegment.network_id == models_v2.Network.id)
            .join(ml2_models.PortBindingLevel,
                  ml2_models.PortBindingLevel.segment_id == segment_models.NetworkSegment.id)
            .filter(ml2_models.PortBindingLevel.driver == names.VSPHERE_DRIVER,
                    segment_models.NetworkSegment.network_type == n_const.TYPE_VLAN)
            .distinct().all())
    out: dict[tuple[str, str], ExpectedPortGroup] = {}
    for network_id, name, physnet, vlan in rows:
        dvs = dvs_mappings.get(physnet or "")
        if dvs is not None:
            out[(dvs, network_id)] = ExpectedPortGroup(dvs, network_id, name or "",
                                                       physnet, int(vlan))
    return out


def fabric_networks(context) -> set[str]:
    """Every network with a VXLAN segment (the fabric's candidates)."""
    with db_api.CONTEXT_READER.using(context):
        return {row[0] for row in context.session.query(
            segment_models.NetworkSegment.network_id).filter(
            segment_models.NetworkSegment.network_type == n_const.TYPE_VXLAN).distinct()}
