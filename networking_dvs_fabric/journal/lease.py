"""A lease in the database: one holder at a time across processes and hosts.

The vCenter watcher must run exactly once per vCenter although every
``neutron-periodic-workers`` process starts one.  Each tries :func:`acquire`
every few seconds; the holder renews it, the others stand by.  When the holder
dies its lease expires after ``ttl`` seconds and the next try takes it over.
Compare-and-set updates, so it is safe on MariaDB and SQLite alike.
"""
from __future__ import annotations

import datetime

from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc

from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal.store import utcnow

Lease = models.Lease


@db_api.retry_if_session_inactive()
def acquire(context, name: str, holder: str, ttl: float) -> bool:
    """Take or renew the lease; True when ``holder`` has it for the next ``ttl`` s."""
    now = utcnow()
    expires = now + datetime.timedelta(seconds=ttl)
    with db_api.CONTEXT_WRITER.using(context):
        count = (context.session.query(Lease)
                 .filter(Lease.name == name,
                         (Lease.holder == holder) | (Lease.expires_at < now))
                 .update({Lease.holder: holder, Lease.expires_at: expires},
                         synchronize_session=False))
    if count:
        return True
    try:
        with db_api.CONTEXT_WRITER.using(context):
            if context.session.query(Lease.name).filter(Lease.name == name).first():
                return False            # held by someone else, not expired
            context.session.add(Lease(name=name, holder=holder, expires_at=expires))
    except db_exc.DBDuplicateEntry:
        return False                    # another process created it just now
    return True


@db_api.retry_if_session_inactive()
def release(context, name: str, holder: str) -> None:
    """Give the lease up at once (a clean stop), if ``holder`` still has it."""
    with db_api.CONTEXT_WRITER.using(context):
        (context.session.query(Lease)
         .filter(Lease.name == name, Lease.holder == holder)
         .delete(synchronize_session=False))


def holder_of(context, name: str) -> tuple[str, datetime.datetime] | None:
    with db_api.CONTEXT_READER.using(context):
        row = context.session.query(Lease.holder, Lease.expires_at).filter(
            Lease.name == name).first()
    return (row.holder, row.expires_at) if row else None
