"""Start and stop the lab's daemons: free ports, pid files, waiting, stop by pid.

Every daemon the lab starts is started in its own session (so its process
group id is its pid) and is stopped through that pid only - never by name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence


class LabError(Exception):
    """A lab component could not be started or reached; the message says which."""


def free_port(host: str = "127.0.0.1", udp: bool = False) -> int:
    """A TCP (or UDP) port that is free on ``host`` right now."""
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.1, alive: "Daemon | None" = None) -> None:
    """Call ``check`` until it returns true; raise LabError naming ``what``.

    With ``alive`` given, give up at once when that daemon has died and show
    the tail of its log.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if alive is not None and not alive.running():
            raise LabError(f"{what}: {alive.name} exited early; last log lines:\n"
                           f"{alive.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"\nlast log lines:\n{alive.log_tail()}" if alive else ""
            raise LabError(f"{what}: not ready after {timeout:.0f} s{tail}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def find_program(name: str, package: str) -> str:
    """Path of ``name`` (PATH, then the sbin/bin dirs root's PATH may lack)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}")
         if os.access(p, os.X_OK)), None)
    if path is None:
        raise LabError(f"{name} not found; apt-get install {package}")
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass
class Daemon:
    """One long-running process of the lab, identified by its pid."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    pid: int | None = None
    _popen: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    def start(self) -> "Daemon":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                list(self.argv), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, cwd=self.cwd,
                start_new_session=True)
        self.pid = self._popen.pid
        return self

    def running(self) -> bool:
        if self.pid is None:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        return pid_alive(self.pid) and self._marker() in _cmdline(self.pid)

    def _marker(self) -> str:
        argv = list(self.argv)
        if argv[1:3] == ["netns", "exec"] and len(argv) > 4:
            # ``ip netns exec NS PROGRAM ...`` execs PROGRAM: that is what runs.
            return os.path.basename(argv[4])
        if os.path.basename(argv[0]) == "nsenter":
            # ``nsenter --OPTION... PROGRAM ...`` execs PROGRAM.
            program = next((arg for arg in argv[1:] if not arg.startswith("-")), argv[0])
            return os.path.basename(program)
        return os.path.basename(argv[0])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the daemon's process group by its pid, SIGKILL if it lingers."""
        if self.pid is None:
            return
        # The program gone is not enough: a child it left in its group (a start
        # script's VM) is stopped with the group.
        if not self.running() and not self._group_alive():
            self._reap()
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            except PermissionError:
                os.kill(self.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._lingers():
                self._reap()
                time.sleep(0.05)
            if not self._lingers():
                break
        self._reap()

    def _lingers(self) -> bool:
        """Something of the daemon is left: a process of its group, or the program
        itself not reaped yet.  A multi-threaded program (the Go simulator) can have
        its main thread a zombie while its last threads still exit: the group looks
        gone, but it cannot be reaped yet, ``running()`` still says True and a restart
        would start nothing."""
        return self._group_alive() or self.running()

    def _group_alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Only zombies left in the group count as gone.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pid and fields[0] != "Z":
                return True
        return False

    def _reap(self) -> None:
        if self._popen is not None:
            try:
                self._popen.wait(timeout=0)
            except subprocess.TimeoutExpired:
                pass
        elif self.pid is not None:
            # Started by this process but known only by pid (from a state file).
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def to_json(self) -> dict:
        return {"name": self.name, "pid": self.pid, "argv": list(self.argv),
                "log": str(self.log_path)}

    @classmethod
    def from_json(cls, data: dict) -> "Daemon":
        return cls(name=data["name"], argv=data["argv"], log_path=Path(data["log"]),
                   pid=data["pid"])


def write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
