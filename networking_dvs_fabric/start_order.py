"""What comes first when a worker process starts: one step the others wait for.

Every worker of a process shares one interpreter, so at a start the work that
matters most for traffic goes first and the rest waits for it, at most a bounded
time (a step that cannot finish must not hold the others for ever):

- the fabric worker's first repair of the leaves, before the other workers' first
  passes (after an outage, every network a switch missed);
- the vCenter watcher's first full read (where each VM runs: the leaves' MACs and
  on-demand VLANs follow it), before the start's audit of every port group (a
  repair of drift made while no worker ran, which can come a little later).

A step nobody in the process runs is not waited for.
"""
from __future__ import annotations

import logging
import threading
import time

LOG = logging.getLogger(__name__)


class FirstStep:
    """One start step others wait for: ``expect`` (a worker of this process runs it),
    ``done`` (it ended, or will not run here), ``wait`` (at most ``timeout`` s)."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.timeout = timeout
        self._expected = False
        self._done = threading.Event()

    def expect(self) -> None:
        self._expected = True

    def done(self) -> None:
        self._done.set()

    def wait(self, stop: threading.Event) -> None:
        if not self._expected:
            return
        deadline = time.monotonic() + self.timeout
        while not stop.is_set() and not self._done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                LOG.warning("%s has not ended after %.0f s; going on", self.what,
                            self.timeout)
                return
            self._done.wait(min(left, 1.0))
