"""The journal on MariaDB: the alembic branch via neutron-db-manage, claims from two
real OS processes at once, and what a batch's claim and settle cost (issue 15: the
same statements for 10 entries and 100, counted with SQLAlchemy's
``before_cursor_execute``), a resource partly locked by another claimer skipped
whole, and the settle guard.

The server comes from the lab's launcher (the system MariaDB when root reaches
it over its socket, else a private mariadbd stopped by pid at the end); the
test creates and drops its own database.
"""
from __future__ import annotations

import collections
import json
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from own_mariadb import own_database
import sqlalchemy as sa

from networking_dvs_fabric.db import migration, models
from networking_dvs_fabric.lab import mariadb as lab_mariadb

pytestmark = pytest.mark.skipif(
    lab_mariadb.find_mariadbd() is None,
    reason="mariadbd not installed (apt-get install mariadb-server)")

BIN = Path(sys.executable).parent
SUBPROJECT = "networking-dvs-fabric"
TABLE = "dvs_fabric_journal"
RESOURCES = 25
ROWS_PER_RESOURCE = 16
SPREAD_US = 4_000_000
EXTRA_RECORDS_PER_WORKER = 60


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A fresh database of our own (dropped at the end)."""
    with own_database(tmp_path_factory, "journal") as db:
        yield db


def _manage(conf: Path, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "neutron-db-manage"), "--config-file", str(conf), *args],
        capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def migrated(database, tmp_path_factory):
    """Our branch alone, migrated into the fresh database by neutron-db-manage."""
    conf = tmp_path_factory.mktemp("journal-conf") / "neutron.conf"
    conf.write_text(f"[database]\nconnection = {database.url}\n")
    output = _manage(conf, "--subproject", SUBPROJECT, "upgrade", "head")
    assert f"Running upgrade for {SUBPROJECT}" in output
    assert "8a1ed9479e95, The persistent journal" in output
    return conf, output


def test_migration_creates_the_models_schema(database, migrated):
    conf, _ = migrated
    engine = sa.create_engine(database.url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert set(inspector.get_table_names()) == set(models.OUR_TABLES) | {
                "alembic_version_dvs_fabric"}
            assert migration.schema_diff(conn) == []
            precision = dict(conn.execute(sa.text(
                "SELECT column_name, datetime_precision FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = :t "
                "AND data_type = 'datetime'"), {"t": TABLE}).all())
            assert precision == {"next_attempt_at": 6, "created_at": 6,
                                 "updated_at": 6, "claimed_at": 6}
            engine_name = conn.execute(sa.text(
                "SELECT engine FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = :t"),
                {"t": TABLE}).scalar()
            assert engine_name == "InnoDB"
    finally:
        engine.dispose()
    current = _manage(conf, "--subproject", SUBPROJECT, "current")
    assert all(head in current for head in migration.head_revisions())
    # Idempotent: a second upgrade and a stamp change nothing.
    _manage(conf, "--subproject", SUBPROJECT, "upgrade", "head")
    _manage(conf, "--subproject", SUBPROJECT, "stamp", "heads")


def test_upgrade_heads_of_all_projects_includes_ours(database, tmp_path):
    """What the MariaDB lab runs: Neutron's migrations, then ours; and stamp heads."""
    other = f"{database.database}_all"
    with database.admin_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{other}` CHARACTER SET utf8mb4")
        for host in ("localhost", "127.0.0.1"):
            cur.execute(f"GRANT ALL PRIVILEGES ON `{other}`.* TO %s@%s",
                        (database.user, host))
    url = database.url.replace(f"/{database.database}?", f"/{other}?")
    conf = tmp_path / "neutron.conf"
    conf.write_text(f"[database]\nconnection = {url}\n")
    try:
        output = _manage(conf, "upgrade", "heads")
        assert output.index("Running upgrade for neutron") < output.index(
            f"Running upgrade for {SUBPROJECT}")
        output = _manage(conf, "stamp", "heads")
        assert f"Running stamp for {SUBPROJECT}" in output
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                tables = sa.inspect(conn).get_table_names()
                assert {"networks", "ports", TABLE} <= set(tables)
                versions = {row[0] for row in conn.execute(
                    sa.text(f"SELECT version_num FROM {migration.VERSION_TABLE}"))}
                assert versions == migration.head_revisions()
                assert migration.schema_diff(conn) == []
        finally:
            engine.dispose()
    finally:
        with database.admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{other}`")


