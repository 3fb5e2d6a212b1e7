"""Claiming a batch of resources, per database: the compare-and-set behind ``store.claim``.

``candidates`` reads, unlocked, which resources look claimable; ``claim_resources``
claims those it can of them in a constant number of statements (the caller's
transaction, or one of its own): on MariaDB by locking their live rows first
(``_flip_locked``), on SQLite by one compare-and-set UPDATE (``_flip_sqlite``).  A
resource another worker holds or is claiming at this moment is left out, never
claimed in part.  Why it is done this way is told in the module docstring of
``store``.
"""
from __future__ import annotations

import collections
import datetime
from typing import Collection, Sequence

import sqlalchemy as sa
from neutron_lib.db import api as db_api
from sqlalchemy import orm

from networking_dvs_fabric.journal.common import PENDING, PROCESSING, Entry, Journal

Resource = tuple[str, str]       # (resource_type, resource_id)
LIVE = (PENDING, PROCESSING)
_RESOURCE_INDEX = "ix_dvs_fabric_journal_resource"     # (resource_type, resource_id, state)


def candidates(context, now: datetime.datetime, limit: int,
               resource_types: Collection[str] | None) -> list[Resource]:
    """Resources with a ready pending row and none processing, oldest first.

    A cheap unlocked read: :func:`claim_resources` checks it again.
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


def processing_exists(outer) -> sa.ColumnElement[bool]:
    """EXISTS a processing row of the same resource as ``outer``'s row."""
    other = orm.aliased(Journal)
    return sa.exists().where(other.resource_type == outer.resource_type,
                             other.resource_id == outer.resource_id,
                             other.state == PROCESSING)


def claim_resources(context, worker_id: str, resources: Sequence[Resource],
                    now: datetime.datetime) -> list[Entry]:
    """Claim for ``worker_id`` every resource of ``resources`` that has a due pending
    row, none processing and no row another worker is claiming now; in the order of
    ``resources``.  Joins the caller's open transaction (``store.record_and_claim``).

    Raises ``Lost`` when the flip changed other rows than it had locked (it should
    not happen; the transaction must then be undone).
    """
    if not resources:
        return []
    with db_api.CONTEXT_WRITER.using(context):
        session = context.session
        if session.get_bind().dialect.name == "sqlite":
            claimed = _flip_sqlite(session, worker_id, resources, now)
        else:
            claimed = _flip_locked(session, worker_id, resources, now)
    by_resource: dict[Resource, list] = collections.defaultdict(list)
    for row in sorted(claimed, key=lambda row: row.id):
        by_resource[(row.resource_type, row.resource_id)].append(row)
    return [Entry(resource_type=rtype, resource_id=rid,
                  row_ids=tuple(row.id for row in rows),
                  operations=tuple(row.operation for row in rows),
                  attempts=max(row.attempts for row in rows),
                  first_created_at=min(row.created_at for row in rows),
                  worker_id=worker_id)
            for rtype, rid in dict.fromkeys(resources)
            if (rows := by_resource.get((rtype, rid)))]


def of_resources(columns, resources: Sequence[Resource]) -> sa.ColumnElement[bool]:
    """The rows of ``resources``: per type, ``resource_id IN (...)`` (index friendly)."""
    by_type: dict[str, list[str]] = collections.defaultdict(list)
    for rtype, rid in resources:
        by_type[rtype].append(rid)
    return sa.or_(*(sa.and_(columns.resource_type == rtype, columns.resource_id.in_(ids))
                    for rtype, ids in by_type.items()))


_ROW = (Journal.id, Journal.resource_type, Journal.resource_id, Journal.state,
        Journal.next_attempt_at, Journal.operation, Journal.attempts, Journal.created_at)


def _flip_locked(session, worker_id: str, resources: Sequence[Resource],
                 now: datetime.datetime) -> list:
    """MariaDB: lock what can be locked at once, read what is live, flip the whole ones.

    Three statements: the resources' live rows locked ``FOR UPDATE SKIP LOCKED``
    (the locked rows come back with their current values); a plain read of their live
    rows' ids (the transaction's first consistent read, so as of after the locks),
    which shows the rows someone else has locked; one UPDATE of the ready rows.
    """
    live = [Journal.state.in_(LIVE), of_resources(Journal, resources)]
    # Through the resource index, by hint and with no ORDER BY: a locking read locks
    # every row its scan passes, and MariaDB's optimizer prefers the (state, due)
    # index once a table holds more completed rows than live ones (EXPLAIN): that
    # would lock every live row of the journal, not those of these resources.
    locked = (session.query(*_ROW).with_hint(Journal, f"FORCE INDEX ({_RESOURCE_INDEX})",
                                             "mysql")
              .filter(*live).with_for_update(skip_locked=True).all())
    locked_ids = {row.id for row in locked}
    partly_locked = {(rtype, rid) for row_id, rtype, rid in
                     session.query(Journal.id, Journal.resource_type,
                                   Journal.resource_id).filter(*live)
                     if row_id not in locked_ids}
    rows_of: dict[Resource, list] = collections.defaultdict(list)
    for row in locked:
        rows_of[(row.resource_type, row.resource_id)].append(row)
    ready = [row for resource, rows in rows_of.items()
             if resource not in partly_locked
             and not any(row.state == PROCESSING for row in rows)
             and any(row.next_attempt_at <= now for row in rows)
             for row in rows]
    if not ready:
        return []
    table = Journal.__table__
    result = session.execute(
        table.update()
        .where(table.c.id.in_([row.id for row in ready]), table.c.state == PENDING)
        .values(state=PROCESSING, claimed_by=worker_id, claimed_at=now, updated_at=now))
    if result.rowcount != len(ready):
        raise Lost()
    return ready


def _flip_sqlite(session, worker_id: str, resources: Sequence[Resource],
                 now: datetime.datetime) -> list:
    """SQLite: one compare-and-set UPDATE first (the single writer makes it atomic),
    then one read of what it flipped."""
    table = Journal.__table__
    other = table.alias("other")
    mine = sa.and_(other.c.claimed_by == worker_id, other.c.claimed_at == now)
    same = sa.and_(other.c.resource_type == table.c.resource_type,
                   other.c.resource_id == table.c.resource_id)
    held = sa.exists().where(same, other.c.state == PROCESSING, ~mine)
    # Rows this UPDATE already flipped still count as due (SQLite's UPDATE sees its
    # own earlier changes while it runs).
    due = sa.exists().where(same, sa.or_(other.c.state == PENDING, mine),
                            other.c.next_attempt_at <= now)
    result = session.execute(
        table.update()
        .where(of_resources(table.c, resources), table.c.state == PENDING, ~held, due)
        .values(state=PROCESSING, claimed_by=worker_id, claimed_at=now, updated_at=now))
    if not result.rowcount:
        return []
    return session.query(*_ROW).filter(
        of_resources(Journal, resources), Journal.state == PROCESSING,
        Journal.claimed_by == worker_id, Journal.claimed_at == now).all()


class Lost(Exception):
    """The flip lost a race; the transaction must be undone."""
