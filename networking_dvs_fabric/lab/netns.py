"""Network namespaces, veth pairs and ping, for the lab's dataplane.

Thin wrappers over iproute2, ethtool and iputils' ping that raise ``LabError``
naming the command that failed.  Everything runs as root; ``unavailable()`` says
why the dataplane cannot run on this machine (not root, no ``ip netns``, no TUN
device, a missing program) or returns None.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

from networking_dvs_fabric.lab.procs import LabError, find_program, pid_alive

PROGRAMS = {"ip": "iproute2", "ethtool": "ethtool", "ping": "iputils-ping",
            "ovs-vswitchd": "openvswitch-switch", "ovs-vsctl": "openvswitch-switch",
            "vtep-ctl": "openvswitch-vtep"}
OVS_VTEP = Path("/usr/share/openvswitch/scripts/ovs-vtep")
SYSTEM_PYTHON = Path("/usr/bin/python3")     # ovs-vtep needs Debian's python3-openvswitch


def tool(name: str) -> str:
    return find_program(name, PROGRAMS.get(name, name))


def unavailable() -> str | None:
    """Why network namespaces (and so the dataplane) cannot be used here; None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (the lab runs as an ordinary user)"
    for name, package in PROGRAMS.items():
        try:
            tool(name)
        except LabError:
            return f"{name} is missing (Debian package {package})"
    if not OVS_VTEP.exists():
        return f"{OVS_VTEP} is missing (Debian package openvswitch-vtep)"
    if subprocess.run([str(SYSTEM_PYTHON), "-c", "import ovs.vlog"],
                      capture_output=True).returncode != 0:
        return "ovs-vtep needs the python3-openvswitch package for /usr/bin/python3"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (OVS's userspace datapath needs TAP devices)"
    probe = f"dvsf-probe-{uuid.uuid4().hex[:8]}"
    made = subprocess.run([tool("ip"), "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"'ip netns add' failed: {made.stderr.strip() or made.returncode}"
    subprocess.run([tool("ip"), "netns", "del", probe], capture_output=True)
    return None


def run(argv: list[str], what: str | None = None, timeout: float = 30,
        env: dict[str, str] | None = None, check: bool = True) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what or ' '.join(argv)}: timed out after {timeout:.0f} s") from exc
    if check and out.returncode != 0:
        raise LabError(f"{what or ' '.join(argv)} failed ({out.returncode}): "
                       f"{(out.stderr or out.stdout).strip()}")
    return out.stdout


def in_ns(ns: str, *argv: str) -> list[str]:
    return [tool("ip"), "netns", "exec", ns, *argv]


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    argv = [tool("ip")] + (["-n", ns] if ns else []) + list(args)
    return run(argv, check=check)


def add_ns(name: str) -> None:
    ip("netns", "add", name)
    ip("link", "set", "lo", "up", ns=name)


def del_ns(name: str) -> None:
    """Delete a namespace (its interfaces go with it); no error if it is already gone."""
    ip("netns", "del", name, check=False)


def kill_pids(name: str, grace: float = 3.0) -> None:
    """Stop every process in namespace ``name`` (the lab's own), by the pids ``ip netns
    pids`` gives: SIGTERM, then SIGKILL what is left after ``grace`` seconds.

    Returns once each signalled process is gone, not only out of the namespace: an
    exiting process leaves its namespaces before it has finished exiting (the kernel
    still closes its files after that), so an empty ``ip netns pids`` alone would let
    the caller see it alive a moment later.
    """
    def pids() -> list[int]:
        out = ip("netns", "pids", name, check=False)
        return [int(p) for p in out.split() if p.isdigit()]
    signalled: set[int] = set()

    def left() -> bool:
        return bool(pids()) or any(pid_alive(pid) for pid in signalled)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        if not left():
            return
        for pid in pids():
            signalled.add(pid)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and left():
            time.sleep(0.05)


def list_ns() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def veth(a: str, ns_a: str, b: str, ns_b: str, mtu: int | None = None) -> None:
    """A veth pair a (in ns_a) <-> b (in ns_b), both up, TX checksum offload off.

    The offload must be off: a veth leaves the checksum to "hardware", and OVS's
    userspace datapath (which reads the frame from a raw socket) sends it on unfixed.
    """
    ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
    for name, ns in ((a, ns_a), (b, ns_b)):
        if mtu:
            ip("link", "set", name, "mtu", str(mtu), ns=ns)
        ip("link", "set", name, "up", ns=ns)
        run(in_ns(ns, tool("ethtool"), "-K", name, "tx", "off"), f"ethtool -K {name} tx off")


_STATS = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping(ns: str, address: str, count: int, interval: float = 0.2,
         deadline: float | None = None) -> tuple[int, int]:
    """(sent, received) of ``count`` pings from namespace ``ns``."""
    argv = in_ns(ns, tool("ping"), "-n", "-q", "-c", str(count), "-i", f"{interval:g}",
                 "-W", "1")
    if deadline:
        argv += ["-w", f"{deadline:g}"]
    try:
        out = subprocess.run(argv + [address], capture_output=True, text=True,
                             timeout=(deadline or count * interval + 5) + 10)
    except subprocess.TimeoutExpired:
        return 0, 0
    # No summary: ping did not get to send (no such namespace yet, no address or route
    # yet: "Network is unreachable" on stderr).  Nothing was sent, nothing answered.
    match = _STATS.search(out.stdout or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def parse_ping(text: str) -> tuple[int, int]:
    match = _STATS.search(text)
    if not match:
        raise LabError(f"could not read ping's summary from: {text.strip()[-200:]!r}")
    return int(match.group(1)), int(match.group(2))


class PingRun:
    """ping every ``interval`` seconds in the background until ``stop()``."""

    def __init__(self, ns: str, address: str, interval: float = 0.1) -> None:
        self._proc = subprocess.Popen(
            in_ns(ns, tool("ping"), "-n", "-q", "-i", f"{interval:g}", "-W", "1", address),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def stop(self) -> tuple[int, int]:
        """SIGINT (ping prints its summary), then (sent, received)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            out, _ = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        return parse_ping(out or "")
