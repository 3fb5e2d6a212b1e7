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

How a batch is claimed (``claiming``): one unlocked read of candidate resources,
then one short transaction for the whole batch.  On MariaDB (>= 10.6) it locks the
candidates' live rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (a row another
worker holds locked at this moment is passed over, not waited for), then reads the
same resources' live rows without locking - as of after the locks - and claims
only a resource *all* of whose live rows it locked, none ``processing``, one due:
a resource whose rows are partly locked by someone else (a worker claiming or
settling it right now) is skipped whole, never claimed in part nor with its
newer rows ahead of older ones.  One UPDATE then flips the claimed rows.  On
SQLite the claim is one compare-and-set ``UPDATE ... WHERE state='pending' AND NOT
EXISTS (processing row of the resource) AND EXISTS (due row of the resource)``
over the batch, run by SQLite's single writer, then one read of what it flipped;
there the UPDATE comes first in its transaction (a read first would hold a shared
lock that SQLite cannot upgrade while an API process writes: "database is
locked").  So a claim costs the same few statements for 10 entries or 200.  A row
whose recording transaction has not committed yet is not seen by a claim (SKIP
LOCKED passes over it): it comes with the next claim of its resource, like a row
recorded a moment later.

How a batch is settled (``settling``): every verdict of the batch in one UPDATE
(``CASE`` per row: completed; failed with its error; pending again with its error
and its own delay), first in its transaction, guarded by ``state='processing' AND
claimed_by=<the entry's worker>``: a claim released as stale and taken by another
worker is left to that worker; ``complete``/``retry_later``/``fail`` say whether
the old holder still held it.

Deadlocks: ``claim`` gives up the batch that hits one (the next claim looks
again); the other writers are retried by Neutron's
``retry_if_session_inactive`` when called outside a transaction (inside one,
e.g. ``record`` in precommit, the caller's own retry covers it).

Times are naive UTC (``oslo_utils.timeutils.utcnow()``), as stored.  Every
function takes a neutron_lib context; ``record`` joins the caller's open
transaction (ML2 precommit), ``claim`` must run outside any transaction;
``record_and_claim`` (a repair that converges networks itself) records and claims
a batch in one transaction of its own, and ``settle`` joins the caller's.

Where: this module is the public API.  The per-database claim of a batch is in
``claiming``, the settling of one in ``settling`` (``Settlement``);
``release_stale_claims`` and ``prune`` are in ``maintenance``; the table, states,
``Entry``, ``utcnow`` and ``parse_worker_id`` are in ``common``.  All are offered
here as before.
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
from typing import Any, Collection, Sequence

import sqlalchemy as sa
from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc
from oslo_log import log as logging

from networking_dvs_fabric.db.in_lists import chunks
from networking_dvs_fabric.journal import settling
from networking_dvs_fabric.journal.claiming import (Lost, candidates, claim_resources,
                                                    processing_exists)

# Defined in modules below this one (no import circle), offered here as the public API.
from networking_dvs_fabric.journal.common import (COMPLETED, FAILED, PENDING,  # noqa: F401
                                                  PROCESSING, Entry, Journal, parse_worker_id,
                                                  utcnow)
from networking_dvs_fabric.journal.maintenance import prune, release_stale_claims  # noqa: F401
from networking_dvs_fabric.journal.settling import MAX_ERROR_CHARS, Settlement  # noqa: F401

LOG = logging.getLogger(__name__)

# Candidates read per claimed resource wanted: some are lost to other workers; as
# many claim rounds at most, each for what the rounds before did not get.
_CANDIDATE_FACTOR = 3


def make_worker_id() -> str:
    """``"<host>:<pid>:<random>"``: unique per worker, and says where it runs."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


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


@db_api.retry_if_session_inactive()
def record_many(context, resource_type: str, resource_ids: Sequence[str],
                operation: str = "sync", delay: float = 0.0) -> None:
    """:func:`record` for many resources of one type, in one INSERT (joins the
    caller's transaction)."""
    _check_length("resource_type", resource_type, 36)
    _check_length("operation", operation, 36)
    for resource_id in resource_ids:
        _check_length("resource_id", resource_id, 255)
    if not resource_ids:
        return
    now = utcnow()
    due = now + datetime.timedelta(seconds=delay)
    with db_api.CONTEXT_WRITER.using(context):
        context.session.execute(Journal.__table__.insert(), [
            {"resource_type": resource_type, "resource_id": resource_id,
             "operation": operation, "state": PENDING, "attempts": 0,
             "next_attempt_at": due, "created_at": now, "updated_at": now}
            for resource_id in resource_ids])


@db_api.retry_if_session_inactive()
def record_unless_due(context, resource_type: str, resource_ids: Collection[str],
                      operation: str = "sync", covered_by: Collection[str] = ()) -> list[str]:
    """:func:`record_many` for those of ``resource_ids`` that have no pending row due
    now with ``operation`` (or one of ``covered_by``, operations that cover it); joins
    the caller's transaction and returns the ids recorded.

    For intent that is level-triggered and already visible in the database: a due
    row will be claimed later than this call, so its handling reads what this call
    would have asked it to read.  A row not due yet (a back-off) does not count: a
    new row cuts the back-off short, as always.
    """
    ids = sorted(set(resource_ids))
    operations = sorted({operation, *covered_by})
    now = utcnow()
    with db_api.CONTEXT_WRITER.using(context):
        due: set[str] = set()
        for chunk in chunks(ids):
            due.update(row[0] for row in context.session.query(Journal.resource_id).filter(
                Journal.resource_type == resource_type,
                Journal.resource_id.in_(chunk),
                Journal.state == PENDING, Journal.next_attempt_at <= now,
                Journal.operation.in_(operations)).distinct())
        fresh = [rid for rid in ids if rid not in due]
        record_many(context, resource_type, fresh, operation)
    return fresh


def claim(context, worker_id: str, limit: int, *,
          resource_types: Collection[str] | None = None) -> list[Entry]:
    """Claim up to ``limit`` resources with ready pending rows, oldest first.

    ``resource_types`` limits the claim to those types (a worker serving
    only some).  Must be called outside any open transaction: the batch is
    claimed in one short transaction of its own (a few statements, whatever its
    size); when other workers took some of it, a second round (and a third) tries
    the next candidates for what is missing.
    """
    if limit <= 0:
        return []
    found = candidates(context, utcnow(), limit * _CANDIDATE_FACTOR, resource_types)
    entries: list[Entry] = []
    for _ in range(_CANDIDATE_FACTOR):
        wanted = limit - len(entries)
        if wanted <= 0 or not found:
            break
        batch, found = found[:wanted], found[wanted:]
        try:
            entries += claim_resources(context, worker_id, batch, utcnow())
        except (db_exc.DBDeadlock, Lost):
            # A deadlock, or the flip lost a race: the next claim looks again.
            LOG.debug("journal: a claim of %d resources was undone (busy)", len(batch))
            break
    return entries


@db_api.retry_if_session_inactive()
def record_and_claim(context, worker_id: str, resource_type: str,
                     resource_ids: Sequence[str],
                     operation: str = "sync") -> dict[str, Entry | None]:
    """Record a row for each resource and claim them for ``worker_id``, in one
    transaction.  Per resource its entry, or None when a worker holds it (or is
    claiming it) now: the new row then waits for that claim, pending.
    """
    with db_api.CONTEXT_WRITER.using(context):
        record_many(context, resource_type, resource_ids, operation)
        claimed = claim_resources(context, worker_id,
                                  [(resource_type, rid) for rid in resource_ids],
                                  utcnow())
    by_id = {entry.resource_id: entry for entry in claimed}
    return {rid: by_id.get(rid) for rid in resource_ids}


@db_api.retry_if_session_inactive()
def renew(context, entries: Collection[Entry]) -> list[Entry]:
    """Claim the entries afresh (``claimed_at`` = now) while their worker still holds
    them, so a batch that runs long is not released as stale mid-way; returns the
    entries whose rows are all still held (a claim released meanwhile is another
    worker's now: leave it alone)."""
    ids = [row_id for entry in entries for row_id in entry.row_ids]
    if not ids:
        return []
    now = utcnow()
    with db_api.CONTEXT_WRITER.using(context):
        held: set[int] = set()
        for worker_id in sorted({entry.worker_id for entry in entries}):
            mine = [Journal.id.in_(ids), Journal.state == PROCESSING,
                    Journal.claimed_by == worker_id]
            context.session.query(Journal).filter(*mine).update(
                {Journal.claimed_at: now, Journal.updated_at: now},
                synchronize_session=False)
            held |= {row[0] for row in context.session.query(Journal.id).filter(*mine)}
    return [entry for entry in entries if set(entry.row_ids) <= held]


@db_api.retry_if_session_inactive()
def settle(context, settlements: Sequence[Settlement]) -> list[bool]:
    """Settle a batch of claims in one transaction (joins the caller's); per
    settlement, whether its worker still held the entry (see :func:`complete`)."""
    with db_api.CONTEXT_WRITER.using(context):
        return settling.settle(context.session, settlements)


def complete(context, entry: Entry) -> bool:
    """Mark the entry's rows completed (kept until :func:`prune`).

    False when the claim had been taken away (released as stale) meanwhile:
    the rows are then left as they are.
    """
    return settle(context, [Settlement.completed(entry)])[0]


def retry_later(context, entry: Entry, error: str, delay: float) -> bool:
    """Put the entry's rows back to pending, due in ``delay`` seconds."""
    return settle(context, [Settlement.retry(entry, error, delay)])[0]


def fail(context, entry: Entry, error: str) -> bool:
    """Mark the entry's rows failed: permanent, kept and visible."""
    return settle(context, [Settlement.failed(entry, error)])[0]


def next_due(context) -> datetime.datetime | None:
    """When a claim can next take something (naive UTC), or None.

    The earliest ``next_attempt_at`` of pending rows, leaving out resources a
    worker holds right now (their rows wait for that claim to settle, which is
    the moment to look again): an idle worker sleeping until then neither spins
    nor oversleeps.
    """
    with db_api.CONTEXT_READER.using(context):
        return (context.session.query(sa.func.min(Journal.next_attempt_at))
                .filter(Journal.state == PENDING, ~processing_exists(Journal))
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

def _as_dict(row: Journal) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in Journal.__table__.columns:
        value = getattr(row, column.name)
        if isinstance(value, datetime.datetime):
            value = value.replace(tzinfo=datetime.timezone.utc).isoformat()
        out[column.name] = value
    return out


def _check_length(what: str, value: str, limit: int) -> None:
    if not value or len(value) > limit:
        raise ValueError(f"journal {what} must be 1..{limit} characters: {value!r}")
