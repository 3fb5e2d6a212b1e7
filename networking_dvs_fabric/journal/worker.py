"""The journal worker loop: claim, handle, settle; wake on a datagram, poll as a fallback.

Runs in ``neutron-periodic-workers`` (a driver's ``get_workers``) as a thread of
that process (``thread_worker.ThreadWorker``).  Several may run on several hosts:
the store hands each resource to one worker at a time.  What a batch means is the
handler's business; this loop only turns its verdicts into journal states: done,
retry later with backoff (no limit on count: a leaf may be down for a day), or
failed for good (visible to operators).

Pacing: a pass that handled work is followed at once by the next one.  After an
idle pass the worker sleeps until a wake-up, the earliest due retry or the poll,
and then starts the next claim round no sooner than ``wakeup_min_interval`` after
the previous one began: a flood of datagrams (a burst of API calls, or anyone who
can reach the port) costs at most one claim round per interval, not one per
datagram.  Wake-ups are coalesced, never lost: one that arrives during a pass or
the spacing makes the next round happen.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from typing import Callable, Sequence

from neutron_lib import context as n_context

from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal.wakeup import WakeupListener
from networking_dvs_fabric.thread_worker import ThreadWorker

LOG = logging.getLogger(__name__)
HOUSEKEEPING_INTERVAL = 10.0
#: Least time (seconds) from the start of one claim round to the start of the next
#: when the first found nothing: caps the claim (and ``next_due``) queries a flood
#: of wake-ups can cause at one per interval per worker.
WAKEUP_MIN_INTERVAL = 0.05


class TemporaryFailure(Exception):
    """Retry this entry later (the backend did not answer, or not yet)."""


class PermanentFailure(Exception):
    """Retrying will not help: mark the entry failed."""


# A handler gets a batch and returns, per entry (same order), None for success or
# the exception that says how it failed.
Handler = Callable[[object, Sequence[store.Entry]], Sequence[Exception | None]]


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    batch_size: int = 200
    poll_interval: float = 2.0
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 30.0
    claim_timeout: float = 300.0
    completed_retention: float = 3600.0
    wakeup_listen: str | None = None
    wakeup_min_interval: float = WAKEUP_MIN_INTERVAL

    @classmethod
    def from_conf(cls, group) -> "WorkerSettings":
        return cls(batch_size=group.worker_batch_size, poll_interval=group.poll_interval,
                   retry_initial_delay=group.retry_initial_delay,
                   retry_max_delay=group.retry_max_delay, claim_timeout=group.claim_timeout,
                   completed_retention=group.completed_retention,
                   wakeup_listen=group.wakeup_listen or None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JournalWorker(ThreadWorker):
    def __init__(self, name: str, handler: Handler, settings: WorkerSettings,
                 resource_types: Sequence[str] | None = None) -> None:
        super().__init__()
        self.name = self.thread_name = name
        self._handler = handler
        self.settings = settings
        self.resource_types = tuple(resource_types) if resource_types else None
        self._listener: WakeupListener | None = None
        self.worker_id = store.make_worker_id()
        self._unsettled: list[tuple[store.Entry, Exception | None]] = []
        self._last_housekeeping = 0.0
        self._round_started = float("-inf")     # time.monotonic() of the last pass
        self._housekeeping_hooks: list[Callable[[object], None]] = []
        self._pass_hooks: list[Callable[[object], None]] = []
        # Called on the worker's thread before its first pass, with its stop event.
        self.start_after: Callable[[threading.Event], None] | None = None

    # -- ThreadWorker -----------------------------------------------------------
    def _before_start(self) -> None:
        self.worker_id = store.make_worker_id()    # this process's pid, not the parent's
        self._listener = WakeupListener(self.settings.wakeup_listen)

    def start(self, name: str | None = None, desc: str | None = None) -> None:
        super().start(name=name, desc=desc)
        LOG.info("%(name)s started as %(id)s", {"name": self.name, "id": self.worker_id})

    def wait(self) -> None:
        super().wait()
        if self._listener is not None:
            self._listener.close()

    # -- the loop -------------------------------------------------------------
    def _loop(self) -> None:
        if self.start_after is not None:
            self.start_after(self._stop)
        while not self._stop.is_set():
            try:
                self._round_started = time.monotonic()
                if self.run_once():
                    continue    # work-driven: straight on, no spacing
                self._sleep()
            except Exception:  # noqa: BLE001 - the database may be restarting
                LOG.exception("%s: journal pass failed; retrying in 1 s", self.name)
                self._stop.wait(1.0)

    def _sleep(self) -> None:
        """After an idle pass: until a wake-up, the earliest due retry or the poll,
        and in any case until ``wakeup_min_interval`` after that pass began."""
        assert self._listener is not None
        timeout = self.settings.poll_interval
        due = store.next_due(n_context.get_admin_context())
        if due is not None:
            timeout = min(timeout, max(0.0, (due - store.utcnow()).total_seconds()))
        # In slices, so stop() is honoured within a second.  The wake-up is left
        # set here: it is consumed only just before the next claim (below).
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._listener.wait(min(left, 1.0), clear=False):
                break
        # Spacing: wake-ups arriving until the next claim begins are all covered
        # by it (their work was committed before they were sent), so they are
        # coalesced into that one round; any arriving later stay set and bring
        # about the round after.
        pause = self._round_started + self.settings.wakeup_min_interval - time.monotonic()
        if pause > 0:
            self._stop.wait(pause)
        self._listener.clear()

    def run_once(self) -> bool:
        """One pass; True when it handled something (so the next pass runs at once)."""
        context = n_context.get_admin_context()
        self._settle(context)
        self._housekeeping(context)
        entries = store.claim(context, self.worker_id, self.settings.batch_size,
                              **({"resource_types": self.resource_types}
                                 if self.resource_types else {}))
        if not entries:
            return False
        try:
            verdicts = list(self._handler(context, entries))
        except Exception as exc:  # noqa: BLE001 - a handler bug must not lose the batch
            LOG.exception("%s: handler failed for %d entries", self.name, len(entries))
            verdicts = [TemporaryFailure(f"handler error: {exc}")] * len(entries)
        self._unsettled = list(zip(entries, verdicts))
        self._settle(context)
        return True

    def _settle(self, context) -> None:
        """Write the batch's verdicts in one transaction; kept for the next pass if
        the database is away (the transaction then changed nothing)."""
        if not self._unsettled:
            return
        settlements = []
        for entry, verdict in self._unsettled:
            if verdict is None:
                settlements.append(store.Settlement.completed(entry))
            elif isinstance(verdict, PermanentFailure):
                LOG.error("%(name)s: %(type)s %(id)s failed for good: %(err)s",
                          {"name": self.name, "type": entry.resource_type,
                           "id": entry.resource_id, "err": verdict})
                settlements.append(store.Settlement.failed(entry, str(verdict)))
            else:
                delay = min(self.settings.retry_max_delay,
                            self.settings.retry_initial_delay * 2 ** min(entry.attempts, 20))
                LOG.warning("%(name)s: %(type)s %(id)s not done (%(err)s); retry in "
                            "%(delay).1f s", {"name": self.name, "type": entry.resource_type,
                                              "id": entry.resource_id, "err": verdict,
                                              "delay": delay})
                settlements.append(store.Settlement.retry(entry, str(verdict), delay))
        store.settle(context, settlements)
        self._unsettled = []

    def _housekeeping(self, context) -> None:
        self.on_pass(context)
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_INTERVAL:
            return
        self._last_housekeeping = now
        released = store.release_stale_claims(context, socket.gethostname(), _pid_alive,
                                              self.settings.claim_timeout)
        if released:
            LOG.warning("%s: took back %d journal entries claimed by workers that died",
                        self.name, released)
        store.prune(context, self.settings.completed_retention)
        self.on_housekeeping(context)

    def on_housekeeping(self, context) -> None:
        """Periodic extra work, run with the housekeeping (every 10 s): each hook
        added with :meth:`add_housekeeping`."""
        for hook in self._housekeeping_hooks:
            hook(context)

    def add_housekeeping(self, hook: Callable[[object], None]) -> None:
        """Run ``hook(context)`` with every housekeeping pass of this worker."""
        self._housekeeping_hooks.append(hook)

    def on_pass(self, context) -> None:
        """Cheap extra work run at the start of every pass, before the housekeeping
        and the claim: each hook added with :meth:`add_pass_hook`."""
        for hook in self._pass_hooks:
            hook(context)

    def add_pass_hook(self, hook: Callable[[object], None]) -> None:
        """Run ``hook(context)`` at the start of every pass of this worker (it must be
        cheap when it has nothing to do: it runs before every batch)."""
        self._pass_hooks.append(hook)

    def wake(self) -> None:
        """Make the next pass come now, as a wake-up datagram does (any thread may
        call it: a leaf's connection thread when the leaf changed)."""
        if self._listener is not None:
            self._listener.wake()
