"""What many networks' port groups on one DVS still need, in a fixed number of queries.

The answer of ``usage.wanted_sets`` (and ``usage.network_exists``) for every network
at once, for the periodic sweep and the audit, which ask about every port group the
project has: a network's port groups on a DVS are needed for each set of its ports
with a binding on a host of that DVS, and for the set a port's NIC still sits on
(its bindings' ``vif_details``) until the policy worker moves it.  Four queries
whatever the number of networks (``membership.port_sets`` and ``membership.plugged``),
instead of five per network.
"""
from __future__ import annotations

from typing import Collection, Iterable

from neutron.db import models_v2
from neutron_lib.db import api as db_api

from networking_dvs_fabric.security import membership


def existing(context, network_ids: Iterable[str]) -> set[str]:
    """Those of the networks this Neutron has (one query)."""
    ids = sorted(set(network_ids))
    if not ids:
        return set()
    with db_api.CONTEXT_READER.using(context):
        return {row[0] for row in context.session.query(models_v2.Network.id).filter(
            models_v2.Network.id.in_(ids)).all()}


def needed_sets(context, network_ids: Iterable[str],
                hosts: Collection[str]) -> dict[str, set[str]]:
    """Network -> the sets whose port groups it needs on a DVS with binding hosts
    ``hosts`` (``usage.wanted_sets``); empty for a network Neutron no longer has
    (its ports went with it)."""
    ids = sorted(set(network_ids))
    out: dict[str, set[str]] = {n: set() for n in ids}
    if not hosts:
        return out
    ports = membership.port_sets(context, network_ids=ids, hosts=hosts)
    for port_set in ports.values():
        out[port_set.network_id].add(port_set.key)
    for port_id, plugged in membership.plugged(context, sorted(ports)).items():
        out[ports[port_id].network_id] |= plugged
    return out
