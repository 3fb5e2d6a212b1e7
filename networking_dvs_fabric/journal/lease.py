"""A lease in the database: one holder at a time across processes and hosts.

The vCenter watcher must run exactly once per vCenter although every
``neutron-periodic-workers`` process starts one, and only one process at a time
runs the fabric worker's full sync.  Each tries :func:`acquire` now and then;
the holder renews it, the others stand by.  When the holder dies its lease
expires after ``ttl`` seconds and the next try takes it over.  Compare-and-set
updates, so it is safe on MariaDB and SQLite alike.

A holder busy with one long call (a full read of vCenter) renews from a thread of
its own, :class:`Renewer`.  A holder that may have lost its lease without
noticing (its renewals did not reach the database) must not write after the next
holder started: :func:`check_held`, inside the holder's write transaction, fences
the write - it locks the lease row, so a takeover waits for that transaction, and
refuses once the lease is expired or someone else's.  (Expiry is judged by each
process's clock: the hosts' clocks must agree to well within ``ttl``.)
"""
from __future__ import annotations

import datetime
import logging
import threading

from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc

from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal.store import utcnow

LOG = logging.getLogger(__name__)

Lease = models.Lease


class LeaseLost(n_exc.NeutronException):
    message = "lease %(name)s is no longer held by %(holder)s"


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


def check_held(context, name: str, holder: str) -> None:
    """Raise :class:`LeaseLost` unless ``holder`` has the lease now.

    Call it first inside the transaction of a write only the holder may make: the
    lease row stays locked until that transaction ends (``SELECT ... FOR UPDATE``;
    SQLite's single writer does the same), so another process's :func:`acquire`
    cannot take the lease over in the middle, and every fenced write of the old
    holder lands before any write of the new one.
    """
    with db_api.CONTEXT_WRITER.using(context):
        row = (context.session.query(Lease.holder, Lease.expires_at)
               .filter(Lease.name == name).with_for_update().first())
    if row is None or row.holder != holder or row.expires_at <= utcnow():
        raise LeaseLost(name=name, holder=holder)


class Renewer:
    """Keeps ``holder``'s lease renewed from a thread while the holder works.

    Renews every ``interval`` seconds (well below ``ttl``); when a renewal finds the
    lease taken by someone else, ``lost`` is set and the thread ends.  A renewal
    that fails (the database away) is tried again at the next interval; should the
    lease expire meanwhile, the holder's fenced writes (:func:`check_held`) refuse.
    Use as a context manager around the work: the thread stops at its end.
    """

    def __init__(self, name: str, holder: str, ttl: float, interval: float) -> None:
        if not 0 < interval < ttl:
            raise ValueError(f"renew interval {interval} must be above 0 and below the "
                             f"ttl {ttl}")
        self.name, self.holder, self.ttl, self.interval = name, holder, ttl, interval
        self.lost = threading.Event()
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Renewer:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"lease-renewer {self.name}")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        context = n_context.get_admin_context()
        while not self._stop.wait(self.interval):
            try:
                if not acquire(context, self.name, self.holder, self.ttl):
                    LOG.warning("lease %(name)s: %(holder)s lost it to another holder",
                                {"name": self.name, "holder": self.holder})
                    self.lost.set()
                    return
                self.renewals += 1
            except Exception as exc:  # noqa: BLE001 - the database may be restarting
                LOG.warning("lease %(name)s: renewal by %(holder)s failed (%(err)s); "
                            "trying again in %(s).1f s", {"name": self.name,
                                                         "holder": self.holder,
                                                         "err": exc, "s": self.interval})
