"""The repair's leaf batches (``sync/converge.py``) cost the database a fixed number of
transactions per batch (issue 15): the batch's journal rows are recorded and claimed
in one, its verdicts settled in one.  When that transaction fails the batch is claimed
network by network instead, and nothing is lost or claimed twice.

Transactions are counted with SQLAlchemy's ``commit`` event; the handler is a
stand-in for the fabric worker's (it says which entries it got)."""
from __future__ import annotations

from unittest import mock

from neutron.tests.unit import testlib_api
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from sqlalchemy import event
from sqlalchemy.engine import Engine

from networking_dvs_fabric import names
from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal import claiming, store
from networking_dvs_fabric.journal.worker import PermanentFailure, TemporaryFailure
from networking_dvs_fabric.sync import converge


class ConvergeBatchTestCase(testlib_api.SqlTestCase):

    def setUp(self):
        super().setUp()
        self.ctx = n_context.get_admin_context()
        self.handled: list[list[str]] = []

    def handler(self, context, entries):
        self.handled.append([e.resource_id for e in entries])
        return [PermanentFailure("refused") if e.resource_id.endswith("-bad") else
                TemporaryFailure("leaf away") if e.resource_id.endswith("-away") else None
                for e in entries]

    def _run(self, network_ids, batch):
        commits = [0]

        def committed(*_args):
            commits[0] += 1
        event.listen(Engine, "commit", committed)
        try:
            out = converge.networks(self.ctx, None, network_ids, batch, lambda _: None,
                                    self.handler)
        finally:
            event.remove(Engine, "commit", committed)
        return out, commits[0]

    def _states(self) -> dict[str, set[str]]:
        with db_api.CONTEXT_READER.using(self.ctx):
            found: dict[str, set[str]] = {}
            for row in self.ctx.session.query(models.JournalEntry):
                found.setdefault(row.resource_id, set()).add(row.state)
            return found

    def test_transactions_per_batch_do_not_grow_with_the_batch(self):
        _, few = self._run([f"few-{i}" for i in range(3)], batch=10)
        _, many = self._run([f"many-{i}" for i in range(30)], batch=50)
        self.assertEqual(few, many)
        self.assertEqual(set(), {s for states in self._states().values() for s in states}
                         - {store.COMPLETED})

    def test_verdicts_are_settled_as_before(self):
        out, _ = self._run(["n-ok", "n-bad", "n-away"], batch=10)
        self.assertEqual([["n-away", "n-bad", "n-ok"]], self.handled)
        self.assertEqual(["n-ok"], out.done)
        self.assertEqual({"n-ok": {store.COMPLETED}, "n-bad": {store.FAILED},
                          "n-away": {store.PENDING}}, self._states())

    def test_a_failed_batch_transaction_makes_the_batch_go_network_by_network(self):
        real = store.record_and_claim
        calls = [0]

        def the_batch_loses(context, *args, **kwargs):
            calls[0] += 1
            if calls[0] > 1:
                return real(context, *args, **kwargs)
            # A fault SQLite cannot produce: a race lost under MariaDB's locks, after
            # the batch was recorded and claimed in its transaction.
            with db_api.CONTEXT_WRITER.using(context):
                real(context, *args, **kwargs)
                raise claiming.Lost()
        with mock.patch.object(store, "record_and_claim", side_effect=the_batch_loses):
            out, _ = self._run(["a", "b", "c"], batch=10)
        self.assertEqual(4, calls[0])
        self.assertEqual([["a", "b", "c"]], self.handled)
        self.assertEqual(["a", "b", "c"], out.done)
        # One row each: the batch's own records were undone with its transaction.
        self.assertEqual({n: {store.COMPLETED} for n in "abc"}, self._states())

    def test_a_network_another_worker_holds_is_left_to_it(self):
        store.record(self.ctx, names.RESOURCE_NETWORK, "held")
        [entry] = store.claim(self.ctx, "other-host:1:abcd", limit=1)
        out, _ = self._run(["held", "free"], batch=10)
        self.assertEqual([["free"]], self.handled)
        self.assertEqual(["held"], out.left_to_workers)
        self.assertEqual({store.PROCESSING, store.PENDING}, self._states()["held"])
        self.assertTrue(store.complete(self.ctx, entry))
