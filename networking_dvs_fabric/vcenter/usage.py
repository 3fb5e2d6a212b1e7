"""Is a network's port group on a DVS still needed?  Asked of Neutron's database.

One answer for everyone who may delete a port group (the port group worker, the
sweeper, ``dvs-fabric sync``): yes while the network exists and one of its ports
has a binding (active or not, being bound or bound) on a host of that DVS.  A port
being bound already has its binding host stored, so a port group is never
released under a bind that is still running.
"""
from __future__ import annotations

from typing import Callable, Collection

from neutron.db import models_v2
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib.db import api as db_api


def port_group_in_use(context, network_id: str, hosts: Collection[str]) -> bool:
    """Does the network need its port group on the DVS whose binding hosts are ``hosts``?"""
    return _network_exists(context, network_id) and \
        bool(_ports_on_hosts(context, network_id, hosts))


def in_use_check(context, network_id: str, hosts: Collection[str]) -> Callable[[], bool]:
    """:func:`port_group_in_use` as a check to run again under the release lock."""
    return lambda: port_group_in_use(context, network_id, hosts)


def _ports_on_hosts(context, network_id: str, hosts: Collection[str]) -> list[str]:
    """IDs of the network's ports with a binding (any, active or not) on one of ``hosts``."""
    if not hosts:
        return []
    with db_api.CONTEXT_READER.using(context):
        query = (context.session.query(ml2_models.PortBinding.port_id)
                 .join(models_v2.Port, models_v2.Port.id == ml2_models.PortBinding.port_id)
                 .filter(models_v2.Port.network_id == network_id,
                         ml2_models.PortBinding.host.in_(list(hosts))))
        return sorted({row[0] for row in query.all()})


def _network_exists(context, network_id: str) -> bool:
    with db_api.CONTEXT_READER.using(context):
        return context.session.query(models_v2.Network.id).filter(
            models_v2.Network.id == network_id).first() is not None
