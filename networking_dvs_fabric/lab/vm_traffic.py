"""Real traffic between the lab's VM namespaces: TCP servers, connects, pings, probes.

Each VM is a network namespace the dataplane agent made; the scripts run in it with
the system's Python (no tools beyond ``ip``/``ping`` needed in a namespace).
"""
from __future__ import annotations

import math
import subprocess
import time
from typing import Any, Callable

from networking_dvs_fabric.lab import netns

PYTHON = str(netns.SYSTEM_PYTHON)

SERVER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); c.sendall(b"port %d" % port); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""
CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(64).decode())
except OSError as exc:
    print("failed:", exc); sys.exit(1)
"""


def in_vm(ns: str, script: str, *args: Any, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(netns.in_ns(ns, PYTHON, "-c", script, *map(str, args)),
                          capture_output=True, text=True, timeout=timeout)


def wait_for(check: Callable[[], Any], timeout: float, what: str,
             step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def connects(ns: str, address: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connection from the namespace to ``address:port`` gets the server's answer."""
    out = in_vm(ns, CONNECT, address, port, timeout)
    return out.returncode == 0 and out.stdout.strip() == f"port {port}"


def pings(ns: str, address: str, count: int = 3, interval: float = 0.2) -> tuple[int, int]:
    netns.ip("neigh", "flush", "all", ns=ns)
    return netns.ping(ns, address, count, interval=interval,
                      deadline=math.ceil(count * interval) + 1)


class Servers:
    """TCP servers in VM namespaces, stopped by their owner (pid)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, ns: str, *ports: int) -> None:
        proc = subprocess.Popen(netns.in_ns(ns, PYTHON, "-c", SERVER, *map(str, ports)),
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)
        self.procs.clear()
