"""The lab's MariaDB: a private mariadbd owned by pid, or an existing server."""
from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pymysql
import pytest

from networking_dvs_fabric.lab import mariadb as lab_mariadb
from networking_dvs_fabric.lab.procs import pid_alive

pytestmark = pytest.mark.skipif(
    lab_mariadb.find_mariadbd() is None,
    reason="mariadbd not installed (apt-get install mariadb-server)")


def _connect(url: str) -> pymysql.Connection:
    parts = urlsplit(url)
    assert parts.scheme == "mysql+pymysql"
    assert parts.query == "charset=utf8mb4"
    return pymysql.connect(host=parts.hostname, port=parts.port,
                           user=unquote(parts.username),
                           password=unquote(parts.password),
                           database=parts.path.lstrip("/"), charset="utf8mb4",
                           autocommit=True)


def _tables(url: str) -> list[str]:
    with _connect(url) as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        return sorted(row[0] for row in cur.fetchall())


def test_private_server_restart_existing_server_and_stop(tmp_path):
    # Deeper than a unix socket path may be: the socket goes to a short tmp dir.
    workdir = tmp_path / ("d" * 60) / ("e" * 60)
    # system_socket=None: always a private server, even if one runs on the box.
    db = lab_mariadb.MariaDB(workdir, system_socket=None)
    db.start()
    socket_dir = db.socket.parent
    try:
        assert db.mode == lab_mariadb.MODE_PRIVATE
        assert len(str(db.socket)) <= 107 and workdir not in db.socket.parents
        pid = db.pid
        assert pid and pid_alive(pid)
        assert db.url.startswith(f"mysql+pymysql://{db.user}:")
        assert f"@127.0.0.1:{db.port}/{db.database}?charset=utf8mb4" in db.url

        with _connect(db.url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE ports (id VARCHAR(36) PRIMARY KEY, name TEXT)")
            cur.execute("INSERT INTO ports VALUES (%s, %s)", ("p1", "héllo"))

        # Stop and start again from the state file: data, port and password kept.
        state = json.loads(json.dumps(db.to_json()))
        db.stop()
        assert not pid_alive(pid)
        db = lab_mariadb.MariaDB.from_json(state)
        db.start()
        assert db.pid != pid and db.url == state["url"]
        with _connect(db.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM ports")
            assert cur.fetchall() == (("héllo",),)

        # Treat the private server as "the system server" for a second lab.
        other = lab_mariadb.MariaDB(tmp_path / "other", database="other_lab",
                                    user="other_lab", system_socket=db.socket)
        other.start()
        assert other.mode == lab_mariadb.MODE_SYSTEM and other.pid is None
        assert other.port == db.port
        with _connect(other.url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (i INT)")
        other.start(fresh=True)  # drop-and-recreate only its own database
        assert _tables(other.url) == []
        assert _tables(db.url) == ["ports"]
        other.stop()  # must not stop the server it did not start
        assert pid_alive(db.pid)
        assert _tables(db.url) == ["ports"]
    finally:
        pid = db.pid
        db.stop()
    assert not pid_alive(pid)
    assert not socket_dir.exists()
