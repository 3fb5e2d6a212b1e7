"""The persistent journal's store: record intent, claim it, settle it.

A row says only "(resource_type, resource_id) needs reconciling" plus an
operation hint; the worker re-reads Neutron and the backends and converges
(level-triggered).  So a claim takes *all* ready pending rows of a resource at
once: one handling covers them all.

Guarantees, with any number of workers on any number of hosts:

* a resource is held by at most one worker at a time: a resource with a row
  in ``processing`` is never claimed again until that claim is settled
  (``complete``/``retry_later``/``fail``) or released as stale;
* a resource's rows are handled in ``id`` order: rows recorded after a claim
  stay pending and come with the next claim, after this one is settled; once
  any pending row of a resource is due, a claim takes *all* its pending rows
  (one handling covers them all).  So a new row cuts short the back-off of
  older ones: new intent is tried at once, not after a leaf's retry delay.

How: each resource is claimed in its own short transaction that first locks
all the resource's live rows (``SELECT ... FOR UPDATE NOWAIT`` on MariaDB; a
resource another worker is claiming at this moment is skipped, not waited
for), checks that none is ``processing``, and then flips the ready pending
ones with a compare-and-set ``UPDATE ... WHERE state='pending' AND NOT EXISTS
(processing row of the resource)``.  On SQLite the lock clause is a no-op and
the compare-and-set, run by SQLite's single writer, is what protects; there
the UPDATE comes first in its transaction (a read first would hold a shared lock
that SQLite cannot upgrade while an API process writes: "database is locked").
Per-row ``SKIP LOCKED`` is not used for the resource: it would show a claimer
the unlocked newer rows of a resource whose older rows another worker is
claiming, and it would claim them out of order.

Deadlocks: ``claim`` skips a resource that hits one (the next claim looks
again); the other writers are retried by Neutron's
``retry_if_session_inactive`` when called outside a transaction (inside one,
e.g. ``record`` in precommit, the caller's own retry covers it).

Times are naive UTC (``oslo_utils.timeutils.utcnow()``), as stored.  Every
function takes a neutron_lib context; ``record`` joins the caller's open
transaction (ML2 precommit), ``claim`` must run outside any transaction.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import secrets
import socket
from typing import Any, Callable, Collection

from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc
from oslo_log import log as logging
from oslo_utils import timeutils
import sqlalchemy as sa
from sqlalchemy import orm

from networking_dvs_fabric.db import models

LOG = logging.getLogger(__name__)

Journal = models.JournalEntry
PENDING, PROCESSING, FAILED, COMPLETED = (models.PENDING, models.PROCESSING,
                                          models.FAILED, models.COMPLETED)
MAX_ERROR_CHARS = 8000
# Candidates read per claimed resource wanted: some are lost to other workers.
_CANDIDATE_FACTOR = 3


@dataclasses.dataclass(frozen=True)
class Entry:
    """One claimed resource: all its ready pending rows, oldest first.

    ``attempts`` is the highest attempt count of the rows (0 the first time);
    ``worker_id`` is who holds the claim: ``complete``/``retry_later``/``fail``
    only touch the rows while that worker still holds them.
    """

    resource_type: str
    resource_id: str
    row_ids: tuple[int, ...]
    operations: tuple[str, ...]
    attempts: int
    first_created_at: datetime.datetime
    worker_id: str = ""


def utcnow() -> datetime.datetime:
    """Now as the journal stores it: naive UTC."""
    return timeutils.utcnow()


def make_worker_id() -> str:
    """``"<host>:<pid>:<random>"``: unique per worker, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def parse_worker_id(worker_id: str) -> tuple[str, int] | None:
    """(host, pid) of a :func:`make_worker_id` value; None if it is not one."""
    parts = worker_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


@db_api.retry_if_session_inactive()
def record(context, resource_type: str, resource_id: str,
           operation: str = "sync", delay: float = 0.0) -> None:
    """Note that a resource needs reconciling (joins the caller's transaction).

    ``delay``: not before that many seconds (for intent that becomes visible in the
    database a moment after it can be recorded).
    """
    _check_length("resource_type", resource_type, 36)
    _check_length("resource_id", resource_id, 255)
    _check_length("operation", operation, 36)
    now = utcnow()
    with db_api.CONTEXT_WRITER.using(context):
        context.session.add(Journal(
            resource_type=resource_type, resource_id=resource_id,
            operation=operation, state=PENDING, attempts=0,
            next_attempt_at=now + datetime.timedelta(seconds=delay), created_at=now,
            updated_at=now))


