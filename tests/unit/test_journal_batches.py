"""The journal claims and settles a batch in a constant number of statements (issue 15).

On SQLite, through Neutron's SQL test fixture (as ``test_journal_store``).  Statements
are counted with SQLAlchemy's ``before_cursor_execute`` event on every engine; a
batch of 10 entries and one of 100 must cost the same.  Also here: a batch's settle
leaves alone an entry whose claim was released and taken by another worker,
``record_and_claim`` leaves a held resource to its holder, and the worker keeps a
batch's verdicts for its next pass when the settle transaction fails.
"""
from __future__ import annotations

import contextlib
from unittest import mock

from neutron.tests.unit import testlib_api
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from oslo_db import exception as db_exc
from sqlalchemy import event
from sqlalchemy.engine import Engine

from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.journal import worker as journal_worker


@contextlib.contextmanager
def counting_statements():
    """Yields a list that ends up holding every SQL statement sent meanwhile."""
    sent: list[str] = []

    def before(_conn, _cursor, statement, *_args):
        sent.append(statement)
    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", before)


class JournalBatchTestCase(testlib_api.SqlTestCase):

    def setUp(self):
        super().setUp()
        self.ctx = n_context.get_admin_context()
        self.worker = store.make_worker_id()

    def _states(self) -> dict[str, dict[str, object]]:
        with db_api.CONTEXT_READER.using(self.ctx):
            return {row.resource_id: {"state": row.state, "attempts": row.attempts,
                                      "error": row.last_error, "by": row.claimed_by}
                    for row in self.ctx.session.query(models.JournalEntry)}

    def _claim_and_settle(self, prefix: str, count: int) -> tuple[int, int]:
        """``count`` networks (and a second row for each) recorded, claimed and
        settled with mixed verdicts; (claim statements, settle statements)."""
        names = [f"{prefix}-{i:03d}" for i in range(count)]
        store.record_many(self.ctx, "network", names, "create")
        store.record_many(self.ctx, "network", names, "update")
        with counting_statements() as claiming:
            entries = store.claim(self.ctx, self.worker, limit=500)
        self.assertEqual(names, [entry.resource_id for entry in entries])
        self.assertTrue(all(entry.operations == ("create", "update") for entry in entries))
        settlements = [store.Settlement.completed(e) if i % 3 == 0 else
                       store.Settlement.failed(e, f"refused {i}") if i % 3 == 1 else
                       store.Settlement.retry(e, f"leaf away {i}", delay=60)
                       for i, e in enumerate(entries)]
        with counting_statements() as settling:
            held = store.settle(self.ctx, settlements)
        self.assertEqual([True] * count, held)
        states = self._states()
        for i, name in enumerate(names):
            want = ({"state": store.COMPLETED, "attempts": 0, "error": None,
                     "by": self.worker} if i % 3 == 0 else
                    {"state": store.FAILED, "attempts": 0, "error": f"refused {i}",
                     "by": self.worker} if i % 3 == 1 else
                    {"state": store.PENDING, "attempts": 1, "error": f"leaf away {i}",
                     "by": None})
            self.assertEqual(want, states[name], name)
        return len(claiming), len(settling)

    def test_claim_and_settle_cost_the_same_statements_for_10_and_100_entries(self):
        few = self._claim_and_settle("few", 10)
        many = self._claim_and_settle("many", 100)
        self.assertEqual(few, many)
        claim_statements, settle_statements = many
        self.assertLessEqual(claim_statements, 5)
        self.assertLessEqual(settle_statements, 3)
        # What was retried is due in a minute: nothing to claim now.
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=500))

    def test_settle_leaves_a_claim_taken_by_another_worker_alone(self):
        store.record(self.ctx, "network", "A")
        (a,) = store.claim(self.ctx, self.worker, limit=5)
        # A's claim is released as stale and taken by another worker ...
        self.assertEqual(1, store.release_stale_claims(
            self.ctx, host="elsewhere", alive=lambda pid: True, timeout=-1))
        (other,) = store.claim(self.ctx, "other:9:z", limit=5)
        # ... while this worker claimed B and C.
        store.record(self.ctx, "network", "B")
        store.record(self.ctx, "network", "C")
        b, c = store.claim(self.ctx, self.worker, limit=5)
        held = store.settle(self.ctx, [store.Settlement.completed(a),
                                       store.Settlement.failed(b, "refused"),
                                       store.Settlement.retry(c, "away", 0)])
        self.assertEqual([False, True, True], held)
        states = self._states()
        self.assertEqual((store.PROCESSING, "other:9:z"),
                         (states["A"]["state"], states["A"]["by"]))
        self.assertEqual(store.FAILED, states["B"]["state"])
        self.assertEqual((store.PENDING, 1), (states["C"]["state"], states["C"]["attempts"]))
        # The one-entry forms say the same.
        self.assertFalse(store.retry_later(self.ctx, a, "late", 0))
        self.assertTrue(store.complete(self.ctx, other))
        self.assertEqual(store.COMPLETED, self._states()["A"]["state"])

    def test_record_and_claim_leaves_a_held_resource_to_its_holder(self):
        store.record(self.ctx, "network", "held")
        (holder,) = store.claim(self.ctx, "other:1:x", limit=1)
        with counting_statements() as few:
            got = store.record_and_claim(self.ctx, self.worker, "network",
                                         ["held"] + [f"f{i}" for i in range(9)], "sync")
        self.assertIsNone(got["held"])
        self.assertEqual({f"f{i}" for i in range(9)},
                         {rid for rid, entry in got.items() if entry is not None})
        with counting_statements() as many:
            got = store.record_and_claim(self.ctx, self.worker, "network",
                                         [f"m{i}" for i in range(100)], "sync")
        self.assertEqual(100, sum(entry is not None for entry in got.values()))
        self.assertEqual(len(few), len(many))
        # The held network's new row waits for its holder, then comes on its own.
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=500))
        self.assertTrue(store.complete(self.ctx, holder))
        (after,) = store.claim(self.ctx, self.worker, limit=500)
        self.assertEqual(("held", ("sync",)), (after.resource_id, after.operations))

    def test_the_worker_keeps_a_batchs_verdicts_when_the_settle_fails(self):
        for name in ("ok", "bad", "away"):
            store.record(self.ctx, "network", name)

        def handler(_context, entries):
            return [None if e.resource_id == "ok" else
                    journal_worker.PermanentFailure("refused") if e.resource_id == "bad"
                    else journal_worker.TemporaryFailure("leaf away") for e in entries]
        worker = journal_worker.JournalWorker(
            "batch test worker", handler, journal_worker.WorkerSettings())
        real_settle = store.settle
        calls = []

        def database_away_once(context, settlements):
            calls.append(len(settlements))
            if len(calls) == 1:
                # A fault SQLite in memory cannot produce: the server going away.
                raise db_exc.DBConnectionError("database away")
            return real_settle(context, settlements)
        with mock.patch.object(store, "settle", side_effect=database_away_once):
            self.assertRaises(db_exc.DBConnectionError, worker.run_once)
            self.assertEqual({store.PROCESSING}, {s["state"] for s in self._states().values()})
            self.assertEqual(3, len(worker._unsettled))
            self.assertFalse(worker.run_once())       # settles the kept batch first
        self.assertEqual([3, 3], calls)
        self.assertEqual([], worker._unsettled)
        self.assertEqual({"ok": store.COMPLETED, "bad": store.FAILED, "away": store.PENDING},
                         {rid: s["state"] for rid, s in self._states().items()})