# The child: claims in a loop with small random limits, holds each resource a
# little, checks in the database that nobody else holds it, completes it, and
# now and then records a new row for a random resource.  It writes one JSON
# line per handled entry: the interval [after claim, before complete] on the
# machine-wide monotonic clock lies inside its real hold.
CHILD = textwrap.dedent("""
    import json, os, random, sys, time
    from oslo_config import cfg
    from oslo_db import options
    url, out_path, go_path, extra, seed = sys.argv[1:6]
    options.set_defaults(cfg.CONF, connection=url)
    cfg.CONF([], project="dvsf-journal-test", default_config_files=[])
    from neutron_lib import context as n_context
    from neutron_lib.db import api as db_api
    import sqlalchemy as sa
    from networking_dvs_fabric.db import models
    from networking_dvs_fabric.journal import store

    rng = random.Random(int(seed))
    ctx = n_context.get_admin_context()
    me = store.make_worker_id()
    J = models.JournalEntry
    to_record = int(extra)
    open(out_path + ".ready", "w").close()
    while not os.path.exists(go_path):
        time.sleep(0.005)
    deadline = time.monotonic() + 240
    with open(out_path, "w") as out:
        while time.monotonic() < deadline:
            if to_record and rng.random() < 0.3:
                store.record(ctx, "network", "r%03d" % rng.randrange(%(resources)d),
                             "late")
                to_record -= 1
            entries = store.claim(ctx, me, rng.randint(1, 12))
            if not entries:
                with db_api.CONTEXT_READER.using(ctx):
                    left = ctx.session.query(J).filter(J.state != "completed").count()
                if left == 0 and not to_record:
                    break
                time.sleep(0.002)
                continue
            spans = []
            for entry in entries:
                start = time.monotonic_ns()
                with db_api.CONTEXT_READER.using(ctx):
                    others = ctx.session.query(J.id).filter(
                        J.resource_type == entry.resource_type,
                        J.resource_id == entry.resource_id,
                        J.state == "processing", J.claimed_by != me).count()
                time.sleep(rng.random() * 0.02)
                spans.append((start, others))
            end = time.monotonic_ns()
            # The whole batch settled at once (one UPDATE), one by one now and then.
            if rng.random() < 0.7:
                held = store.settle(ctx, [store.Settlement.completed(e) for e in entries])
            else:
                held = [store.complete(ctx, entry) for entry in entries]
            for entry, (start, others), ok in zip(entries, spans, held):
                out.write(json.dumps({"worker": me, "resource": entry.resource_id,
                                      "rows": list(entry.row_ids), "start": start,
                                      "end": end, "others": others,
                                      "completed": ok}) + "\\n")
    print(me)
""").replace("%(resources)d", str(RESOURCES))


