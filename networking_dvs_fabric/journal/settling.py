"""Settling a batch of claims in one UPDATE: the verdicts behind ``store.settle``.

A ``Settlement`` says what becomes of one claimed ``Entry``: completed, failed
(with its error) or pending again (with its error and its own back-off delay).
:func:`settle` writes a whole batch of them with one ``UPDATE`` whose ``CASE``
branches give each row its new values, guarded so that only rows still
``processing`` under the entry's ``worker_id`` change: a claim that was released as
stale and taken by another worker meanwhile is not settled by its old holder.  The
UPDATE is the transaction's first statement (SQLite's "database is locked" pitfall,
see ``store``); only when it changed fewer rows than the batch has does a read
follow, to tell which entries were no longer held.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
from typing import Sequence

import sqlalchemy as sa
from oslo_log import log as logging

from networking_dvs_fabric.journal.common import (COMPLETED, FAILED, PENDING, PROCESSING,
                                                  Entry, Journal, utcnow)

LOG = logging.getLogger(__name__)

MAX_ERROR_CHARS = 8000


@dataclasses.dataclass(frozen=True)
class Settlement:
    """What becomes of one claimed entry; build it with the class methods."""

    entry: Entry
    state: str
    error: str | None = None
    delay: float = 0.0

    @classmethod
    def completed(cls, entry: Entry) -> "Settlement":
        """Done: the rows are kept, completed, until ``prune``."""
        return cls(entry, COMPLETED)

    @classmethod
    def failed(cls, entry: Entry, error: str) -> "Settlement":
        """Failed for good: kept and visible."""
        return cls(entry, FAILED, clip(error))

    @classmethod
    def retry(cls, entry: Entry, error: str, delay: float) -> "Settlement":
        """Pending again, due in ``delay`` seconds, one attempt more."""
        return cls(entry, PENDING, clip(error), max(0.0, delay))


def settle(session, settlements: Sequence[Settlement]) -> list[bool]:
    """Write every settlement in one UPDATE of ``session``'s open transaction.

    Returns, per settlement, whether its worker still held all the entry's rows
    (the rows it no longer held are left as they are).
    """
    if not settlements:
        return []
    now = utcnow()
    table = Journal.__table__
    col = table.c
    all_ids = [row_id for s in settlements for row_id in s.entry.row_ids]
    # Rows grouped by each value they get: one CASE branch per distinct value.
    by_state: dict[str, list[int]] = collections.defaultdict(list)
    by_error: dict[str, list[int]] = collections.defaultdict(list)
    by_due: dict[datetime.datetime, list[int]] = collections.defaultdict(list)
    by_worker: dict[str, list[int]] = collections.defaultdict(list)
    for item in settlements:
        ids = item.entry.row_ids
        by_state[item.state].extend(ids)
        by_worker[item.entry.worker_id].extend(ids)
        if item.error is not None:
            by_error[item.error].extend(ids)
        if item.state == PENDING:
            by_due[now + datetime.timedelta(seconds=item.delay)].extend(ids)

    values: dict[sa.Column, sa.ColumnElement] = {
        col.state: _case(col.state, by_state),
        col.updated_at: sa.literal(now, col.updated_at.type)}
    if by_error:
        values[col.last_error] = _case(col.last_error, by_error)
    retried = by_state.get(PENDING)
    if retried:
        values[col.next_attempt_at] = _case(col.next_attempt_at, by_due)
        values[col.attempts] = sa.case((col.id.in_(retried), col.attempts + 1),
                                       else_=col.attempts)
        values[col.claimed_by] = sa.case((col.id.in_(retried), sa.null()),
                                         else_=col.claimed_by)
        values[col.claimed_at] = sa.case((col.id.in_(retried), sa.null()),
                                         else_=col.claimed_at)
    # An empty worker_id (an entry made by hand) settles whoever holds the rows.
    held = sa.or_(*(col.id.in_(ids) if not worker else
                    sa.and_(col.id.in_(ids), col.claimed_by == worker)
                    for worker, ids in by_worker.items()))
    result = session.execute(table.update().where(held, col.state == PROCESSING)
                             .values(values))
    if result.rowcount == len(all_ids):
        return [True] * len(settlements)
    # Some rows were no longer held: the rows this UPDATE changed carry its time.
    # (Another transaction settling a row in the very same microsecond would be
    # counted as ours: a claim released as stale, taken and settled by another
    # worker all within it.)
    ours = {row[0] for row in session.execute(
        sa.select(col.id).where(col.id.in_(all_ids), col.updated_at == now))}
    out = []
    for item in settlements:
        entry = item.entry
        lost = [row_id for row_id in entry.row_ids if row_id not in ours]
        if lost:
            LOG.warning("journal: %(type)s %(id)s: %(n)d of %(total)d rows were no "
                        "longer held by %(worker)s", {
                            "type": entry.resource_type, "id": entry.resource_id,
                            "n": len(lost), "total": len(entry.row_ids),
                            "worker": entry.worker_id})
        out.append(not lost)
    return out


def clip(error: str) -> str:
    """The error text as stored: at most ``MAX_ERROR_CHARS``."""
    text = str(error)
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _case(column: sa.Column, groups: dict) -> sa.ColumnElement:
    """``CASE WHEN id IN (...) THEN value ... ELSE column END``."""
    col = Journal.__table__.c
    return sa.case(*((col.id.in_(ids), sa.literal(value, column.type))
                     for value, ids in groups.items()), else_=column)
