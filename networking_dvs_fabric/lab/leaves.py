"""Simulated leaf switches: one hardware_vtep OVSDB server per leaf.

Each leaf is an ``ovsdb-server`` serving a database built from Open vSwitch's
``vtep.ovsschema`` on ``tcp:127.0.0.1:PORT``.  It holds the leaf's
``Physical_Switch`` row (with its VXLAN tunnel IP), its ``Physical_Port`` rows
and the ``Global`` row referencing the switch - what a real top-of-rack switch
speaking the hardware_vtep schema would expose to a controller.

The server runs in the foreground under :class:`~.procs.Daemon` (own session,
stopped by pid); its control socket, log and database file all live in the
leaf's work directory and the OVS_* directory variables point there too, so
nothing touches /var/run/openvswitch.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.procs import (Daemon, LabError, find_program, free_port,
                                             port_open,
                                             wait_until)

VTEP_SCHEMA = Path("/usr/share/openvswitch/vtep.ovsschema")
VSWITCH_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DB_NAME = "hardware_vtep"
START_TIMEOUT = 15.0
# sun_path is 108 bytes including the terminating NUL.
_MAX_UNIX_PATH = 107


def ovs_env(rundir: Path) -> dict[str, str]:
    """Environment that keeps every OVS program's files in ``rundir``."""
    env = dict(os.environ)
    for var in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"):
        env[var] = str(rundir)
    return env