def claim(context, worker_id: str, limit: int, *,
          resource_types: Collection[str] | None = None) -> list[Entry]:
    """Claim up to ``limit`` resources with ready pending rows, oldest first.

    ``resource_types`` limits the claim to those types (a worker serving
    only some).  Must be called outside any open transaction: every resource
    is claimed in its own transaction, so locks are held for milliseconds and
    one contended resource never holds up the others.
    """
    if limit <= 0:
        return []
    now = utcnow()
    entries: list[Entry] = []
    for resource_type, resource_id in _candidates(context, now,
                                                  limit * _CANDIDATE_FACTOR,
                                                  resource_types):
        try:
            entry = _claim_one(context, worker_id, resource_type, resource_id, now)
        except (db_exc.DBDeadlock, _Lost):
            # NOWAIT hit a lock (another worker claims it now), a deadlock, or
            # the compare-and-set lost: the next claim looks again.
            LOG.debug("journal: %(type)s %(id)s busy, skipped",
                      {"type": resource_type, "id": resource_id})
            continue
        if entry is not None:
            entries.append(entry)
            if len(entries) >= limit:
                break
    return entries


@db_api.retry_if_session_inactive()
def complete(context, entry: Entry) -> bool:
    """Mark the entry's rows completed (kept until :func:`prune`).

    False when the claim had been taken away (released as stale) meanwhile:
    the rows are then left as they are.
    """
    return _settle(context, entry, state=COMPLETED)


@db_api.retry_if_session_inactive()
def retry_later(context, entry: Entry, error: str, delay: float) -> bool:
    """Put the entry's rows back to pending, due in ``delay`` seconds."""
    due = utcnow() + datetime.timedelta(seconds=max(0.0, delay))
    return _settle(context, entry, state=PENDING, attempts=Journal.attempts + 1,
                   next_attempt_at=due, last_error=_clip(error),
                   claimed_by=None, claimed_at=None)


@db_api.retry_if_session_inactive()
def fail(context, entry: Entry, error: str) -> bool:
    """Mark the entry's rows failed: permanent, kept and visible."""
    return _settle(context, entry, state=FAILED, last_error=_clip(error))


@db_api.retry_if_session_inactive()
def release_stale_claims(context, host: str, alive: Callable[[int], bool],
                         timeout: float) -> int:
    """Give up claims whose worker is gone; returns the number of rows released.

    A processing row goes back to pending (due now, attempts + 1, the reason
    in last_error) when it was claimed on ``host`` by a pid for which
    ``alive(pid)`` is False, or anywhere more than ``timeout`` seconds ago.
    """
    now = utcnow()
    cutoff = now - datetime.timedelta(seconds=timeout)
    with db_api.CONTEXT_READER.using(context):
        held = (context.session.query(Journal.claimed_by, Journal.claimed_at)
                .filter(Journal.state == PROCESSING).distinct().all())
    dead: set[str | None] = set()
    overdue: set[str | None] = set()
    for claimed_by, claimed_at in held:
        parsed = parse_worker_id(claimed_by or "")
        if parsed is not None and parsed[0] == host and not alive(parsed[1]):
            dead.add(claimed_by)
        elif claimed_at is None or claimed_at < cutoff:
            overdue.add(claimed_by)
    released = 0
    for claimed_by in dead | overdue:
        if claimed_by in dead:
            reason = f"claim released: worker {claimed_by} is gone"
        else:
            reason = f"claim released: {claimed_by} held it over {timeout:g} s"
        with db_api.CONTEXT_WRITER.using(context):
            query = context.session.query(Journal).filter(
                Journal.state == PROCESSING, Journal.claimed_by == claimed_by)
            if claimed_by not in dead:
                # Compare-and-set: only rows that are still overdue.
                query = query.filter(sa.or_(Journal.claimed_at.is_(None),
                                            Journal.claimed_at < cutoff))
            count = query.update(
                {Journal.state: PENDING, Journal.attempts: Journal.attempts + 1,
                 Journal.next_attempt_at: now, Journal.updated_at: now,
                 Journal.claimed_by: None, Journal.claimed_at: None,
                 Journal.last_error: reason}, synchronize_session=False)
        if count:
            LOG.warning("journal: %(reason)s; %(n)d rows back to pending",
                        {"reason": reason, "n": count})
        released += count
    return released


