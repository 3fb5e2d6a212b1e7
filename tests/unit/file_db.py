"""Neutron's database in an SQLite file, for tests whose threads use it at once.

Neutron's unit-test database is one in-memory SQLite connection, which threads
must not share (one thread's commit or rollback would end another's transaction).
Here every session gets a connection of its own to a file, as every process and
thread gets its own from a real server; every transaction takes SQLite's write
lock at BEGIN (``BEGIN IMMEDIATE``, as the lab's SQLite does), so writers queue for
it instead of failing with "database is locked".  The schema is made from the
models (Neutron's and the project's); it goes with the test's temporary directory.
"""
from __future__ import annotations

from pathlib import Path

from neutron.db.migration.models import head  # noqa: F401 - every model, for create_all
from neutron_lib import fixture as lib_fixtures
from neutron_lib.db import model_base
from oslo_db.sqlalchemy import engines
from sqlalchemy import event

import networking_dvs_fabric.db.models  # noqa: F401 - our tables in the metadata


def _begin_immediate(conn) -> None:
    if "in_transaction" in conn.info:
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    conn.info["in_transaction"] = True      # oslo.db's own BEGIN then stays away


class FileDatabase(lib_fixtures.SqlFixture):
    """Installs the file database as Neutron's for the test (restored after)."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.path = Path(directory) / "neutron.sqlite"

    def _init_resources(self) -> None:
        self.engine = engines.create_engine(f"sqlite:///{self.path}?timeout=30")
        event.listen(self.engine, "begin", _begin_immediate, insert=True)
        model_base.BASEV2.metadata.create_all(self.engine)
        self.addCleanup(self.engine.dispose)
