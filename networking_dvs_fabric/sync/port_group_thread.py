"""The full sync's port-group part, on a thread of its own.

Reading all of vCenter's port groups and their filters took ~5 s at 400 networks;
on the fabric worker's thread every batch queued behind it (a port bound right
after a worker's start waited that long for its leaves).  So the fabric worker runs
the leaves' part and hands the port groups' part here, and goes back to its
batches.  Parts handed over while one runs are run once after it, as one (what
they would each read is what that one reads); their reasons are joined.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

LOG = logging.getLogger(__name__)
STOP_TIMEOUT = 30.0        # a stop waits this long for a part under way


class PortGroupThread:
    """``work(reasons)`` run on this thread for each hand-over (merged when they
    pile up); ``dropped(reasons)`` for those still queued at a stop."""

    def __init__(self, work: Callable[[list[str]], None],
                 dropped: Callable[[list[str]], None]) -> None:
        self._work = work
        self._dropped = dropped
        self._cond = threading.Condition()
        self._queued: list[str] = []
        self._running = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="dvs-fabric-full-sync-port-groups")
        self._thread.start()

    def submit(self, reason: str) -> None:
        with self._cond:
            self._queued.append(reason)
            self._cond.notify_all()

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
                LOG.warning("full sync: the port groups' part did not end within %.0f s",
                            STOP_TIMEOUT)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued or self._stopping)
                reasons, self._queued = self._queued, []
                if self._stopping:
                    break
                self._running = True
            try:
                self._work(reasons)
            except Exception:  # noqa: BLE001 - the thread must outlive one failed part
                LOG.exception("full sync: the port groups' part failed")
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
        if reasons:
            self._dropped(reasons)