class LeafSwitch:
    """One simulated leaf: a hardware_vtep ``ovsdb-server`` owned by pid."""

    def __init__(self, name: str, tunnel_ip: str, workdir: Path,
                 ports: Sequence[str], port: int = 0, dataplane: bool = False) -> None:
        self.name = name
        # With a dataplane the same server also holds the Open_vSwitch database of the
        # leaf's software switch, on a unix socket: ovs-vtep drives both through it.
        self.dataplane = dataplane
        self.tunnel_ip = tunnel_ip
        self.workdir = Path(workdir)
        self.ports = list(ports)
        self.port = int(port)
        self._daemon: Daemon | None = None
        # Set when the workdir is too deep for a unix socket path.
        self._ctl_dir: Path | None = None

    # -- paths ---------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.workdir / "vtep.db"

    @property
    def conf_db_path(self) -> Path:
        return self.workdir / "conf.db"

    @property
    def rundir(self) -> Path:
        """OVS_RUNDIR of the leaf: its control sockets and, with a dataplane, db.sock."""
        return self._ctl_dir if self._ctl_dir is not None else self.workdir

    @property
    def db_socket(self) -> str:
        return f"unix:{self.rundir / 'db.sock'}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "ovsdb-server.log"

    @property
    def ctl_path(self) -> Path:
        return self.rundir / "ovsdb-server.ctl"

    @property
    def ovsdb(self) -> str:
        if not self.port:
            raise LabError(f"leaf {self.name}: not started, no OVSDB port yet")
        return f"tcp:127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._daemon.pid if self._daemon is not None else None

    def running(self) -> bool:
        return self._daemon is not None and self._daemon.running()

    # -- lifecycle -----------------------------------------------------------
    def start(self, fresh: bool = False) -> "LeafSwitch":
        """Start the server (unless it already runs) and make sure the rows exist.

        ``fresh``: a new lab: the databases of an earlier one in the same directory
        go first (a restarted leaf, ``fresh`` False, keeps what it held).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        started_here = False
        if not self.running():
            if fresh:
                for path in (self.db_path, self.conf_db_path):
                    path.unlink(missing_ok=True)
            self._create_db()
            self._start_server()
            started_here = True
        try:
            self._ensure_rows()
        except BaseException:
            if started_here:
                self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
        if self._ctl_dir is not None:
            shutil.rmtree(self._ctl_dir, ignore_errors=True)
            self._ctl_dir = None

    def _create_db(self) -> None:
        if not VTEP_SCHEMA.exists():
            raise LabError(f"{VTEP_SCHEMA} missing; apt-get install openvswitch-vtep")
        self._create_one(self.db_path, VTEP_SCHEMA)
        if self.dataplane:
            self._create_one(self.conf_db_path, VSWITCH_SCHEMA)

    def _create_one(self, path: Path, schema: Path) -> None:
        if path.exists():
            return
        tmp = path.with_name(path.name + ".new")
        tmp.unlink(missing_ok=True)
        self._run([find_program("ovsdb-tool", "openvswitch-common"), "create", str(tmp),
                   str(schema)], "ovsdb-tool create")
        os.replace(tmp, path)
        # ovsdb-tool leaves its lock file behind, named after the temporary file.
        tmp.with_name(f".{tmp.name}.~lock~").unlink(missing_ok=True)

    def _start_server(self) -> None:
        if not self.port:
            self.port = free_port()
        elif port_open("127.0.0.1", self.port):
            raise LabError(f"leaf {self.name}: port {self.port} is already in use "
                           "by another process")
        if len(os.fsencode(self.workdir / "ovsdb-server.ctl")) > _MAX_UNIX_PATH or (
                self.dataplane and len(os.fsencode(self.workdir / "ovs-vswitchd.99999.ctl"))
                > _MAX_UNIX_PATH):
            if self._ctl_dir is None or not self._ctl_dir.is_dir():
                self._ctl_dir = Path(tempfile.mkdtemp(prefix=f"lab-{self.name}-"))
        self.ctl_path.unlink(missing_ok=True)
        argv = [
            find_program("ovsdb-server", "openvswitch-switch"),
            f"--remote=ptcp:{self.port}:127.0.0.1",
            f"--unixctl={self.ctl_path}",
            "--no-chdir",
            "-vconsole:info", "-vsyslog:off", "-vfile:off",
            str(self.db_path),
        ]
        if self.dataplane:
            argv[2:2] = [f"--remote=p{self.db_socket}"]
            argv.append(str(self.conf_db_path))
        self._daemon = Daemon(name=f"ovsdb-server-{self.name}", argv=argv,
                              log_path=self.log_path, env=ovs_env(self.workdir),
                              cwd=self.workdir)
        self._daemon.start()
        try:
            wait_until(self._answers, START_TIMEOUT,
                       f"ovsdb-server for leaf {self.name} on {self.ovsdb}",
                       alive=self._daemon)
        except LabError:
            self._daemon.stop()
            raise

    def _answers(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        out = subprocess.run(
            [find_program("ovsdb-client", "openvswitch-common"), "--timeout=2", "list-dbs",
             self.ovsdb], capture_output=True, text=True, timeout=5,
            env=ovs_env(self.workdir))
        return out.returncode == 0 and DB_NAME in out.stdout.split()

    def _ensure_rows(self) -> None:
        """Physical_Switch, its ports and Global.switches; safe to repeat."""
        args = ["--", "--may-exist", "add-ps", self.name,
                "--", "set", "Physical_Switch", self.name,
                f'tunnel_ips=["{self.tunnel_ip}"]']
        for port in self.ports:
            args += ["--", "--may-exist", "add-port", self.name, port]
        self.vtep_ctl(*args)

    def vtep_ctl(self, *args: str) -> str:
        """Run ``vtep-ctl`` against this leaf and return its stdout."""
        return self._run([find_program("vtep-ctl", "openvswitch-vtep"), f"--db={self.ovsdb}",
                          "--timeout=10", *args], "vtep-ctl")

    # -- read back as vtep-ctl shows it (demo, tests) ------------------------------
    def bindings(self, port: str) -> dict[int, str]:
        """VLAN -> logical switch name on one of this leaf's ports."""
        out = {}
        for line in self.vtep_ctl("list-bindings", self.name, port).splitlines():
            vlan, ls = line.split()
            out[int(vlan, 10)] = ls          # vtep-ctl zero-pads VLANs: "0742"
        return out

    def remote_entries(self, ls: str) -> dict[str, list[tuple[str, str]]]:
        """``list-remote-macs`` by section (ucast-mac-remote, mcast-mac-remote):
        (MAC or "unknown-dst", tunnel IP) pairs."""
        sections: dict[str, list[tuple[str, str]]] = {}
        current = ""
        for line in self.vtep_ctl("list-remote-macs", ls).splitlines():
            if line and not line.startswith(" "):
                current = line.strip()
                sections[current] = []
            elif " -> " in line:
                mac, _, locator = line.strip().partition(" -> ")
                sections.setdefault(current, []).append((mac, locator.split("/")[-1]))
        return sections

    def remote_macs(self, ls: str) -> dict[str, str]:
        """MAC -> tunnel IP of the logical switch's remote unicast MACs."""
        return dict(self.remote_entries(ls).get("ucast-mac-remote", []))

    def flood(self, ls: str) -> set[str]:
        """Tunnel IPs of the logical switch's unknown-dst flooding list."""
        return {ip for mac, ip in self.remote_entries(ls).get("mcast-mac-remote", [])
                if mac == "unknown-dst"}

    def _run(self, argv: list[str], what: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                 env=ovs_env(self.workdir))
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"leaf {self.name}: {what} timed out") from exc
        if out.returncode != 0:
            raise LabError(f"leaf {self.name}: {what} failed ({out.returncode}): "
                           f"{out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    # -- state file ----------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "name": self.name,
            "tunnel_ip": self.tunnel_ip,
            "workdir": str(self.workdir),
            "ports": list(self.ports),
            "port": self.port,
            "ovsdb": f"tcp:127.0.0.1:{self.port}" if self.port else None,
            "ctl_dir": str(self._ctl_dir) if self._ctl_dir else None,
            "dataplane": self.dataplane,
            "daemon": self._daemon.to_json() if self._daemon else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> "LeafSwitch":
        leaf = cls(data["name"], data["tunnel_ip"], Path(data["workdir"]),
                   data.get("ports", []), data.get("port", 0),
                   data.get("dataplane", False))
        if data.get("ctl_dir"):
            leaf._ctl_dir = Path(data["ctl_dir"])
        if data.get("daemon"):
            leaf._daemon = Daemon.from_json(data["daemon"])
        return leaf

    def __repr__(self) -> str:
        return (f"LeafSwitch({self.name!r}, {self.tunnel_ip!r}, ovsdb="
                f"{'tcp:127.0.0.1:%d' % self.port if self.port else None}, pid={self.pid})")


def lab_leaves(workdir: Path, dataplane: bool = False) -> list[LeafSwitch]:
    """The lab's leaves (not started): one per topology leaf, ports from attachments."""
    ports = topology.leaf_ports()
    base = Path(workdir) / "leaves"
    return [LeafSwitch(leaf.name, leaf.tunnel_ip, base / leaf.name,
                       ports.get(leaf.name, []), dataplane=dataplane)
            for leaf in topology.leaves()]


def start_lab_leaves(workdir: Path, dataplane: bool = False) -> list[LeafSwitch]:
    """Build and start the lab's three leaves under ``workdir/leaves/<name>``, with new
    databases (a new lab's Neutron knows nothing of an earlier lab's networks).

    If one fails to start, the ones already started are stopped again.
    """
    started: list[LeafSwitch] = []
    try:
        for leaf in lab_leaves(workdir, dataplane):
            started.append(leaf.start(fresh=True))
    except BaseException:
        for leaf in started:
            leaf.stop()
        raise
    return started

