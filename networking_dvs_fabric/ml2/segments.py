"""Dynamic VLAN segments that ``fabric_hwvtep`` hands out: held while binding, given back
when unused - under one row lock, so a bind and a release never cross.

The race this closes: port P2 of a network is being bound and ML2's
``allocate_dynamic_segment`` has just returned the network's existing segment S, but
P2's binding levels are not committed yet.  Port P1 of the same network leaves at
that moment (deleted, or moved: its levels are cleared before the rebind) and its
postcommit finds S unused.  Released then, S takes its VLAN back to the pool while
P2's level points at it: the level's segment becomes NULL, so no leaf carries the
network although its port is bound.

The protocol (MariaDB/MySQL, InnoDB row locks):

* the releaser, in one transaction, locks S (``SELECT ... FOR UPDATE``) first, then
  looks for a binding level through S *and* for a bind still running on the
  network (a binding with a host whose ``vif_type`` is still ``unbound``: ML2 stores
  the host before it binds and the result only when it commits), and releases S
  only when there is neither;
* the binder, once ML2 has given it S, takes the same lock before going on.  If S is
  gone the releaser won and the binder asks ML2 again (a new segment).  If the
  binder got the lock first, its binding row is committed before the releaser's
  lock is granted, so the releaser sees the running bind and keeps S.

A bind running on the network keeps S even if it ends on another physical network;
S then waits for the next release check of that network (noted in
docs/reliability.md).  SQLite ignores ``FOR UPDATE``; it serialises writers with its
database-wide lock, which the embedded lab relies on.
"""
from __future__ import annotations

from typing import Callable

from neutron.db import models_v2
from neutron.db.models import segment as segment_models
from neutron.plugins.ml2 import models as ml2_models
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc

DEADLOCK_TRIES = 3


def _lock(session, segment_id: str) -> str | None:
    """Lock the segment's row; its network's id, or None when it no longer exists."""
    return session.query(segment_models.NetworkSegment.network_id).filter(
        segment_models.NetworkSegment.id == segment_id).with_for_update().scalar()


def hold(plugin_context, segment_id: str, port_id: str) -> tuple[bool, str | None]:
    """Take S's lock for a bind that is about to use it (see the module doc).

    Returns (S still exists, host of the port's active binding) - the second is read
    in the same transaction, since the binder needs it anyway.
    """
    with db_api.CONTEXT_WRITER.using(plugin_context):
        session = plugin_context.session
        exists = _lock(session, segment_id) is not None
        row = session.query(ml2_models.PortBinding.host).filter(
            ml2_models.PortBinding.port_id == port_id,
            ml2_models.PortBinding.status == n_const.ACTIVE).first()
    return exists, (row.host if row else None)


def release_if_unused(plugin_context, segment_id: str, leaving_port_id: str,
                      release: Callable[[str], None]) -> str:
    """Release S when no binding level uses it and no bind runs on its network.

    ``leaving_port_id`` is the port whose departure prompted the check (its own
    binding may be ``unbound`` right now, being moved).  Returns what happened:
    ``gone`` (already released), ``in_use``, ``bind_running`` or ``released``.
    InnoDB may pick this transaction as a deadlock victim against a VLAN allocation;
    it is then tried again (it changed nothing).
    """
    for attempt in range(1, DEADLOCK_TRIES + 1):
        try:
            return _release_if_unused(plugin_context, segment_id, leaving_port_id, release)
        except db_exc.DBDeadlock:
            if attempt == DEADLOCK_TRIES:
                raise
    raise AssertionError("unreachable")


def _release_if_unused(plugin_context, segment_id: str, leaving_port_id: str,
                       release: Callable[[str], None]) -> str:
    with db_api.CONTEXT_WRITER.using(plugin_context):
        session = plugin_context.session
        network_id = _lock(session, segment_id)
        if network_id is None:
            return "gone"
        used = session.query(ml2_models.PortBindingLevel.port_id).filter(
            ml2_models.PortBindingLevel.segment_id == segment_id).first()
        if used is not None:
            return "in_use"
        running = session.query(ml2_models.PortBinding.port_id).join(
            models_v2.Port, models_v2.Port.id == ml2_models.PortBinding.port_id).filter(
            models_v2.Port.network_id == network_id,
            models_v2.Port.id != leaving_port_id,
            ml2_models.PortBinding.host != "",
            ml2_models.PortBinding.vif_type == portbindings.VIF_TYPE_UNBOUND).first()
        if running is not None:
            return "bind_running"
        release(segment_id)
        return "released"
