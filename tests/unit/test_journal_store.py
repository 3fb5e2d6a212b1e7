"""The journal store on SQLite, through Neutron's own SQL test fixture.

``SqlTestCase`` builds one in-memory SQLite database from ``BASEV2``'s metadata
for the whole test process; importing our models (here, at collection time,
before any test sets the fixture up) is what puts ``dvs_fabric_journal`` in it.
Also here: the alembic branch, run in-process on a fresh SQLite database,
yields exactly the model's schema.
"""
from __future__ import annotations

import dataclasses
import datetime
import os

from alembic import command as alembic_command
from alembic import config as alembic_config
from neutron.db.migration import cli as migration_cli
from neutron.tests.unit import testlib_api
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from oslo_config import cfg
from oslo_db import options as db_options
import sqlalchemy as sa

from networking_dvs_fabric.db import migration
from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal import store

TABLE = models.JournalEntry.__tablename__
SUBPROJECT = "networking-dvs-fabric"
SCRIPT_LOCATION = "networking_dvs_fabric.db.migration:alembic_migrations"


def upgrade_in_process(url: str) -> None:
    """What neutron-db-manage --subproject networking-dvs-fabric upgrade heads does."""
    conf = cfg.ConfigOpts()
    db_options.set_defaults(conf, connection=url)
    config = alembic_config.Config(migration_cli.neutron_alembic_ini)
    config.set_main_option("neutron_project", SUBPROJECT)
    config.set_main_option("script_location", SCRIPT_LOCATION)
    migration_cli._set_version_locations(config)
    config.neutron_config = conf
    alembic_command.upgrade(config, "heads")


