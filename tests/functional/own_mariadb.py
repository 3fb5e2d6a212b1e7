"""A MariaDB database of a test module's own: made fresh, dropped at the end.

On the system server (where one runs) the database and its user are new and go
at the end; otherwise a private ``mariadbd`` is started and stopped by pid.
"""
from __future__ import annotations

import contextlib
import secrets
from typing import Iterator

import pytest

from networking_dvs_fabric.lab import mariadb as lab_mariadb
from networking_dvs_fabric.lab.procs import pid_alive


@contextlib.contextmanager
def own_database(tmp_path_factory: pytest.TempPathFactory,
                 tag: str) -> Iterator[lab_mariadb.MariaDB]:
    workdir = tmp_path_factory.mktemp(f"{tag}-mariadb")
    name = f"dvsf_{tag}_{secrets.token_hex(3)}"
    db = lab_mariadb.MariaDB(workdir, database=name, user=name)
    db.start(fresh=True)
    server_pid = db.pid
    try:
        yield db
    finally:
        db.drop()          # from a system server; a private one goes whole
        db.stop()
    if server_pid is not None:
        assert not pid_alive(server_pid), f"private mariadbd {server_pid} still running"
