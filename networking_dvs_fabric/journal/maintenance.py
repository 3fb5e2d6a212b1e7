"""Journal housekeeping: releasing the claims of gone workers, pruning settled rows.

Both run from the journal worker's housekeeping; ``store`` offers them again
(``store.release_stale_claims``, ``store.prune``).
"""
from __future__ import annotations

import datetime
from typing import Callable

import sqlalchemy as sa
from neutron_lib.db import api as db_api
from oslo_log import log as logging

from networking_dvs_fabric.journal.common import (COMPLETED, PENDING, PROCESSING, Journal,
                                                  parse_worker_id, utcnow)

LOG = logging.getLogger(__name__)


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