def test_two_processes_claim_concurrently(database, migrated, tmp_path):
    engine = sa.create_engine(database.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {TABLE}"))
        go = tmp_path / "go"
        procs = []
        for n in range(2):
            out = tmp_path / f"worker{n}.jsonl"
            argv = [sys.executable, "-c", CHILD, database.url, str(out), str(go),
                    str(EXTRA_RECORDS_PER_WORKER), str(n)]
            procs.append((subprocess.Popen(argv, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True), out))
        try:
            deadline = time.monotonic() + 120
            while not all(Path(f"{out}.ready").exists() for _, out in procs):
                assert all(proc.poll() is None for proc, _ in procs)
                assert time.monotonic() < deadline
                time.sleep(0.05)
            # Interleaved ids, and rows that fall due at random moments over a
            # few seconds: a resource's next row often falls due while another
            # of its rows is being handled, which is what must wait.
            rng = random.Random(7)
            rows = [{"rid": f"r{i:03d}", "op": f"op{n}",
                     "due": rng.randrange(SPREAD_US) if n else 0}
                    for n in range(ROWS_PER_RESOURCE) for i in range(RESOURCES)]
            with engine.begin() as conn:
                conn.execute(sa.text(
                    f"INSERT INTO {TABLE} (resource_type, resource_id, operation, "
                    "state, attempts, next_attempt_at, created_at, updated_at) VALUES "
                    "('network', :rid, :op, 'pending', 0, "
                    "UTC_TIMESTAMP(6) + INTERVAL :due MICROSECOND, "
                    "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"), rows)
            go.write_text("")
            results = []
            for proc, out in procs:
                stdout, stderr = proc.communicate(timeout=300)
                assert proc.returncode == 0, stderr[-3000:]
                results.append([json.loads(line) for line in out.read_text().splitlines()])
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

        with engine.connect() as conn:
            states = dict(conn.execute(sa.text(
                f"SELECT state, COUNT(*) FROM {TABLE} GROUP BY state")).all())
            db_rows = dict(conn.execute(sa.text(
                f"SELECT id, resource_id FROM {TABLE}")).all())
    finally:
        engine.dispose()

    total = RESOURCES * ROWS_PER_RESOURCE + 2 * EXTRA_RECORDS_PER_WORKER
    assert states == {"completed": total}
    handled = [item for worker in results for item in worker]
    # Both really worked, nobody else was ever seen holding a claimed resource.
    assert all(len(worker) > 30 for worker in results), [len(w) for w in results]
    assert all(item["completed"] for item in handled)
    assert not [item for item in handled if item["others"]]

    # Every row completed exactly once, by a claim of its own resource.
    claimed = collections.Counter(row for item in handled for row in item["rows"])
    assert set(claimed) == set(db_rows) and set(claimed.values()) == {1}
    assert all(db_rows[row] == item["resource"] for item in handled for row in item["rows"])

    # No resource held by both at once; its rows handled in id order.
    by_resource: dict[str, list[dict]] = collections.defaultdict(list)
    for item in handled:
        by_resource[item["resource"]].append(item)
    holders_per_resource = []
    for resource, items in by_resource.items():
        items.sort(key=lambda item: item["start"])
        holders_per_resource.append(len({item["worker"] for item in items}))
        for before, after in zip(items, items[1:]):
            assert before["end"] < after["start"], (resource, before, after)
            assert max(before["rows"]) < min(after["rows"]), (resource, before, after)
        for item in items:
            assert item["rows"] == sorted(item["rows"])
    # The two workers did share resources (else the test proves little).
    assert max(holders_per_resource) == 2


# The child: on a fresh table, (1) claims and settles batches of 10 and of 100
# resources (two rows each) counting the statements of each call; (2) claims while
# another connection holds a lock on the oldest row of one resource, as a worker in
# the middle of its claim does; (3) settles a claim that was released as stale and
# taken by another worker meanwhile.  Prints one JSON object.
COSTS = textwrap.dedent("""
    import json, sys
    from oslo_config import cfg
    from oslo_db import options
    url = sys.argv[1]
    options.set_defaults(cfg.CONF, connection=url)
    cfg.CONF([], project="dvsf-journal-test", default_config_files=[])
    from neutron_lib import context as n_context
    from neutron_lib.db import api as db_api
    import sqlalchemy as sa
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from networking_dvs_fabric.db import models
    from networking_dvs_fabric.journal import store

    ctx = n_context.get_admin_context()
    me = store.make_worker_id()
    J = models.JournalEntry
    sent = []
    event.listen(Engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: sent.append(statement))

    def counted(call, *args, **kwargs):
        del sent[:]
        result = call(*args, **kwargs)
        return result, len(sent), [s for s in sent if "SKIP LOCKED" in s]

    def states():
        with db_api.CONTEXT_READER.using(ctx):
            return {row.id: [row.resource_id, row.state, row.claimed_by]
                    for row in ctx.session.query(J)}

    out = {"costs": {}}
    for count in (10, 100):
        names = ["c%d-%03d" % (count, i) for i in range(count)]
        store.record_many(ctx, "network", names, "create")
        store.record_many(ctx, "network", names, "update")
        entries, claim_n, skip_locked = counted(store.claim, ctx, me, 500)
        settlements = [store.Settlement.completed(e) if i % 2 else
                       store.Settlement.retry(e, "away %d" % i, 60)
                       for i, e in enumerate(entries)]
        held, settle_n, _ = counted(store.settle, ctx, settlements)
        out["costs"][count] = {
            "claimed": [e.resource_id for e in entries],
            "rows": [list(e.row_ids) for e in entries],
            "claim_statements": claim_n, "settle_statements": settle_n,
            "skip_locked": len(skip_locked), "held": held}
        _, record_n, _ = counted(store.record_and_claim, ctx, me, "network",
                                 ["rc%d-%03d" % (count, i) for i in range(count)])
        out["costs"][count]["record_and_claim_statements"] = record_n
    with db_api.CONTEXT_WRITER.using(ctx):
        ctx.session.query(J).delete()

    # (2) P's oldest row locked by "another claimer"; its newer row is not locked.
    store.record(ctx, "network", "P")
    store.record(ctx, "network", "Q")
    store.record(ctx, "network", "P", "update")
    rows = sorted(states())
    other = sa.create_engine(url)
    conn = other.connect()
    trans = conn.begin()
    conn.execute(sa.text("SELECT id FROM dvs_fabric_journal WHERE id = :id FOR UPDATE"),
                 {"id": rows[0]})
    while_locked = [(e.resource_id, list(e.row_ids)) for e in store.claim(ctx, me, 10)]
    trans.rollback()
    conn.close()
    other.dispose()
    after = [(e.resource_id, list(e.row_ids)) for e in store.claim(ctx, me, 10)]
    out["partly_locked"] = {"rows": rows, "while_locked": while_locked, "after": after}
    with db_api.CONTEXT_WRITER.using(ctx):
        ctx.session.query(J).delete()

    # (3) A released as stale and taken by another worker; B still held.
    store.record(ctx, "network", "A")
    (a,) = store.claim(ctx, me, 1)
    store.release_stale_claims(ctx, host="elsewhere", alive=lambda pid: True, timeout=-1)
    (taken,) = store.claim(ctx, "other:1:x", 1)
    store.record(ctx, "network", "B")
    (b,) = store.claim(ctx, me, 1)
    held = store.settle(ctx, [store.Settlement.completed(a), store.Settlement.completed(b)])
    out["guard"] = {"held": held, "states": sorted(states().values())}
    print(json.dumps(out))
""")


def test_batch_costs_partly_locked_resources_and_the_settle_guard(database, migrated):
    engine = sa.create_engine(database.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {TABLE}"))
            version = conn.execute(sa.text("SELECT VERSION()")).scalar()
    finally:
        engine.dispose()
    result = subprocess.run([sys.executable, "-c", COSTS, database.url],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    # (1) The same statements for 10 entries and for 100; SKIP LOCKED (MariaDB >= 10.6).
    few, many = out["costs"]["10"], out["costs"]["100"]
    assert len(few["claimed"]) == 10 and len(many["claimed"]) == 100, version
    assert all(len(rows) == 2 and rows == sorted(rows) for rows in many["rows"])
    assert few["held"] == [True] * 10 and many["held"] == [True] * 100
    for key in ("claim_statements", "settle_statements", "record_and_claim_statements"):
        assert few[key] == many[key], (key, few, many)
    assert many["claim_statements"] <= 6 and many["settle_statements"] <= 3, many
    assert many["skip_locked"] == 1, (version, many)

    # (2) P partly locked by another claimer: skipped whole (its unlocked newer row
    # is not taken ahead of the locked older one); all of it once the lock goes.
    partly = out["partly_locked"]
    p1, q1, p2 = partly["rows"]
    assert partly["while_locked"] == [["Q", [q1]]]
    assert partly["after"] == [["P", [p1, p2]]]

    # (3) The old holder's settle leaves the other worker's claim alone.
    guard = out["guard"]
    assert guard["held"] == [False, True]
    assert [state[:2] for state in guard["states"]] == [["A", "processing"],
                                                        ["B", "completed"]]
    assert guard["states"][0][2] == "other:1:x"
