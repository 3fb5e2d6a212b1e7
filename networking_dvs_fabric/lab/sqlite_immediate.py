"""Lab only: make every SQLite transaction of a process take the write lock at BEGIN.

SQLite lets one process write at a time.  A transaction that has read and then
wants to write while another process holds the write lock cannot wait for it
(that would deadlock), so SQLite fails it at once with "database is locked" -
and Neutron does not retry that.  The lab's Neutron API and its periodic
workers (the journal workers) both write, so on SQLite every transaction starts
with ``BEGIN IMMEDIATE``: they queue for the lock (pysqlite's busy timeout)
instead of failing.  MariaDB, what production runs, needs none of this.

Installed by the ``sitecustomize`` the lab writes onto its Neutron processes'
import path when their database is SQLite (``lab/neutron.py``,
``write_lab_python``); nothing in the product imports this module.
"""
from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine

_installed = False


def _begin(conn) -> None:
    if conn.dialect.name != "sqlite" or "in_transaction" in conn.info:
        return
    dbapi = conn.connection.dbapi_connection
    if dbapi.isolation_level is not None:
        # pysqlite's own implicit BEGIN (deferred) would come first: turn it off.
        dbapi.isolation_level = None
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    # oslo.db emits its own plain BEGIN unless this says one was emitted (and clears
    # it at commit/rollback).
    conn.info["in_transaction"] = True


def install() -> None:
    global _installed
    if not _installed:
        event.listen(Engine, "begin", _begin, insert=True)
        _installed = True
