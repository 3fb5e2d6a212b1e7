"""Is a network's port group on a DVS still needed?  Asked of Neutron's database.

One answer for everyone who may delete a port group (the port group worker, the
sweeper, ``dvs-fabric sync``): yes while the network exists and one of its ports
has a binding (active or not, being bound or bound) on a host of that DVS, or a
bind answered it and ML2 has not committed that binding yet.

They all delete through :func:`release_if_unused`, and the bind ensures through
:func:`ensure_for_bind`: both meet on the (network, DVS) row of ``db/pg_guard.py``
(see there why).  It keeps a bind in another process from answering a port group
that a release found unused and is deleting (the bind waits and makes it again),
and it tells the release about a bind whose binding ML2 commits only after
``bind_port`` returns (a live migration's inactive binding): ML2 stores the host
of a port's active binding before binding, so Neutron's tables show that one.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Collection

from neutron.db import models_v2
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib.db import api as db_api

from networking_dvs_fabric.db import pg_guard
from networking_dvs_fabric.security import membership
from networking_dvs_fabric.security.model import PortGroupPolicy
from networking_dvs_fabric.vcenter import errors, naming

if TYPE_CHECKING:
    from networking_dvs_fabric.vcenter.backend import PortGroupBinding, VSphereBackend
    from networking_dvs_fabric.vcenter.portgroups import PortGroup

LOG = logging.getLogger(__name__)

# What release_if_unused did.
RELEASED = "released"           # deleted, or already gone
IN_USE = "in_use"               # a port of the network is bound on a host of the DVS
BIND_RUNNING = "bind_running"   # a bind answered; ML2 has not committed its binding yet
KEPT_BY_VMS = "kept_by_vms"     # unused in Neutron, but VMs still have NICs on it


class PortGroupReleased(errors.VCenterError):
    """The port group a bind got was deleted by a release and is still what the
    bind's cache gives: this binding attempt fails, ML2's next one goes on."""

    temporary = True


def all_needed(context, backend: "VSphereBackend", dvs_name: str, network_id: str,
               hosts: Collection[str]) -> bool:
    """Cheap check before a release: is every port group of the network on the DVS, as
    the watched cache shows them, still needed?  False when unsure (no cache)."""
    cached = backend.cached_port_groups(dvs_name, network_id)
    if cached is None or not _network_exists(context, network_id):
        return False
    wanted = wanted_sets(context, network_id, hosts)
    return bool(wanted) and all(pg.set_key in wanted for pg in cached)


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


def wanted_sets(context, network_id: str, hosts: Collection[str]) -> set[str]:
    """The sets whose port groups the network's ports bound on ``hosts`` need: each
    port's own, and the one its NIC may still sit on until the worker moves it."""
    sets = membership.port_sets(context, network_id, hosts)
    wanted = {s.key for s in sets.values()}
    wanted |= membership.plugged_sets(context, list(sets))
    return wanted


def release_if_unused(context, backend: "VSphereBackend", dvs_name: str, network_id: str,
                      hosts: Collection[str]) -> str:
    """Delete the network's port groups on ``dvs_name`` that are no longer needed.

    A network has one port group per set of its ports (``security/model.set_key``);
    each set's goes when no port of the set is bound on a host of the DVS.
    Checked and deleted under the (network, DVS) guard row (``db/pg_guard.py``),
    so no bind in any process answers the port group in between.  Returns
    RELEASED (all gone), IN_USE (the unneeded ones gone, the rest in use),
    BIND_RUNNING or KEPT_BY_VMS.  vCenter errors propagate.
    """
    def release(guard: pg_guard.ReleaseGuard) -> str:
        seen: dict[str, object] = {}

        def still_used(pg: "PortGroup | None" = None) -> bool:
            if pg is None:
                seen["network"] = _network_exists(context, network_id)
                if not seen["network"]:
                    return False
                seen["sets"] = wanted_sets(context, network_id, hosts)
                port = guard.bind_in_flight()
                if port is not None:
                    key = membership.port_sets(context, port_ids=[port]).get(port)
                    seen["inflight"] = key.key if key is not None else naming.OPEN_SET
                    seen["inflight_port"] = port
                if seen["sets"]:
                    seen["why"] = IN_USE
                    return True
                if port is not None:
                    seen["why"] = BIND_RUNNING
                    return True
                return False
            if pg.set_key in seen["sets"]:      # type: ignore[operator]
                return True
            if pg.set_key == seen.get("inflight"):
                seen["why"] = BIND_RUNNING
                LOG.info("vsphere_dvs: port group %(pg)s of network %(net)s on %(dvs)s "
                         "kept: port %(port)s was just bound to it and ML2 has not "
                         "committed that binding yet",
                         {"pg": pg.name, "net": network_id, "dvs": dvs_name,
                          "port": seen["inflight_port"]})
                return True
            return False

        def kept(pg: "PortGroup") -> None:
            seen["kept"] = True

        if not backend.release_port_group(dvs_name, network_id, still_used,
                                          on_deleted=lambda pg: guard.deleted(pg.key),
                                          on_kept=kept):
            if seen.get("kept"):
                return KEPT_BY_VMS
            return str(seen.get("why", KEPT_BY_VMS))
        if seen.get("network") is False:
            guard.drop()
        return RELEASED
    return pg_guard.releasing(context, network_id, dvs_name, release)


def ensure_for_bind(context, backend: "VSphereBackend", physical_network: str,
                    network_id: str, network_name: str, vlan: int,
                    port_id: str, set_key: str = naming.OPEN_SET,
                    policy: Callable[[], PortGroupPolicy] | None = None
                    ) -> "PortGroupBinding":
    """The bind's ensure: the port group as ``backend.ensure_port_group`` gives it,
    written down in the guard row before it is answered (one small transaction).

    When a release deleted that very port group (the bind waited for it, or its
    cache had not seen the delete yet), it is made again: after the guard row
    names this bind, no release deletes it any more.
    """
    binding = backend.ensure_port_group(physical_network, network_id, network_name, vlan,
                                        set_key, policy)
    return guard_bind(context, backend, physical_network, network_id, network_name, vlan,
                      port_id, binding, set_key, policy)


def guard_bind(context, backend: "VSphereBackend", physical_network: str, network_id: str,
               network_name: str, vlan: int, port_id: str,
               binding: "PortGroupBinding", set_key: str = naming.OPEN_SET,
               policy: Callable[[], PortGroupPolicy] | None = None
               ) -> "PortGroupBinding":
    """The second half of :func:`ensure_for_bind`, for a ``binding`` just ensured."""
    dvs_name = backend.dvs_for(physical_network)
    assert dvs_name is not None
    if not pg_guard.bound(context, network_id, dvs_name, port_id, binding.pg_key):
        return binding
    gone = binding.pg_key
    LOG.info("vsphere_dvs: port group %(pg)s (%(key)s) of network %(net)s was deleted by a "
             "release while port %(port)s was being bound; making it again",
             {"pg": binding.pg_name, "key": gone, "net": network_id, "port": port_id})
    backend.forget_port_group(physical_network, network_id, gone)
    binding = backend.ensure_port_group(physical_network, network_id, network_name, vlan,
                                        set_key, policy)
    if binding.pg_key == gone:
        raise PortGroupReleased(
            f"port group {binding.pg_name!r} ({gone}) of network {network_id} on "
            f"{dvs_name} was deleted under the bind of port {port_id} and is still "
            "cached; binding again")
    return binding


def network_exists(context, network_id: str) -> bool:
    """Does this Neutron have the network (what adopting a legacy object asks)?"""
    return _network_exists(context, network_id)
