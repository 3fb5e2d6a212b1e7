"""A private RabbitMQ node for the lab's Neutron and its agents (Debian's ``rabbitmq-server``).

Everything of the node lives in its work directory: configuration, Mnesia data, logs,
the Erlang cookie (``HOME``).  It listens on 127.0.0.1 only, on ports of its own (AMQP,
Erlang distribution), and registers with an ``epmd`` the lab starts itself on a port of
its own - the shared one on 4369 would outlive the lab.  Both are :class:`Daemon`\\ s:
stopped by pid, never by name.  Nothing under /etc/rabbitmq is read.

``transport_url`` is what neutron.conf and the agents' configuration name.
"""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from networking_dvs_fabric.lab.procs import (Daemon, LabError, find_program, free_port,
                                             port_open, wait_until)

USER = "lab"
START_TIMEOUT = 90.0        # a cold Erlang VM on a busy 2-core machine: ~10-20 s
RABBIT_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")   # Debian's, not the su wrapper
PACKAGE = "rabbitmq-server"


def amqp_url(transport_url: str) -> str:
    """oslo.messaging's ``rabbit://`` URL as kombu (py-amqp) spells it."""
    return "amqp://" + transport_url.split("://", 1)[1]


def _server_program() -> str:
    if os.access(RABBIT_SERVER, os.X_OK):
        return str(RABBIT_SERVER)
    raise LabError(f"{RABBIT_SERVER} not found; apt-get install {PACKAGE}")


class RabbitMQ:
    """One node; ``start()`` waits until a client can log in over AMQP."""

    def __init__(self, workdir: Path, node: str = "lab", password: str | None = None,
                 port: int = 0, dist_port: int = 0, epmd_port: int = 0) -> None:
        self.workdir = Path(workdir)
        self.node = node
        self.password = password or secrets.token_hex(12)
        self.port, self.dist_port, self.epmd_port = port, dist_port, epmd_port
        self._epmd: Daemon | None = None
        self._server: Daemon | None = None

    @property
    def transport_url(self) -> str:
        return f"rabbit://{USER}:{self.password}@127.0.0.1:{self.port}/"

    @property
    def pids(self) -> list[int]:
        return [d.pid for d in (self._server, self._epmd) if d is not None and d.pid]

    # -- start and stop ----------------------------------------------------------
    def start(self, fresh: bool = False) -> "RabbitMQ":
        """Start the node; ``fresh`` first removes the data of an earlier node here
        (its users were made with another password: the new one would be refused)."""
        server_program = _server_program()
        epmd_program = find_program("epmd", "erlang-base")
        if fresh:
            shutil.rmtree(self.workdir / "mnesia", ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("port", "dist_port", "epmd_port"):
            wanted = getattr(self, name)
            if wanted and port_open("127.0.0.1", wanted):
                raise LabError(f"RabbitMQ: {name.replace('_', ' ')} {wanted} on 127.0.0.1 "
                               "is taken by another program")
        self.port = self.port or free_port()
        self.dist_port = self.dist_port or free_port()
        self.epmd_port = self.epmd_port or free_port()
        env = self._environment()
        logs = self.workdir / "log"
        try:
            self._epmd = Daemon("epmd", [epmd_program, "-port", str(self.epmd_port),
                                         "-address", "127.0.0.1"],
                                logs / "epmd.log", env=env).start()
            wait_until(lambda: port_open("127.0.0.1", self.epmd_port), 10.0,
                       f"epmd on 127.0.0.1:{self.epmd_port}", alive=self._epmd)
            self._server = Daemon("rabbitmq", [server_program], logs / "rabbitmq-server.log",
                                  env=env, cwd=self.workdir).start()
            wait_until(self._accepts_login, START_TIMEOUT,
                       f"RabbitMQ node {self.node} on 127.0.0.1:{self.port}", interval=0.5,
                       alive=self._server)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the node, then its epmd (each by pid); the data directory stays."""
        for daemon in (self._server, self._epmd):
            if daemon is not None:
                daemon.stop(timeout=30.0)

    def running(self) -> bool:
        return self._server is not None and self._server.running()

    def _accepts_login(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        import kombu
        with kombu.Connection(amqp_url(self.transport_url), connect_timeout=3) as conn:
            conn.connect()
        return True

    def _environment(self) -> dict[str, str]:
        """The node's files in the work directory, its ports, no /etc/rabbitmq."""
        base = self.workdir
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"default_user = {USER}\n"
            f"default_pass = {self.password}\n"
            "log.console = false\n"
            "log.file.level = info\n")
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(base),                        # the Erlang cookie goes here
            "RABBITMQ_NODENAME": f"{self.node}@localhost",
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Erlang distribution (rabbitmqctl's way in) on loopback only, too.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface "
                                                   "{127,0,0,1}",
        })
        return env

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "log" / f"{self.node}@localhost.log"
        if not path.exists():
            return self._server.log_tail(lines) if self._server else "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- state file --------------------------------------------------------------
    def to_json(self) -> dict:
        return {"workdir": str(self.workdir), "node": self.node, "password": self.password,
                "port": self.port, "dist_port": self.dist_port, "epmd_port": self.epmd_port,
                "transport_url": self.transport_url if self.port else None,
                "server": self._server.to_json() if self._server else None,
                "epmd": self._epmd.to_json() if self._epmd else None}

    @classmethod
    def from_json(cls, data: dict) -> "RabbitMQ":
        node = cls(Path(data["workdir"]), node=data["node"], password=data["password"],
                   port=data["port"], dist_port=data["dist_port"],
                   epmd_port=data["epmd_port"])
        if data.get("server"):
            node._server = Daemon.from_json(data["server"])
        if data.get("epmd"):
            node._epmd = Daemon.from_json(data["epmd"])
        return node

    def remove(self) -> None:
        """Delete the node's work directory (stopped first)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