def test_migration_matches_model_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    upgrade_in_process(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert TABLE in inspector.get_table_names()
            assert {ix["name"] for ix in inspector.get_indexes(TABLE)} == {
                "ix_dvs_fabric_journal_state_due", "ix_dvs_fabric_journal_resource"}
            versions = {row[0] for row in conn.execute(
                sa.text("SELECT version_num FROM alembic_version_dvs_fabric"))}
            assert versions == migration.head_revisions()
            assert migration.schema_diff(conn) == []
    finally:
        engine.dispose()


class JournalStoreTestCase(testlib_api.SqlTestCase):

    def setUp(self):
        super().setUp()
        self.ctx = n_context.get_admin_context()
        self.worker = store.make_worker_id()

    # -- helpers ---------------------------------------------------------------
    def _all(self) -> dict[int, models.JournalEntry]:
        with db_api.CONTEXT_READER.using(self.ctx):
            return {row.id: row for row in self.ctx.session.query(models.JournalEntry)}

    def _set(self, row_ids, **values) -> None:
        with db_api.CONTEXT_WRITER.using(self.ctx):
            (self.ctx.session.query(models.JournalEntry)
             .filter(models.JournalEntry.id.in_(list(row_ids)))
             .update(values, synchronize_session=False))

    def _record(self, rtype, rid, op="sync") -> int:
        store.record(self.ctx, rtype, rid, op)
        return max(self._all())

    # -- tests -----------------------------------------------------------------
    def test_table_is_in_neutrons_test_schema(self):
        self.assertIn(TABLE, sa.inspect(self.engine).get_table_names())
        self.assertEqual([], migration.schema_diff(self.engine.connect()))

    def test_record_joins_the_callers_transaction(self):
        class Boom(Exception):
            pass

        try:
            with db_api.CONTEXT_WRITER.using(self.ctx):
                store.record(self.ctx, "network", "n1", "create")
                raise Boom()
        except Boom:
            pass
        self.assertEqual({}, self._all())

        with db_api.CONTEXT_WRITER.using(self.ctx):
            store.record(self.ctx, "network", "n1", "create")
        (row,) = self._all().values()
        self.assertEqual(("network", "n1", "create", store.PENDING, 0, None),
                         (row.resource_type, row.resource_id, row.operation,
                          row.state, row.attempts, row.claimed_by))
        self.assertLessEqual(row.next_attempt_at, store.utcnow())
        self.assertIsNone(row.next_attempt_at.tzinfo)

    def test_record_checks_lengths(self):
        self.assertRaises(ValueError, store.record, self.ctx, "x" * 37, "id")
        self.assertRaises(ValueError, store.record, self.ctx, "network", "")
        self.assertRaises(ValueError, store.record, self.ctx, "network", "n", "o" * 37)

    def test_claim_takes_all_ready_rows_of_a_resource_oldest_first(self):
        a1 = self._record("network", "A", "create")
        b1 = self._record("port", "B", "update")
        a2 = self._record("network", "A", "update")
        b2 = self._record("port", "B", "delete")
        c1 = self._record("network", "C")
        later = self._record("network", "C", "delete")
        self._set([later], next_attempt_at=store.utcnow() + datetime.timedelta(hours=1))

        entries = store.claim(self.ctx, self.worker, limit=2)
        self.assertEqual([("network", "A", (a1, a2), ("create", "update")),
                          ("port", "B", (b1, b2), ("update", "delete"))],
                         [(e.resource_type, e.resource_id, e.row_ids, e.operations)
                          for e in entries])
        first = entries[0]
        self.assertEqual(0, first.attempts)
        self.assertEqual(self.worker, first.worker_id)
        self.assertEqual(self._all()[a1].created_at, first.first_created_at)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, first, "attempts", 3)
        rows = self._all()
        for row_id in (a1, a2, b1, b2):
            self.assertEqual((store.PROCESSING, self.worker),
                             (rows[row_id].state, rows[row_id].claimed_by))
            self.assertIsNotNone(rows[row_id].claimed_at)

        # C: one row is due, so all of C's pending rows come (level-triggered: one
        # handling covers the later one too).
        (c,) = store.claim(self.ctx, "other:1:x", limit=5)
        self.assertEqual(("C", (c1, later)), (c.resource_id, c.row_ids))
        self.assertEqual(store.PROCESSING, self._all()[later].state)
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=5))
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=0))

    def test_a_new_row_cuts_short_the_back_off_of_its_resource(self):
        a1 = self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=5)
        store.retry_later(self.ctx, entry, "switch down", delay=60)
        b1 = self._record("network", "B")
        (entry,) = store.claim(self.ctx, self.worker, limit=5)
        self.assertEqual("B", entry.resource_id)
        # B is held: only A counts, and it is not due for a minute.
        self.assertEqual(self._all()[a1].next_attempt_at, store.next_due(self.ctx))
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=5))
        # New intent for A: tried now, together with the row that was backing off.
        a2 = self._record("network", "A", "update")
        (entry,) = store.claim(self.ctx, self.worker, limit=5)
        self.assertEqual(((a1, a2), 1), (entry.row_ids, entry.attempts))
        self.assertEqual(store.PROCESSING, self._all()[b1].state)
        self.assertIsNone(store.next_due(self.ctx))

    def test_record_unless_due_skips_what_a_due_row_already_asks(self):
        self._record("pgp", "due", "g1")
        self._record("pgp", "all", "sync")
        held = self._record("pgp", "held", "g1")
        backing_off = self._record("pgp", "backing-off", "g1")
        self._set([backing_off], next_attempt_at=store.utcnow() + datetime.timedelta(60))
        store.claim(self.ctx, self.worker, limit=10)      # then only "held" stays held
        self._set([r for r in self._all() if r != held], state=store.PENDING,
                  claimed_by=None)
        self.assertEqual(store.PROCESSING, self._all()[held].state)
        wanted = ["due", "all", "held", "backing-off", "new", "new"]
        recorded = store.record_unless_due(self.ctx, "pgp", wanted, "g1",
                                           covered_by=["sync"])
        # A pending due row with the operation, or one covering it, is enough; a row
        # being handled or backing off is not (new intent goes with the next claim).
        self.assertEqual(["backing-off", "held", "new"], recorded)
        self.assertEqual(["backing-off", "held", "new"], sorted(
            r.resource_id for r in self._all().values()
            if r.id > backing_off))
        # Another operation of the same resource is not covered.
        self.assertEqual(["due"], store.record_unless_due(self.ctx, "pgp", ["due"], "g2"))

    def test_claim_by_resource_type(self):
        self._record("network", "A")
        p1 = self._record("port", "P")
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=5,
                                         resource_types=["subnet"]))
        (entry,) = store.claim(self.ctx, self.worker, limit=5, resource_types=["port"])
        self.assertEqual(("port", (p1,)), (entry.resource_type, entry.row_ids))
        (entry,) = store.claim(self.ctx, self.worker, limit=5)
        self.assertEqual("network", entry.resource_type)

    def test_no_second_claim_while_processing_and_later_rows_wait(self):
        a1 = self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=10)
        a2 = self._record("network", "A", "delete")
        # A is held: its new row is not handed to anyone.
        self.assertEqual([], store.claim(self.ctx, "other:2:y", limit=10))
        self.assertTrue(store.complete(self.ctx, entry))
        (again,) = store.claim(self.ctx, "other:2:y", limit=10)
        self.assertEqual(((a2,), ("delete",)), (again.row_ids, again.operations))
        self.assertEqual(store.COMPLETED, self._all()[a1].state)

    def test_complete_only_while_still_held(self):
        self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        # The claim is released (stale) and taken by another worker.
        self.assertEqual(1, store.release_stale_claims(
            self.ctx, host="elsewhere", alive=lambda pid: True, timeout=-1))
        (other,) = store.claim(self.ctx, "other:3:z", limit=1)
        self.assertFalse(store.complete(self.ctx, entry))
        self.assertFalse(store.fail(self.ctx, entry, "late"))
        self.assertFalse(store.retry_later(self.ctx, entry, "late", 1))
        (row,) = self._all().values()
        self.assertEqual((store.PROCESSING, "other:3:z"), (row.state, row.claimed_by))
        self.assertTrue(store.complete(self.ctx, other))

    def test_retry_later(self):
        a1 = self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        before = store.utcnow()
        self.assertTrue(store.retry_later(self.ctx, entry, "switch down", delay=30))
        row = self._all()[a1]
        self.assertEqual((store.PENDING, 1, "switch down", None, None),
                         (row.state, row.attempts, row.last_error, row.claimed_by,
                          row.claimed_at))
        self.assertGreaterEqual(row.next_attempt_at,
                                before + datetime.timedelta(seconds=30))
        self.assertEqual(row.next_attempt_at, store.next_due(self.ctx))
        # Not due yet.
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=1))
        self._set([a1], next_attempt_at=store.utcnow())
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        self.assertEqual(1, entry.attempts)
        long_error = "e" * (store.MAX_ERROR_CHARS + 100)
        store.retry_later(self.ctx, entry, long_error, delay=0)
        self.assertEqual(store.MAX_ERROR_CHARS, len(self._all()[a1].last_error))

    def test_fail_is_permanent_and_does_not_block_the_resource(self):
        a1 = self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        self.assertTrue(store.fail(self.ctx, entry, "VLAN range exhausted"))
        row = self._all()[a1]
        self.assertEqual((store.FAILED, "VLAN range exhausted"), (row.state, row.last_error))
        self.assertEqual([], store.claim(self.ctx, self.worker, limit=1))
        a2 = self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        self.assertEqual((a2,), entry.row_ids)

    def test_release_stale_claims(self):
        dead = "hostA:111:aaaa"
        living = "hostA:222:bbbb"
        remote = "hostB:111:cccc"
        ids = {}
        for worker, rid in ((dead, "d"), (living, "l"), (remote, "r")):
            ids[worker] = self._record("network", rid)
            self.assertEqual(1, len(store.claim(self.ctx, worker, limit=1)))

        # On hostA pid 111 is gone, 222 lives; hostB's pid 111 is not ours to judge.
        n = store.release_stale_claims(self.ctx, "hostA", alive=lambda pid: pid != 111,
                                       timeout=3600)
        self.assertEqual(1, n)
        rows = self._all()
        self.assertEqual((store.PENDING, None, 1), (rows[ids[dead]].state,
                                                    rows[ids[dead]].claimed_by,
                                                    rows[ids[dead]].attempts))
        self.assertIn("gone", rows[ids[dead]].last_error)
        self.assertEqual(store.PROCESSING, rows[ids[living]].state)
        self.assertEqual(store.PROCESSING, rows[ids[remote]].state)

        # Past the timeout, anyone's claim goes.
        self._set([ids[remote]], claimed_at=store.utcnow() - datetime.timedelta(hours=2))
        n = store.release_stale_claims(self.ctx, "hostA", alive=lambda pid: True,
                                       timeout=3600)
        self.assertEqual(1, n)
        self.assertEqual(store.PENDING, self._all()[ids[remote]].state)
        self.assertEqual(store.PROCESSING, self._all()[ids[living]].state)
        self.assertEqual(0, store.release_stale_claims(
            self.ctx, "hostA", alive=lambda pid: True, timeout=3600))

    def test_prune_deletes_old_completed_rows_only(self):
        old = self._record("network", "A")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        store.complete(self.ctx, entry)
        fresh = self._record("network", "B")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        store.complete(self.ctx, entry)
        failed = self._record("network", "C")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        store.fail(self.ctx, entry, "no")
        pending = self._record("network", "D")
        long_ago = store.utcnow() - datetime.timedelta(days=2)
        self._set([old, failed, pending], updated_at=long_ago)

        self.assertEqual(1, store.prune(self.ctx, older_than=86400))
        self.assertEqual({fresh, failed, pending}, set(self._all()))
        self.assertEqual(1, store.prune(self.ctx, older_than=0))
        self.assertEqual({failed, pending}, set(self._all()))

    def test_next_due(self):
        self.assertIsNone(store.next_due(self.ctx))
        a = self._record("network", "A")
        b = self._record("network", "B")
        soon = store.utcnow() + datetime.timedelta(seconds=5)
        self._set([a], next_attempt_at=soon + datetime.timedelta(seconds=5))
        self._set([b], next_attempt_at=soon)
        self.assertEqual(soon, store.next_due(self.ctx))
        self._set([b], state=store.FAILED)
        self.assertEqual(soon + datetime.timedelta(seconds=5), store.next_due(self.ctx))

    def test_rows_listing(self):
        a = self._record("network", "A")
        b = self._record("port", "B", "delete")
        (entry,) = store.claim(self.ctx, self.worker, limit=1)
        store.fail(self.ctx, entry, "boom")
        listed = store.rows(self.ctx)
        self.assertEqual([b, a], [r["id"] for r in listed])
        self.assertEqual({"id", "resource_type", "resource_id", "operation", "state",
                          "attempts", "next_attempt_at", "created_at", "updated_at",
                          "claimed_by", "claimed_at", "last_error"}, set(listed[0]))
        self.assertTrue(listed[0]["created_at"].endswith("+00:00"))
        self.assertEqual([a], [r["id"] for r in store.rows(self.ctx, states=["failed"])])
        self.assertEqual([b], [r["id"] for r in store.rows(self.ctx, limit=1)])
        self.assertEqual([], store.rows(self.ctx, states=["processing"]))

    def test_worker_ids(self):
        worker = store.make_worker_id()
        host, pid = store.parse_worker_id(worker)
        self.assertEqual(os.getpid(), pid)
        self.assertTrue(host)
        self.assertNotEqual(worker, store.make_worker_id())
        self.assertIsNone(store.parse_worker_id("garbage"))
        self.assertEqual(("h", 5), store.parse_worker_id("h:5:ab"))
