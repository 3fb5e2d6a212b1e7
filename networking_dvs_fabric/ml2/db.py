"""Read-only questions the drivers ask Neutron's database."""
from __future__ import annotations

from typing import Collection

from neutron.db import models_v2
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib.db import api as db_api


def ports_on_hosts(context, network_id: str, hosts: Collection[str],
                   exclude_port_id: str | None = None) -> list[str]:
    """IDs of the network's ports with a binding (any, active or not) on one of ``hosts``.

    A port being bound already has its binding host stored, so a port group is
    never released under a bind that is still running.
    """
    if not hosts:
        return []
    with db_api.CONTEXT_READER.using(context):
        query = (context.session.query(ml2_models.PortBinding.port_id)
                 .join(models_v2.Port, models_v2.Port.id == ml2_models.PortBinding.port_id)
                 .filter(models_v2.Port.network_id == network_id,
                         ml2_models.PortBinding.host.in_(list(hosts))))
        if exclude_port_id:
            query = query.filter(models_v2.Port.id != exclude_port_id)
        return sorted({row[0] for row in query.all()})


def network_exists(context, network_id: str) -> bool:
    with db_api.CONTEXT_READER.using(context):
        return context.session.query(models_v2.Network.id).filter(
            models_v2.Network.id == network_id).first() is not None
