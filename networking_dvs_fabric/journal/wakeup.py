"""Wake the journal workers as soon as an API worker has recorded work.

The API (uWSGI) and the workers (``neutron-periodic-workers``) are different
processes, possibly on different hosts, so an in-memory event cannot reach.  After
its transaction commits, the API worker sends one UDP datagram to each configured
target; the workers of a host share one listening address (``SO_REUSEPORT``: the
kernel hands each datagram to one of them, and any of them can claim the work).
A datagram can be lost: the workers also poll the journal every ``poll_interval``,
so a lost wake-up only costs latency, never work.
"""
from __future__ import annotations

import logging
import select
import socket

LOG = logging.getLogger(__name__)
MESSAGE = b"dvs-fabric-journal"


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class Waker:
    """Sends wake-ups; never raises (the poll covers a failure)."""

    def __init__(self, targets: list[str]) -> None:
        self.targets = [parse_address(t) for t in targets if t.strip()]
        self._sock: socket.socket | None = None

    def wake(self) -> None:
        if not self.targets:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for target in self.targets:
                self._sock.sendto(MESSAGE, target)
        except OSError as exc:
            LOG.debug("journal wake-up not sent (%s); workers will poll", exc)


class WakeupListener:
    """A worker's end: wait up to a timeout for a wake-up, swallowing any backlog."""

    def __init__(self, address: str | None) -> None:
        self._sock: socket.socket | None = None
        if not address:
            return
        host, port = parse_address(address)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            LOG.warning("journal worker cannot listen for wake-ups on %s (%s); it will "
                        "poll only", address, exc)
            return
        sock.setblocking(False)
        self._sock = sock

    @property
    def address(self) -> tuple[str, int] | None:
        return self._sock.getsockname() if self._sock is not None else None

    def wait(self, timeout: float) -> bool:
        """True when woken, False on timeout."""
        if self._sock is None:
            select.select([], [], [], max(0.0, timeout))
            return False
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        while True:
            try:
                self._sock.recv(64)
            except BlockingIOError:
                return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
