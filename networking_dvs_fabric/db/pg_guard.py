"""Port group guards: a bind and a port group release never cross, across processes.

The race: a release (the port group journal worker, the sweep or ``dvs-fabric
sync``, in one process) finds the network's port group unused and deletes it in
vCenter; a bind in an API process (another process, often another host) ensures
the port group (from its cache of vCenter, or just made) and answers its key as
``pg_id``.  Run in this order - release checks, bind answers, release deletes -
Nova plugs the VM into a port group that is gone.

One row per (network, DVS), ``dvs_fabric_port_group_guards``, and two rules:

* a **release** locks the row (``SELECT ... FOR UPDATE``, making it if missing)
  first, then asks whether the port group is still used, deletes it in vCenter,
  writes the deleted port group's key into the row (``released_key``) and only
  then commits.  The row stays locked through the vCenter delete.
* a **bind**, after ensuring the port group and before answering, locks the same
  row in one small transaction and writes ``bound_*`` (its port and that port's
  revision).  If a release holds the row, the bind waits for it; if the key it
  was about to answer is ``released_key``, that port group was deleted under it
  and it makes it again (``vcenter/usage.ensure_for_bind``).

What the release counts as "used" (``vcenter/usage.py``): a port of the network
with a binding on a host of that DVS, as Neutron has it - ML2 stores the binding
host and commits it *before* it calls the drivers' ``bind_port``, for a port's
active binding - **or** a bind written here that has not been committed by ML2 yet.
That second part is for ML2's other path: ``POST /v2.0/ports/{id}/bindings`` (the
inactive binding Nova makes on the destination of a live migration) runs
``bind_port`` first and commits the new binding row only afterwards.  "Not
committed yet" is: the bound port still has the revision it had when the bind
wrote the row (ML2 committing the binding bumps it, as does any other change
of the port or its deletion), and the bind is younger than ``GRACE`` (a bind whose
result is never committed - ``PortBindingError`` - keeps nothing for longer).

Why the vCenter delete runs under the lock: vCenter has no "delete unless
someone answered its key meanwhile"; a bind must either happen before the
release's check (the check then sees it) or wait until the delete is done (and
then make the port group again).  A bind therefore waits at most as long as one
vCenter delete of that network's port group.  On SQLite (the embedded lab) the
lock is the database-wide write lock the lab's ``BEGIN IMMEDIATE`` takes.

Both sides are called outside any transaction.  The row's only race is its
creation (two transactions finding it missing): the loser is tried again.
"""
from __future__ import annotations

import datetime
import logging
from typing import Callable, TypeVar

from neutron.db import models_v2
from neutron_lib.db import api as db_api
from neutron_lib.db import standard_attr
from oslo_db import exception as db_exc
from oslo_utils.timeutils import utcnow

from networking_dvs_fabric.db import models

LOG = logging.getLogger(__name__)
T = TypeVar("T")
Guard = models.PortGroupGuard

#: How long a bind that ML2 has not committed keeps its port group (see the module).
GRACE = datetime.timedelta(seconds=60)
#: Tries when the row is made by two transactions at once (the loser tries again).
ROW_TRIES = 3


class _RowRace(Exception):
    """Another transaction made the guard row first: try again."""


def _lock(session, network_id: str, dvs_name: str) -> Guard:
    """Lock the (network, DVS) row, making it if missing; held until the commit."""
    row = (session.query(Guard)
           .filter(Guard.network_id == network_id, Guard.dvs_name == dvs_name)
           .with_for_update().first())
    if row is not None:
        return row
    row = Guard(network_id=network_id, dvs_name=dvs_name)
    session.add(row)
    try:
        session.flush()
    except (db_exc.DBDuplicateEntry, db_exc.DBDeadlock) as exc:
        raise _RowRace() from exc
    return row


def _retrying(func: Callable[[], T]) -> T:
    for attempt in range(1, ROW_TRIES + 1):
        try:
            return func()
        except _RowRace:
            if attempt == ROW_TRIES:
                raise db_exc.DBError("port group guard row could not be made") from None
    raise AssertionError("unreachable")


def _revision(session, port_id: str) -> int | None:
    """The port's revision as committed (None: the port is gone)."""
    return (session.query(standard_attr.StandardAttribute.revision_number)
            .join(models_v2.Port,
                  models_v2.Port.standard_attr_id == standard_attr.StandardAttribute.id)
            .filter(models_v2.Port.id == port_id).scalar())


def bound(context, network_id: str, dvs_name: str, port_id: str, pg_key: str) -> bool:
    """A bind of ``port_id`` is about to answer ``pg_key``: write it down.

    Waits while a release of the (network, DVS) runs.  True when ``pg_key`` is the
    port group a release deleted: the caller must make the port group again.
    """
    def run() -> bool:
        with db_api.CONTEXT_WRITER.using(context):
            session = context.session
            row = _lock(session, network_id, dvs_name)
            # Read after the lock: the port's revision as of now, not of before a wait.
            row.bound_revision = _revision(session, port_id)
            row.bound_at = utcnow()
            row.bound_port_id = port_id
            return pg_key in (row.released_key or "").split()
    return _retrying(run)


class ReleaseGuard:
    """The locked row, for a release that runs inside the guard's transaction."""

    def __init__(self, session, row: Guard) -> None:
        self._session = session
        self._row = row

    def bind_in_flight(self) -> str | None:
        """The port of a bind that answered and that ML2 has not committed yet, if any."""
        row = self._row
        if row.bound_port_id is None or row.bound_at is None or \
                row.bound_revision is None or row.bound_at < utcnow() - GRACE:
            return None
        if _revision(self._session, row.bound_port_id) != row.bound_revision:
            return None         # committed, changed or deleted since: Neutron has it now
        return row.bound_port_id

    def deleted(self, pg_key: str) -> None:
        """The release deleted the port group ``pg_key`` (a bind handed it must remake it).

        A network has a port group per set: one release may delete several, so the
        row keeps the latest few keys, space-separated, within its 255 characters.
        """
        keys = [k for k in (self._row.released_key or "").split() if k != pg_key]
        keys.append(pg_key)
        while len(" ".join(keys)) > 255 and len(keys) > 1:
            keys.pop(0)
        self._row.released_key = " ".join(keys)
        self._row.released_at = utcnow()
        self._session.flush()

    def drop(self) -> None:
        """The network is gone: so is its row (no bind can come for it any more)."""
        self._session.delete(self._row)
        self._session.flush()


def releasing(context, network_id: str, dvs_name: str,
              release: Callable[[ReleaseGuard], T]) -> T:
    """Run ``release`` (check, vCenter delete) holding the (network, DVS) row locked.

    ``release`` runs inside the transaction: its reads of Neutron's tables on
    ``context`` see every bind that wrote the row before the lock was granted.
    """
    def run() -> T:
        with db_api.CONTEXT_WRITER.using(context):
            session = context.session
            return release(ReleaseGuard(session, _lock(session, network_id, dvs_name)))
    return _retrying(run)
