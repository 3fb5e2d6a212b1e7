"""Wake the journal workers as soon as an API worker has recorded work.

The API (uWSGI) and the workers (``neutron-periodic-workers``) are different
processes, possibly on different hosts, so an in-memory event cannot reach.  After
its transaction commits, the API worker sends one UDP datagram to each configured
target; the workers of a host share one listening address (``SO_REUSEPORT``: the
kernel hands each datagram to one of them, and any of them can claim the work).
A datagram can be lost: the workers also poll the journal every ``poll_interval``,
so a lost wake-up only costs latency, never work.  Many wake-ups are no more
work than one: a listener only says "woken since last cleared", and the worker
spaces the claim rounds wake-ups start (``worker.WAKEUP_MIN_INTERVAL``), so a flood
of datagrams does not become a flood of database queries.
"""
from __future__ import annotations

import logging
import socket
import threading

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
    """A worker's end: wait up to a timeout for a wake-up.

    Every journal worker of a process (fabric, port groups) needs every wake-up,
    but the kernel hands a datagram to one socket only.  So a process binds the
    address once (a hub with one reader thread) and the hub sets the event of each
    worker listening through it.
    """

    _hubs: dict[str, "_Hub"] = {}
    _hubs_lock = threading.Lock()

    def __init__(self, address: str | None) -> None:
        self._event = threading.Event()
        self._hub: _Hub | None = None
        if not address:
            return
        with WakeupListener._hubs_lock:
            hub = WakeupListener._hubs.get(address)
            if hub is None or not hub.alive:
                hub = _Hub.open(address)
                if hub is not None:
                    WakeupListener._hubs[address] = hub
        if hub is not None:
            hub.subscribe(self._event)
            self._hub = hub

    @property
    def address(self) -> tuple[str, int] | None:
        return self._hub.address if self._hub is not None else None

    def wait(self, timeout: float, clear: bool = True) -> bool:
        """True when woken (since the last clear), False on timeout.

        ``clear=False`` leaves the wake-up set, for :meth:`clear` to consume just
        before the work it asks for begins: one arriving in between is not lost.
        """
        woken = self._event.wait(max(0.0, timeout))
        if clear:
            self._event.clear()
        return woken

    def wake(self) -> None:
        """Wake the waiter as a datagram would (from any thread of this process)."""
        self._event.set()

    def clear(self) -> None:
        """Forget the wake-ups received so far (the caller is about to look)."""
        self._event.clear()

    def close(self) -> None:
        if self._hub is not None:
            self._hub.unsubscribe(self._event)
            self._hub = None


class _Hub:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._events: set[threading.Event] = set()
        self._lock = threading.Lock()
        self.address = sock.getsockname()
        self.alive = True
        self._thread = threading.Thread(target=self._read, name="journal-wakeup",
                                         daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, address: str) -> "_Hub | None":
        host, port = parse_address(address)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            LOG.warning("journal workers cannot listen for wake-ups on %s (%s); they will "
                        "poll only", address, exc)
            return None
        return cls(sock)

    def subscribe(self, event: threading.Event) -> None:
        with self._lock:
            self._events.add(event)

    def unsubscribe(self, event: threading.Event) -> None:
        with self._lock:
            self._events.discard(event)

    def _read(self) -> None:
        while True:
            try:
                self._sock.recv(64)
            except OSError:
                self.alive = False
                return
            with self._lock:
                for event in self._events:
                    event.set()
