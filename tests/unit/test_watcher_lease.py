"""Leases that hold while their holder works, and a watcher that lost one writes nothing.

The database is an SQLite file (``file_db.py``): the watcher's thread, its lease's
renewer thread, a second watcher and the test each use it on connections of their
own, as processes do.  vCenter is the real simulator.  "Another process" is another
holder name (or a second watcher) in this one.  A slow full read is injected (the
simulator answers at once): the test says so where it does.
"""
from __future__ import annotations

import datetime
import shutil
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import dvs_ml2_base as base
import file_db
from neutron.tests import base as n_base
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from oslo_config import cfg

from networking_dvs_fabric import opts, runtime
from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal import lease
from networking_dvs_fabric.journal.store import utcnow
from networking_dvs_fabric.vcenter.vm_state import MigrationStarting, VmGone
from networking_dvs_fabric.vcenter.vm_watch import VmWatch
from networking_dvs_fabric.watcher import worker as watcher_mod
from networking_dvs_fabric.watcher.worker import VCenterWatcher

_SIM = base.SharedSimulator()
NAME = "test-lease"
A, B = "host-a:101:aaaa0001", "host-b:202:bbbb0002"


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


def take_over(context, name: str, holder: str) -> None:
    """Another process takes the lease over, as ``acquire`` does once it expired (the
    old holder's renewals did not reach the database).  One UPDATE: a renewal of
    the old holder cannot slip in between the expiry and the takeover."""
    with db_api.CONTEXT_WRITER.using(context):
        count = context.session.query(models.Lease).filter(
            models.Lease.name == name).update(
            {models.Lease.holder: holder,
             models.Lease.expires_at: utcnow() + datetime.timedelta(seconds=60)},
            synchronize_session=False)
    assert count == 1


class FileDbTestCase(n_base.BaseTestCase):

    def setUp(self) -> None:
        super().setUp()
        directory = Path(tempfile.mkdtemp(prefix="lease-db-"))
        self.addCleanup(shutil.rmtree, directory, True)
        self.useFixture(file_db.FileDatabase(directory))
        self.ctx = n_context.get_admin_context()


class TestLease(FileDbTestCase):

    def test_a_renewer_keeps_the_lease_while_its_holder_is_busy(self):
        self.assertTrue(lease.acquire(self.ctx, NAME, A, 1.0))
        taken = []
        with lease.Renewer(NAME, A, 1.0, 0.2) as renewer:
            deadline = time.monotonic() + 2.5            # 2.5 ttls of "busy"
            while time.monotonic() < deadline:
                taken.append(lease.acquire(self.ctx, NAME, B, 1.0))
                time.sleep(0.1)
        self.assertFalse(any(taken), "another holder got the lease while it was renewed")
        self.assertGreater(renewer.renewals, 5)
        self.assertFalse(renewer.lost.is_set())
        time.sleep(1.1)                                  # no renewer: it expires
        self.assertTrue(lease.acquire(self.ctx, NAME, B, 1.0))

    def test_a_renewer_that_finds_its_lease_taken_says_so_and_stops(self):
        self.assertTrue(lease.acquire(self.ctx, NAME, A, 10.0))
        with self.assertLogs(lease.LOG.name, "WARNING") as logged:
            with lease.Renewer(NAME, A, 10.0, 0.1) as renewer:
                take_over(self.ctx, NAME, B)
                self.assertTrue(renewer.lost.wait(5))
        self.assertIn(f"lease {NAME}: {A} lost it to another holder", logged.output[0])
        self.assertEqual(B, lease.holder_of(self.ctx, NAME)[0])

    def test_a_fenced_write_is_refused_once_the_lease_is_not_the_writers(self):
        def fenced_write(holder: str) -> None:
            with db_api.CONTEXT_WRITER.using(self.ctx):
                lease.check_held(self.ctx, NAME, holder)
                self.ctx.session.add(_location("port-1", holder))
        self.assertTrue(lease.acquire(self.ctx, NAME, A, 10.0))
        fenced_write(A)
        self.assertRaises(lease.LeaseLost, fenced_write, B)
        take_over(self.ctx, NAME, B)
        self.assertRaises(lease.LeaseLost, fenced_write, A)
        self.assertEqual({"port-1": A}, _location_hosts(self.ctx))


class WatcherTestCase(FileDbTestCase):

    def setUp(self) -> None:
        super().setUp()
        sim = _SIM.get()
        opts.register_opts(cfg.CONF)
        for name, value in {"vcenter_url": sim.url, "username": sim.username,
                            "password": sim.password, "ca_file": str(sim.ca_file),
                            "datacenter": "DC0", "dvs_mappings": [f"{base.PHYSNET}:{base.DVS}"],
                            "host_mappings": [f"{base.HOST_C0}:DC0_C0"]}.items():
            cfg.CONF.set_override(name, value, group=opts.VSPHERE_GROUP)
        cfg.CONF.set_override("wakeup_targets", [], group=opts.FABRIC_GROUP)
        self.runtime = runtime.for_process()
        self.addCleanup(runtime.forget)

    def watcher(self, worker_id: str | None = None) -> VCenterWatcher:
        watcher = VCenterWatcher(self.runtime)
        if worker_id is not None:
            watcher.worker_id = worker_id           # start() would make one
        return watcher

    def started(self, watcher: VCenterWatcher) -> VCenterWatcher:
        watcher.start()
        self.addCleanup(watcher.wait)
        self.addCleanup(watcher.stop)
        return watcher