@db_api.retry_if_session_inactive()
def prune(context, older_than: float) -> int:
    """Delete completed rows settled more than ``older_than`` seconds ago.

    Looks first, in a read-only transaction: an idle worker must not take SQLite's
    write lock every few seconds (an API transaction that read and then wants to
    write fails at once with "database is locked" while another process holds it).
    """
    cutoff = utcnow() - datetime.timedelta(seconds=older_than)
    with db_api.CONTEXT_READER.using(context):
        if context.session.query(Journal.id).filter(
                Journal.state == COMPLETED, Journal.updated_at < cutoff).first() is None:
            return 0
    with db_api.CONTEXT_WRITER.using(context):
        return (context.session.query(Journal)
                .filter(Journal.state == COMPLETED, Journal.updated_at < cutoff)
                .delete(synchronize_session=False))


def next_due(context) -> datetime.datetime | None:
    """When a claim can next take something (naive UTC), or None.

    The earliest ``next_attempt_at`` of pending rows, leaving out resources a
    worker holds right now (their rows wait for that claim to settle, which is
    the moment to look again): an idle worker sleeping until then neither spins
    nor oversleeps.
    """
    with db_api.CONTEXT_READER.using(context):
        return (context.session.query(sa.func.min(Journal.next_attempt_at))
                .filter(Journal.state == PENDING, ~_processing_exists(Journal))
                .scalar())


