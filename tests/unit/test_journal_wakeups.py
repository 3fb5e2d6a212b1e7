"""UDP wake-ups of a journal worker: a flood of datagrams must not become a flood
of claim queries, and no wake-up may be lost.

A real ``JournalWorker`` (its thread) with a real ``WakeupListener`` on a free
loopback UDP port, on the real journal store over Neutron's SQLite test database
(``SqlTestCase``, as in ``test_journal_store``).  The handler records its calls.
``store.claim`` is wrapped by a function that counts the calls and delegates to
the real one: an observation of how often the worker queries, not a mock (every
claim still runs against the database and its result is what the worker gets).
The poll interval is a minute, so whatever the worker does within a test was
started by a wake-up (or by its first pass), never by the poll.

Bounds are loose on purpose (a loaded two-core machine): the flood is judged by
"at most 1.5 rounds per spacing, plus a few", where one round per datagram would
be hundreds.
"""
from __future__ import annotations

import socket
import threading
import time

from neutron.tests.unit import testlib_api
from neutron_lib import context as n_context

from networking_dvs_fabric.db import models  # noqa: F401 - puts the journal table in the schema
from networking_dvs_fabric.journal import store, wakeup
from networking_dvs_fabric.journal import worker as journal_worker

POLL = 60.0                 # never reached within a test
FLOOD = 3000                # datagrams ...
FLOOD_SECONDS = 1.0         # ... spread over about this long
PROMPT = 2.0                # generous bound for "handled promptly"
STARTUP = 15.0              # the first pass (cold: SQL compiled, housekeeping)