class TestWatcherFencing(WatcherTestCase):

    def test_a_watcher_whose_lease_was_taken_over_writes_nothing_after(self):
        old = self.watcher(A)
        self.assertTrue(lease.acquire(self.ctx, old.lease_name, A, 10.0))
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.ctx.session.add(_location("port-1", "DC0_C0_H0", vm="vm-1"))
        moving = MigrationStarting("vm-1", "DC0_C0_H1", 1, utcnow())
        self.assertEqual({"net-1"}, old.apply(self.ctx, [moving]))   # it holds: written
        # Its renewals stopped reaching the database; the lease expired and another
        # watcher took it over and saw the VM arrive on H1.
        take_over(self.ctx, old.lease_name, B)
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.ctx.session.query(models.PortLocation).update(
                {models.PortLocation.esxi_host: "DC0_C0_H1",
                 models.PortLocation.destination_host: None})
        # The old watcher still has changes to write from what it read before.
        self.assertRaises(lease.LeaseLost, old.apply, self.ctx, [VmGone("vm-1")])
        self.assertRaises(lease.LeaseLost, old.apply, self.ctx,
                          [MigrationStarting("vm-1", "DC0_C0_H2", 2, utcnow())])
        self.assertEqual({"port-1": "DC0_C0_H1"}, _location_hosts(self.ctx))
        with db_api.CONTEXT_READER.using(self.ctx):
            row = self.ctx.session.query(models.PortLocation).one()
            self.assertIsNone(row.destination_host)
        self.assertEqual(B, lease.holder_of(self.ctx, old.lease_name)[0])


class TestLocationAndJournalTogether(WatcherTestCase):

    def test_a_location_is_written_only_with_its_journal_row(self):
        watcher = self.watcher(A)
        self.assertTrue(lease.acquire(self.ctx, watcher.lease_name, A, 10.0))
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.ctx.session.add(_location("port-1", "DC0_C0_H0", vm="vm-1"))
        moving = MigrationStarting("vm-1", "DC0_C0_H1", 1, utcnow())
        # The journal's insert fails (a database fault injected: a real one cannot be
        # aimed at one statement): the location must not be written without it, or
        # the fabric would never hear of it (the next full read sees no change).
        with mock.patch.object(watcher_mod.store, "record_many",
                               side_effect=RuntimeError("journal insert failed")):
            self.assertRaises(RuntimeError, watcher.apply, self.ctx, [moving])
        with db_api.CONTEXT_READER.using(self.ctx):
            row = self.ctx.session.query(models.PortLocation).one()
            self.assertIsNone(row.destination_host)
            self.assertEqual(0, self.ctx.session.query(models.JournalEntry).count())
        # Once the database is right again, the same change is written with its row.
        self.assertEqual({"net-1"}, watcher.apply(self.ctx, [moving]))
        with db_api.CONTEXT_READER.using(self.ctx):
            row = self.ctx.session.query(models.PortLocation).one()
            self.assertEqual("DC0_C0_H1", row.destination_host)
            entries = self.ctx.session.query(models.JournalEntry).all()
        self.assertEqual([("network", "net-1", "location")],
                         [(e.resource_type, e.resource_id, e.operation) for e in entries])


class TestWatcherRenewal(WatcherTestCase):

    def setUp(self) -> None:
        super().setUp()
        for name, value in {"LEASE_TTL": 1.0, "RENEW_INTERVAL": 0.2,
                            "STANDBY_INTERVAL": 0.2}.items():
            patcher = mock.patch.object(watcher_mod, name, value)
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_the_lease_is_renewed_during_a_long_full_read(self):
        # vCenter slow to answer the full read (3 lease ttls): injected, as the
        # simulator answers at once.  Another process's watcher stands by meanwhile.
        reading, read = threading.Event(), threading.Event()
        real_resync = VmWatch.resync

        def slow_resync(watch):
            states = real_resync(watch)
            reading.set()
            time.sleep(3.0)
            read.set()
            return states
        with mock.patch.object(VmWatch, "resync", autospec=True, side_effect=slow_resync):
            first = self.started(self.watcher())
            self.assertTrue(reading.wait(20), "the first watcher never read vCenter")
            second = self.started(self.watcher())
            second_held = []
            while not read.is_set():
                second_held.append(second.holding)
                time.sleep(0.05)
            self.assertTrue(base.wait_for(lambda: first._watch is not None and
                                          first.holding, timeout=5))
            time.sleep(0.5)                       # the second tries again meanwhile
            second_held.append(second.holding)
        self.assertFalse(any(second_held),
                         "the second watcher took the lease during the first's full read")
        self.assertEqual(first.worker_id, lease.holder_of(self.ctx, first.lease_name)[0])

    def test_a_watcher_that_loses_its_lease_stops_watching_and_stands_by(self):
        watcher = self.started(self.watcher())
        self.assertTrue(base.wait_for(lambda: watcher.holding and watcher._watch is not None,
                                      timeout=20), "the watcher never started watching")
        take_over(self.ctx, watcher.lease_name, B)
        self.assertTrue(base.wait_for(lambda: not watcher.holding, timeout=5),
                        "the watcher did not notice it lost the lease")
        time.sleep(0.5)                           # standing by: it does not take it back
        self.assertEqual(B, lease.holder_of(self.ctx, watcher.lease_name)[0])


def _location(port_id: str, host: str, vm: str = "vm-0") -> models.PortLocation:
    return models.PortLocation(port_id=port_id, network_id="net-1", vm_moid=vm,
                               vm_name=vm, esxi_host=host, mac="fa:16:3e:00:00:01",
                               port_group=None, seen_at=utcnow())


def _location_hosts(context) -> dict[str, str]:
    with db_api.CONTEXT_READER.using(context):
        return {row.port_id: row.esxi_host
                for row in context.session.query(models.PortLocation)}
