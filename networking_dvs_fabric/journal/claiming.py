"""Claiming one resource, per database: the compare-and-set behind ``store.claim``.

``candidates`` reads, unlocked, which resources look claimable; ``claim_one`` claims
one of them in its own transaction, by locking its rows first (MariaDB,
``_flip_locked``) or by one compare-and-set UPDATE (SQLite, ``_flip_sqlite``), and
raises ``Lost`` when another worker won.  Why it is done this way is told in the
module docstring of ``store``.
"""
from __future__ import annotations

import datetime
from typing import Collection

import sqlalchemy as sa
from neutron_lib.db import api as db_api
from sqlalchemy import orm

from networking_dvs_fabric.journal.common import PENDING, PROCESSING, Entry, Journal


def candidates(context, now: datetime.datetime, limit: int,
               resource_types: Collection[str] | None) -> list[tuple[str, str]]:
    """Resources with a ready pending row and none processing, oldest first.

    A cheap unlocked read: :func:`claim_one` checks it again under lock.
    """
    first_id = sa.func.min(Journal.id).label("first_id")
    with db_api.CONTEXT_READER.using(context):
        query = (context.session.query(Journal.resource_type, Journal.resource_id,
                                       first_id)
                 .filter(Journal.state == PENDING, Journal.next_attempt_at <= now,
                         ~processing_exists(Journal)))
        if resource_types is not None:
            query = query.filter(Journal.resource_type.in_(list(resource_types)))
        found = (query.group_by(Journal.resource_type, Journal.resource_id)
                 .order_by(first_id).limit(limit).all())
    return [(rtype, rid) for rtype, rid, _ in found]


def processing_exists(outer, besides: Collection[int] = ()) -> sa.ColumnElement[bool]:
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


def claim_one(context, worker_id: str, resource_type: str, resource_id: str,
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
               ~processing_exists(table.c, besides=ready))
        .values(state=PROCESSING, claimed_by=worker_id, claimed_at=now, updated_at=now))
    if result.rowcount != len(ready):
        # Someone else got there first: undo this resource entirely.
        raise Lost()
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


class Lost(Exception):
    """The compare-and-set lost a race; the resource's transaction is undone."""