def rows(context, states: Collection[str] | None = None,
         limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` rows (optionally only in ``states``), for listing.

    Values are JSON-ready: times as ISO 8601 strings in UTC (``+00:00``).
    """
    with db_api.CONTEXT_READER.using(context):
        query = context.session.query(Journal)
        if states:
            query = query.filter(Journal.state.in_(list(states)))
        found = query.order_by(Journal.id.desc()).limit(limit).all()
        return [_as_dict(row) for row in found]


# -- internals ------------------------------------------------------------------

def _candidates(context, now: datetime.datetime, limit: int,
                resource_types: Collection[str] | None) -> list[tuple[str, str]]:
    """Resources with a ready pending row and none processing, oldest first.

    A cheap unlocked read: :func:`_claim_one` checks it again under lock.
    """
    first_id = sa.func.min(Journal.id).label("first_id")
    with db_api.CONTEXT_READER.using(context):
        query = (context.session.query(Journal.resource_type, Journal.resource_id,
                                       first_id)
                 .filter(Journal.state == PENDING, Journal.next_attempt_at <= now,
                         ~_processing_exists(Journal)))
        if resource_types is not None:
            query = query.filter(Journal.resource_type.in_(list(resource_types)))
        found = (query.group_by(Journal.resource_type, Journal.resource_id)
                 .order_by(first_id).limit(limit).all())
    return [(rtype, rid) for rtype, rid, _ in found]


def _processing_exists(outer, besides: Collection[int] = ()) -> sa.ColumnElement[bool]:
    """EXISTS a processing row of the same resource as ``outer``'s row.

    ``besides``: rows this very UPDATE is turning to processing (SQLite's
    UPDATE sees its own earlier changes while it runs).
    """
    other = orm.aliased(Journal)
    clauses = [other.resource_type == outer.resource_type,
               other.resource_id == outer.resource_id,
               other.state == PROCESSING]
    if besides:
        clauses.append(other.id.notin_(list(besides)))
    return sa.exists().where(*clauses)


def _claim_one(context, worker_id: str, resource_type: str, resource_id: str,
               now: datetime.datetime) -> Entry | None:
    with db_api.CONTEXT_WRITER.using(context):
        session = context.session
        if session.get_bind().dialect.name == "sqlite":
            claimed_ids = _flip_sqlite(session, worker_id, resource_type, resource_id, now)
        else:
            claimed_ids = _flip_locked(session, worker_id, resource_type, resource_id, now)
        if not claimed_ids:
            return None
        claimed = (session.query(Journal.id, Journal.operation, Journal.attempts,
                                 Journal.created_at)
                   .filter(Journal.id.in_(claimed_ids)).order_by(Journal.id).all())
    return Entry(resource_type=resource_type, resource_id=resource_id,
                 row_ids=tuple(row.id for row in claimed),
                 operations=tuple(row.operation for row in claimed),
                 attempts=max(row.attempts for row in claimed),
                 first_created_at=min(row.created_at for row in claimed),
                 worker_id=worker_id)


def _flip_locked(session, worker_id: str, resource_type: str, resource_id: str,
                 now: datetime.datetime) -> list[int]:
    """MariaDB: lock the resource's live rows (NOWAIT), then compare-and-set them."""
    live = (session.query(Journal.id, Journal.state, Journal.next_attempt_at)
            .filter(Journal.resource_type == resource_type,
                    Journal.resource_id == resource_id,
                    Journal.state.in_([PENDING, PROCESSING]))
            .order_by(Journal.id)
            .with_for_update(nowait=True).all())
    if any(state == PROCESSING for _, state, _ in live):
        return []
    if not any(due <= now for _, _, due in live):
        return []
    ready = [row_id for row_id, _, _ in live]
    table = Journal.__table__
    result = session.execute(
        table.update()
        .where(table.c.id.in_(ready), table.c.state == PENDING,
               ~_processing_exists(table.c, besides=ready))
        .values(state=PROCESSING, claimed_by=worker_id, claimed_at=now, updated_at=now))
    if result.rowcount != len(ready):
        # Someone else got there first: undo this resource entirely.
        raise _Lost()
    return ready


def _flip_sqlite(session, worker_id: str, resource_type: str, resource_id: str,
                 now: datetime.datetime) -> list[int]:
    """SQLite: one compare-and-set UPDATE first (the single writer makes it atomic)."""
    table = Journal.__table__
    other = table.alias("other")
    mine = sa.and_(other.c.claimed_by == worker_id, other.c.claimed_at == now)
    held = sa.exists().where(other.c.resource_type == table.c.resource_type,
                             other.c.resource_id == table.c.resource_id,
                             other.c.state == PROCESSING, ~mine)
    # Rows this UPDATE already flipped still count as due (SQLite's UPDATE sees its
    # own earlier changes while it runs).
    due = sa.exists().where(other.c.resource_type == table.c.resource_type,
                            other.c.resource_id == table.c.resource_id,
                            sa.or_(other.c.state == PENDING, mine),
                            other.c.next_attempt_at <= now)
    result = session.execute(
        table.update()
        .where(table.c.resource_type == resource_type, table.c.resource_id == resource_id,
               table.c.state == PENDING, ~held, due)
        .values(state=PROCESSING, claimed_by=worker_id, claimed_at=now, updated_at=now))
    if not result.rowcount:
        return []
    return [row.id for row in session.query(Journal.id).filter(
        Journal.resource_type == resource_type, Journal.resource_id == resource_id,
        Journal.state == PROCESSING, Journal.claimed_by == worker_id,
        Journal.claimed_at == now)]


def _settle(context, entry: Entry, **values: Any) -> bool:
    """Update the entry's rows while ``entry.worker_id`` still holds them."""
    values["updated_at"] = utcnow()
    with db_api.CONTEXT_WRITER.using(context):
        query = context.session.query(Journal).filter(
            Journal.id.in_(list(entry.row_ids)), Journal.state == PROCESSING)
        if entry.worker_id:
            query = query.filter(Journal.claimed_by == entry.worker_id)
        count = query.update({getattr(Journal, key): value
                              for key, value in values.items()},
                             synchronize_session=False)
    if count != len(entry.row_ids):
        LOG.warning("journal: %(type)s %(id)s: %(n)d of %(total)d rows were no "
                    "longer held by %(worker)s", {
                        "type": entry.resource_type, "id": entry.resource_id,
                        "n": len(entry.row_ids) - count,
                        "total": len(entry.row_ids), "worker": entry.worker_id})
    return count == len(entry.row_ids)


def _as_dict(row: Journal) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in Journal.__table__.columns:
        value = getattr(row, column.name)
        if isinstance(value, datetime.datetime):
            value = value.replace(tzinfo=datetime.timezone.utc).isoformat()
        out[column.name] = value
    return out


def _clip(error: str) -> str:
    text = str(error)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _check_length(what: str, value: str, limit: int) -> None:
    if not value or len(value) > limit:
        raise ValueError(f"journal {what} must be 1..{limit} characters: {value!r}")


class _Lost(Exception):
    """The compare-and-set lost a race; the resource's transaction is undone."""
