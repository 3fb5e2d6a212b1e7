"""The lab's SQL database: an existing local MariaDB/MySQL, or a private mariadbd.

:class:`MariaDB` hands out ``mysql+pymysql://USER:PASS@127.0.0.1:PORT/DB?charset=utf8mb4``.

* When a server already runs and root can log in over its unix socket
  (``/run/mysqld/mysqld.sock``) and it listens on 127.0.0.1, that server is
  used: only the lab's database and user are created there, and ``stop()``
  leaves the server alone.
* Otherwise a private server is initialised once with ``mariadb-install-db``
  under ``<workdir>/data`` and run in the foreground under
  :class:`~.procs.Daemon` on a free port bound to 127.0.0.1; ``stop()`` stops it
  by pid.  Neither the install nor the server reads /etc/mysql
  (``--no-defaults``), so nothing of the system server's files is touched.

Admin SQL goes over the unix socket as root with PyMySQL.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pymysql

from networking_dvs_fabric.lab.procs import (Daemon, LabError, free_port, port_open,
                                             wait_until)

SYSTEM_SOCKET = Path("/run/mysqld/mysqld.sock")
DEFAULT_DATABASE = "dvs_fabric_lab"
DEFAULT_USER = "dvs_fabric_lab"
START_TIMEOUT = 60.0
INSTALL_TIMEOUT = 180.0
STOP_TIMEOUT = 60.0
# sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 107
_INSTALLED_MARKER = ".lab-installed"
_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
# Hosts the lab user may connect from: TCP from 127.0.0.1 is matched as
# 'localhost' when the server resolves names and as '127.0.0.1' when it does not.
_USER_HOSTS = ("localhost", "127.0.0.1")

MODE_SYSTEM = "system"
MODE_PRIVATE = "private"


def _find_binary(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
        for directory in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def find_mariadbd() -> str | None:
    """Path of the MariaDB (or MySQL) server binary, None when not installed."""
    return _find_binary(("mariadbd", "mysqld"))


def _admin_connect(socket_path: Path, timeout: float = 3.0) -> pymysql.Connection:
    return pymysql.connect(unix_socket=str(socket_path), user="root", password="",
                           connect_timeout=timeout, autocommit=True,
                           charset="utf8mb4")


class MariaDB:
    """A database and user for the lab on a local MariaDB server."""

    def __init__(self, workdir: Path, database: str = DEFAULT_DATABASE,
                 user: str = DEFAULT_USER, password: str | None = None,
                 port: int = 0, system_socket: Path | None = SYSTEM_SOCKET) -> None:
        for what, value in (("database", database), ("user", user)):
            if not _NAME_RE.match(value):
                raise LabError(f"MariaDB {what} name {value!r}: use letters, digits, _")
        self.workdir = Path(workdir)
        self.database = database
        self.user = user
        self.password = password or secrets.token_hex(16)
        self.port = int(port)
        # None: never use an existing server, always run a private one.
        self.system_socket = Path(system_socket) if system_socket else None
        self.mode: str | None = None
        self.socket: Path | None = None
        self._socket_dir: Path | None = None
        self._daemon: Daemon | None = None

    # -- public properties -----------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise LabError("MariaDB not started: no port yet")
        return (f"mysql+pymysql://{quote(self.user, safe='')}:"
                f"{quote(self.password, safe='')}@127.0.0.1:{self.port}/"
                f"{self.database}?charset=utf8mb4")

    @property
    def pid(self) -> int | None:
        """The private server's pid; None when an existing server is used."""
        if self.mode == MODE_PRIVATE and self._daemon is not None:
            return self._daemon.pid
        return None

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mariadbd.log"

    def running(self) -> bool:
        if self.mode == MODE_PRIVATE:
            return self._daemon is not None and self._daemon.running()
        return self.mode == MODE_SYSTEM

    # -- lifecycle -------------------------------------------------------------
    def start(self, fresh: bool = False) -> "MariaDB":
        """Make the database reachable at :attr:`url`.

        Idempotent: a private server that still runs is reused.  ``fresh=True``
        drops and recreates the lab's database (never anything else).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        started_here = False
        if self.mode == MODE_PRIVATE and self.running():
            pass
        elif self.mode != MODE_PRIVATE and self._try_system():
            self.mode = MODE_SYSTEM
        else:
            if self.mode == MODE_SYSTEM:
                # The server used before is gone: a private one gets its own port.
                self.port, self.socket = 0, None
            self._start_private()
            started_here = True
        try:
            self._ensure_database(fresh)
        except BaseException:
            if started_here:
                self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the private server, if this object runs one; never a system server."""
        if self.mode == MODE_PRIVATE and self._daemon is not None:
            self._daemon.stop(timeout=STOP_TIMEOUT)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def admin_connect(self) -> pymysql.Connection:
        """A root connection over the unix socket (autocommit)."""
        if self.socket is None:
            raise LabError("MariaDB not started")
        return _admin_connect(self.socket)

    # -- existing server -------------------------------------------------------
    def _try_system(self) -> bool:
        sock = self.system_socket
        if sock is None or not sock.exists():
            return False
        try:
            with _admin_connect(sock) as conn, conn.cursor() as cur:
                cur.execute("SELECT @@port, @@skip_networking")
                port, skip_networking = cur.fetchone()
        except pymysql.MySQLError:
            return False
        if skip_networking or not port or not port_open("127.0.0.1", int(port)):
            return False
        self.socket = sock
        self.port = int(port)
        return True

    # -- private server --------------------------------------------------------
    def _start_private(self) -> None:
        mariadbd = find_mariadbd()
        if mariadbd is None:
            raise LabError("mariadbd not found: apt-get install mariadb-server")
        basedir = str(Path(mariadbd).resolve().parent.parent)
        self.mode = MODE_PRIVATE
        self._install(mariadbd, basedir)
        if not self.port:
            self.port = free_port()
        elif port_open("127.0.0.1", self.port):
            raise LabError(f"MariaDB: port {self.port} is already in use")
        self.socket = self._socket_path()
        self.socket.unlink(missing_ok=True)
        argv = [
            mariadbd, "--no-defaults",
            f"--basedir={basedir}",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.workdir / 'mariadbd.pid'}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")
        self._daemon = Daemon(name="mariadbd", argv=argv, log_path=self.log_path,
                              cwd=self.workdir)
        self._daemon.start()
        try:
            wait_until(self._accepts, START_TIMEOUT,
                       f"private mariadbd on 127.0.0.1:{self.port}", alive=self._daemon)
        except BaseException:
            self.stop()
            raise

    def _accepts(self) -> bool:
        with _admin_connect(self.socket, timeout=2) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        return port_open("127.0.0.1", self.port)

    def _install(self, mariadbd: str, basedir: str) -> None:
        if (self.datadir / _INSTALLED_MARKER).exists():
            return
        install = _find_binary(("mariadb-install-db", "mysql_install_db"))
        if install is None:
            raise LabError("mariadb-install-db not found: apt-get install mariadb-server")
        if self.datadir.exists():
            # A half-finished earlier attempt: start over.
            shutil.rmtree(self.datadir)
        argv = [install, "--no-defaults", f"--basedir={basedir}",
                f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
                "--skip-test-db", "--skip-name-resolve"]
        if os.geteuid() == 0:
            argv.append("--user=root")
        log = self.workdir / "mariadb-install-db.log"
        try:
            with open(log, "wb") as out:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.workdir,
                                      timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"mariadb-install-db timed out; see {log}") from exc
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise LabError(f"mariadb-install-db failed ({proc.returncode}):\n{tail}")
        (self.datadir / _INSTALLED_MARKER).write_text("")

    def _socket_path(self) -> Path:
        preferred = self.workdir / "mysqld.sock"
        if len(os.fsencode(preferred)) <= _MAX_UNIX_PATH:
            return preferred
        if self._socket_dir is None or not self._socket_dir.is_dir():
            self._socket_dir = Path(tempfile.mkdtemp(prefix="lab-mysql-"))
        return self._socket_dir / "mysqld.sock"

    # -- database and user -----------------------------------------------------
    def _ensure_database(self, fresh: bool) -> None:
        db = self.database
        with self.admin_connect() as conn, conn.cursor() as cur:
            if fresh:
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
            for host in _USER_HOSTS:
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s",
                            (self.user, host, self.password))
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s",
                            (self.user, host, self.password))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@%s",
                            (self.user, host))
        # Prove the URL's credentials work over TCP.
        try:
            pymysql.connect(host="127.0.0.1", port=self.port, user=self.user,
                            password=self.password, database=db,
                            connect_timeout=5).close()
        except pymysql.MySQLError as exc:
            raise LabError(f"MariaDB: cannot log in as {self.user} on "
                           f"127.0.0.1:{self.port}: {exc}") from exc

    def drop(self) -> None:
        """Remove the lab's database and user from a system server (nothing else)."""
        if self.mode != MODE_SYSTEM:
            return
        try:
            with self.admin_connect() as conn, conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
                for host in _USER_HOSTS:
                    cur.execute("DROP USER IF EXISTS %s@%s", (self.user, host))
        except (pymysql.MySQLError, LabError, OSError):
            pass     # the server is away: nothing of ours can be reached to drop

    # -- state file ------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "workdir": str(self.workdir),
            "database": self.database,
            "user": self.user,
            "password": self.password,
            "port": self.port,
            "url": self.url if self.port else None,
            "socket": str(self.socket) if self.socket else None,
            "socket_dir": str(self._socket_dir) if self._socket_dir else None,
            "system_socket": str(self.system_socket) if self.system_socket else None,
            "daemon": self._daemon.to_json() if self._daemon else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> "MariaDB":
        db = cls(Path(data["workdir"]), database=data["database"], user=data["user"],
                 password=data["password"], port=data.get("port", 0),
                 system_socket=(Path(data["system_socket"])
                                if data.get("system_socket") else None))
        db.mode = data.get("mode")
        db.socket = Path(data["socket"]) if data.get("socket") else None
        db._socket_dir = Path(data["socket_dir"]) if data.get("socket_dir") else None
        if data.get("daemon"):
            db._daemon = Daemon.from_json(data["daemon"])
        return db

    def __repr__(self) -> str:
        return (f"MariaDB(mode={self.mode!r}, port={self.port}, "
                f"database={self.database!r}, pid={self.pid})")
