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

Where: this module is the public API.  The per-database claim of one resource
(the "How" above) is in ``claiming``; ``release_stale_claims`` and ``prune`` are
in ``maintenance``; the table, states, ``Entry``, ``utcnow`` and
``parse_worker_id`` are in ``common``.  All are offered here as before.
"""
from __future__ import annotations

import datetime
import os
import secrets
import socket
from typing import Any, Collection

import sqlalchemy as sa
from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc
from oslo_log import log as logging

from networking_dvs_fabric.journal.claiming import Lost, candidates, claim_one, processing_exists

# Defined in modules below this one (no import circle), offered here as the public API.
from networking_dvs_fabric.journal.common import (COMPLETED, FAILED, PENDING,  # noqa: F401
                                                  PROCESSING, Entry, Journal, parse_worker_id,
                                                  utcnow)
from networking_dvs_fabric.journal.maintenance import prune, release_stale_claims  # noqa: F401

LOG = logging.getLogger(__name__)

MAX_ERROR_CHARS = 8000
# Candidates read per claimed resource wanted: some are lost to other workers.
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
    for resource_type, resource_id in candidates(context, now,
                                                 limit * _CANDIDATE_FACTOR,
                                                 resource_types):
        try:
            entry = claim_one(context, worker_id, resource_type, resource_id, now)
        except (db_exc.DBDeadlock, Lost):
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
