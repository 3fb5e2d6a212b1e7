"""The full sync's parts that run beside the fabric worker, on a thread of their own.

Reading all of vCenter's port groups and their filters took ~5 s at 400 networks;
on the fabric worker's thread every batch queued behind it (a port bound right
after a worker's start waited that long for its leaves).  The periodic sync's audit
of the leaves takes ~10 s at 4,000 networks: a network bound meanwhile waited for
it (the convergence p99 of ``bench scale``).  So the fabric worker runs the leaves'
part itself only where it must come first (the worker's start, a leaf or vCenter
with a new identity) and hands the rest here: the port groups' part always, the
leaves' part of the periodic sync.  Items handed over while one runs are run once
after it, together (what they would each read is what that one reads).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

LOG = logging.getLogger(__name__)
STOP_TIMEOUT = 30.0        # a stop waits this long for a part under way


class PartsThread:
    """``work(items)`` run on this thread for the items handed over (together when
    they pile up); ``dropped(items)`` for those still queued at a stop."""

    def __init__(self, work: Callable[[list[Any]], None],
                 dropped: Callable[[list[Any]], None]) -> None:
        self._work = work
        self._dropped = dropped
        self._cond = threading.Condition()
        self._queued: list[Any] = []
        self._running = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="dvs-fabric-full-sync-parts")
        self._thread.start()

    def submit(self, item: Any) -> None:
        """Queue ``item``; once stopping, it is dropped at once (``dropped([item])``):
        nothing would run it, and what it holds must be given back."""
        with self._cond:
            if not self._stopping:
                self._queued.append(item)
                self._cond.notify_all()
                return
        self._dropped([item])

    @property
    def idle(self) -> bool:
        """Nothing under way and nothing queued."""
        with self._cond:
            return not self._running and not self._queued

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._running and not self._queued,
                                       timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                LOG.warning("full sync: a part beside the fabric worker did not end "
                            "within %.0f s", STOP_TIMEOUT)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued or self._stopping)
                items, self._queued = self._queued, []
                if self._stopping:
                    break
                self._running = True
            try:
                self._work(items)
            except Exception:  # noqa: BLE001 - the thread must outlive one failed part
                LOG.exception("full sync: a part beside the fabric worker failed")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
        if items:
            self._dropped(items)