def _free_udp_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _wait_for(check, timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


class JournalWakeupTestCase(testlib_api.SqlTestCase):

    def setUp(self):
        super().setUp()
        self.ctx = n_context.get_admin_context()
        self.address = _free_udp_address()
        self.spacing = journal_worker.WorkerSettings().wakeup_min_interval
        self.handled: list[tuple[str, str, float]] = []
        self.handled_event = threading.Event()
        self.claims: list[float] = []          # monotonic start time of each claim
        self.after_claim = None                # hook run in the worker's thread
        real_claim = store.claim

        def counting_claim(*args, **kwargs):
            self.claims.append(time.monotonic())
            entries = real_claim(*args, **kwargs)
            hook = self.after_claim
            if hook is not None:
                hook(entries)
            return entries

        store.claim = counting_claim
        self.addCleanup(setattr, store, "claim", real_claim)
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sender.close)
        self.target = wakeup.parse_address(self.address)

    # -- helpers -----------------------------------------------------------------
    def _handler(self, context, entries):
        now = time.monotonic()
        for entry in entries:
            self.handled.append((entry.resource_type, entry.resource_id, now))
        self.handled_event.set()
        return [None] * len(entries)

    def _start_worker(self) -> journal_worker.JournalWorker:
        settings = journal_worker.WorkerSettings(poll_interval=POLL,
                                                 wakeup_listen=self.address)
        worker = journal_worker.JournalWorker("wake-up test worker", self._handler,
                                              settings)
        worker.start()
        self.addCleanup(self._stop, worker)
        self.assertEqual(self.target, worker._listener.address,
                         "the worker listens on the test's address")
        # Its first pass (housekeeping, an empty claim) is over before the test acts;
        # not a bound under test (cold, on a loaded machine it can take seconds).
        self.assertTrue(_wait_for(lambda: len(self.claims) >= 1, STARTUP))
        time.sleep(0.2)
        return worker

    def _stop(self, worker) -> float:
        """Stop and join the worker; how long that took (inf when it did not end)."""
        started = time.monotonic()
        worker.stop()
        waiter = threading.Thread(target=worker.wait, daemon=True)
        waiter.start()
        waiter.join(5.0)
        return float("inf") if waiter.is_alive() else time.monotonic() - started

    def _wake(self) -> None:
        self.sender.sendto(wakeup.MESSAGE, self.target)

    def _flood(self) -> tuple[int, float]:
        """``FLOOD`` datagrams over about ``FLOOD_SECONDS`` (bursts of 30, paced so
        the sending thread does not hog the interpreter); (sent, seconds)."""
        started = time.monotonic()
        sent = 0
        for i in range(FLOOD):
            try:
                self.sender.sendto(wakeup.MESSAGE, self.target)
                sent += 1
            except BlockingIOError:     # the kernel's buffer is full: a lost datagram
                pass
            if i % 30 == 29:
                pause = started + (i + 1) * FLOOD_SECONDS / FLOOD - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        return sent, time.monotonic() - started

    # -- tests -------------------------------------------------------------------
    def test_a_flood_of_wakeups_is_not_a_flood_of_claims(self):
        worker = self._start_worker()

        before = len(self.claims)
        started = time.monotonic()
        sent, flood_seconds = self._flood()
        time.sleep(0.3)     # datagrams still queued in the socket are read meanwhile
        elapsed = time.monotonic() - started
        rounds = len([t for t in self.claims if t >= started])
        limit = 1.5 * elapsed / self.spacing + 5
        print(f"\nflood: {sent} datagrams in {flood_seconds:.2f} s; {rounds} claim rounds "
              f"in {elapsed:.2f} s (limit {limit:.0f}, spacing {self.spacing} s)")
        self.assertEqual(before, len([t for t in self.claims if t < started]))
        self.assertGreaterEqual(rounds, 1, "the wake-ups woke the worker")
        self.assertLessEqual(rounds, limit)

        # Work recorded right after the flood is handled at once, on its wake-up
        # (the poll is a minute away): the spacing delays it, never drops it.
        recorded = time.monotonic()
        store.record(self.ctx, "network", "after-flood")
        self._wake()
        self.assertTrue(_wait_for(lambda: self.handled, self.spacing + PROMPT),
                        "the entry recorded after the flood was not handled")
        (rtype, rid, when), = self.handled
        self.assertEqual(("network", "after-flood"), (rtype, rid))
        print(f"handled {when - recorded:.3f} s after it was recorded")

        took = self._stop(worker)
        self.assertLess(took, 2.0, "stop() did not end the worker within 2 s")

    def test_a_wakeup_during_a_pass_makes_the_next_round(self):
        """An entry recorded (and its wake-up sent) just after a claim found nothing,
        while that pass still runs, is handled in the next round."""
        probe = wakeup.WakeupListener(self.address)     # hears every wake-up too
        self.addCleanup(probe.close)
        worker = self._start_worker()
        probe.wait(0)
        recorded = []

        def record_and_wake(entries):
            if recorded or entries:
                return
            self.after_claim = None
            store.record(n_context.get_admin_context(), "network", "during-pass")
            recorded.append(time.monotonic())
            self._wake()
            # The hub has read the datagram before this pass goes on to sleep.
            self.assertTrue(probe.wait(PROMPT))

        self.after_claim = record_and_wake
        self._wake()
        self.assertTrue(_wait_for(lambda: self.handled, self.spacing + 2 * PROMPT),
                        "the entry recorded during a pass was not handled")
        self.assertEqual([("network", "during-pass")],
                         [(rtype, rid) for rtype, rid, _ in self.handled])
        self.assertLess(self.handled[0][2] - recorded[0], self.spacing + PROMPT)

        took = self._stop(worker)
        self.assertLess(took, 2.0, "stop() did not end the worker within 2 s")

    def test_work_goes_straight_on_without_the_spacing(self):
        """A pass that handled something is followed at once by the next claim."""
        settings = journal_worker.WorkerSettings(poll_interval=POLL, batch_size=1,
                                                 wakeup_listen=self.address,
                                                 wakeup_min_interval=1.0)
        for i in range(5):
            store.record(self.ctx, "network", f"n{i}")
        worker = journal_worker.JournalWorker("wake-up test worker", self._handler,
                                              settings)
        worker.start()
        self.addCleanup(self._stop, worker)
        self.assertTrue(_wait_for(lambda: len(self.handled) >= 1, STARTUP))
        self.assertTrue(_wait_for(lambda: len(self.handled) == 5, PROMPT))
        # Batches 2..5 follow the first at once: with a spacing after each they
        # would take four spacings (4 s).
        self.assertLess(self.handled[-1][2] - self.handled[0][2], 2.0)
        self.assertEqual([f"n{i}" for i in range(5)], [rid for _, rid, _ in self.handled])
        took = self._stop(worker)
        self.assertLess(took, 2.0, "stop() did not end the worker within 2 s")
