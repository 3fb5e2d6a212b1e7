"""Python's garbage collector in the periodic workers' process.

That process holds a large, long-lived heap: every leaf's OVSDB replica (~650,000
tracked objects at 1,000 networks, measured) and the watcher's picture of vCenter.
With Python's default young threshold (700 allocations), a burst of work that keeps
its results alive - a port-group audit parsing thousands of filters - moves hundreds
of thousands of objects into the oldest generation within seconds, and each time that
generation grows by a quarter Python collects it whole: it walks the entire heap
holding the GIL.  Measured in the lab at 1,000 networks: four or five such
collections of 0.25-0.29 s during each 3.5 s port-group audit, every other thread of
the process (the watcher, the fabric worker) stopped meanwhile.

A larger young threshold lets the short-lived objects of such work die before a
collection looks at them, so far fewer reach the old generation and full collections
become rare; a young collection then costs tens of milliseconds, whatever the heap.
At 4,000 networks this shortened a vMotion's wait inside the start's audit from 18 s
to 11 s (bench21, bench22); the rest was not the collector but the fabric worker
waiting for the shared vCenter handle behind the audit's listing (NOTES.md, session 21).
``[ml2_fabric] worker_gc_young_threshold`` sets it once per process, when the first
of the project's workers starts; 0 leaves Python's thresholds alone.

Whatever the threshold, a collection that stops the process for ``LONG_PAUSE_S`` or
more is logged (a warning naming its generation and length, from a thread of its
own a few seconds later: nothing is logged inside the collector), so a stall of the
watcher or the fabric worker can be told from a slow vCenter or leaf by its log.
"""
from __future__ import annotations

import collections
import gc
import logging
import threading
import time

LOG = logging.getLogger(__name__)

DEFAULT_YOUNG_THRESHOLD = 50000
#: A collection at least this long (seconds) is logged.
LONG_PAUSE_S = 0.2
#: How often (seconds) the reporter thread logs the long collections seen meanwhile.
REPORT_EVERY_S = 5.0
_lock = threading.Lock()
_applied = False
_started = 0.0                                             # perf_counter of the start
_long: collections.deque = collections.deque(maxlen=200)   # (wall time, gen, s, collected)


def apply_once(young: int) -> bool:
    """Set the young generation's threshold to ``young`` (0: leave Python's) the first
    time a worker of this process starts; the older generations keep theirs.  True
    when this call changed it."""
    global _applied
    with _lock:
        if _applied:
            return False
        _applied = True
        _watch_pauses()
        if young <= 0:
            return False
        before = gc.get_threshold()
        gc.set_threshold(young, *before[1:])
        LOG.info("periodic workers: Python's young-generation GC threshold set to %(new)d "
                 "(was %(old)d; [ml2_fabric] worker_gc_young_threshold, 0 leaves it)",
                 {"new": young, "old": before[0]})
        return True


def _timing(phase: str, info: dict) -> None:
    """gc callback: remember collections of ``LONG_PAUSE_S`` or more (no logging here:
    the collector may have run inside a logging call)."""
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    took = time.perf_counter() - _started
    if took >= LONG_PAUSE_S:
        _long.append((time.time(), info.get("generation"), took, info.get("collected")))


def _report_forever() -> None:
    while True:
        time.sleep(REPORT_EVERY_S)
        report()


def report() -> int:
    """Log the long collections seen since the last report; how many."""
    count = 0
    while _long:
        at, generation, took, collected = _long.popleft()
        count += 1
        LOG.warning("periodic workers: a generation-%(gen)s garbage collection stopped "
                    "every thread of the process for %(ms).0f ms at %(at)s (%(n)s objects "
                    "freed)", {"gen": generation, "ms": took * 1000,
                               "at": time.strftime("%H:%M:%S", time.localtime(at)) +
                               f".{int(at % 1 * 1000):03d}", "n": collected})
    return count


def _watch_pauses() -> None:
    if _timing not in gc.callbacks:
        gc.callbacks.append(_timing)
        threading.Thread(target=_report_forever, name="gc-pause-report",
                         daemon=True).start()


def configured() -> int:
    """``[ml2_fabric] worker_gc_young_threshold`` (its default where the options are not
    registered in this process)."""
    from oslo_config import cfg
    try:
        return int(cfg.CONF.ml2_fabric.worker_gc_young_threshold)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return DEFAULT_YOUNG_THRESHOLD


def _reset_for_tests() -> None:
    global _applied
    with _lock:
        _applied = False
