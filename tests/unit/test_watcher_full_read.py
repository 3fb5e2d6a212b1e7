"""A full read written in one transaction leaves what VM-by-VM writes would have left.

The starting table has a row of every kind a restart meets: a VM that moved while
no watcher ran, one whose pending migration arrived, one gone, a NIC re-plugged into
another VM, a port Neutron no longer knows, a VM seen again unchanged.  The same
full read is written the old way (``set_vm`` per VM, then ``keep_only_vms``) and the
new way (``full_read.set_all``, one transaction); rows and changed networks must be
the same.  SQLite file database (``file_db.py``), Neutron's own port table.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import file_db
from neutron.db import models_v2
from neutron.tests import base as n_base
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api

from networking_dvs_fabric.db import locations, models
from networking_dvs_fabric.journal.store import utcnow
from networking_dvs_fabric.watcher import full_read

Location = models.PortLocation
# port -> network; "port-x" is not Neutron's (any more)
PORTS = {"port-moved": "net-1", "port-arrived": "net-2", "port-gone": "net-3",
         "port-replug": "net-4", "port-same": "net-5", "port-new": "net-6",
         "port-off": "net-7"}


def _row(port: str, vm: str, host: str, destination: str | None = None) -> Location:
    return Location(port_id=port, network_id=PORTS.get(port, "net-x"), vm_moid=vm,
                    vm_name=vm, esxi_host=host, mac=f"mac-{port}", port_group="pg",
                    destination_host=destination, seen_at=utcnow())


def _seen(port: str, vm: str, host: str) -> locations.Seen:
    return locations.Seen(port, vm, vm, host, f"mac-{port}", "pg")


STARTING = [
    _row("port-moved", "vm-1", "H0", destination="H2"),
    _row("port-arrived", "vm-2", "H0", destination="H1"),
    _row("port-gone", "vm-3", "H0"),
    _row("port-replug", "vm-4", "H0"),
    _row("port-same", "vm-5", "H0", destination="H2"),
    _row("port-x", "vm-6", "H0"),
    _row("port-off", "vm-7", "H0"),
]
# What the full read saw: vm-1 on H1 (not where it was going), vm-2 arrived on H1, vm-3 gone, port-replug
# now on vm-8, vm-5 unchanged, vm-6 still claims a port Neutron forgot, a new
# port on vm-9, vm-7 powered off (no ports seen).
SEEN = {"vm-1": [_seen("port-moved", "vm-1", "H1")],
        "vm-2": [_seen("port-arrived", "vm-2", "H1")],
        "vm-4": [],
        "vm-8": [_seen("port-replug", "vm-8", "H2")],
        "vm-5": [_seen("port-same", "vm-5", "H0")],
        "vm-6": [_seen("port-x", "vm-6", "H0")],
        "vm-9": [_seen("port-new", "vm-9", "H2")],
        "vm-7": []}


class TestFullReadInOneTransaction(n_base.BaseTestCase):

    def setUp(self) -> None:
        super().setUp()
        directory = Path(tempfile.mkdtemp(prefix="full-read-db-"))
        self.addCleanup(shutil.rmtree, directory, True)
        self.useFixture(file_db.FileDatabase(directory))
        self.ctx = n_context.get_admin_context()
        with db_api.CONTEXT_WRITER.using(self.ctx):
            for net in sorted(set(PORTS.values())):
                self.ctx.session.add(models_v2.Network(id=net, project_id="p", name=net,
                                                       admin_state_up=True, status="ACTIVE"))
            for port, net in PORTS.items():
                self.ctx.session.add(models_v2.Port(
                    id=port, project_id="p", network_id=net, mac_address=f"mac-{port}",
                    admin_state_up=True, status="ACTIVE", device_id="d",
                    device_owner="compute:nova"))

    def _load_starting_rows(self) -> None:
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.ctx.session.query(Location).delete()
            for row in STARTING:
                self.ctx.session.add(_row(row.port_id, row.vm_moid, row.esxi_host,
                                          row.destination_host))

    def _rows(self) -> dict[str, tuple]:
        with db_api.CONTEXT_READER.using(self.ctx):
            return {r.port_id: (r.network_id, r.vm_moid, r.vm_name, r.esxi_host, r.mac,
                                r.port_group, r.destination_host)
                    for r in self.ctx.session.query(Location)}

    def test_one_transaction_leaves_what_vm_by_vm_writes_leave(self):
        self._load_starting_rows()
        old_changed: set[str] = set()
        for vm, seen in SEEN.items():
            old_changed |= locations.set_vm(self.ctx, vm, seen)
        old_changed |= locations.keep_only_vms(
            self.ctx, [vm for vm, seen in SEEN.items() if seen])
        old_table = self._rows()

        self._load_starting_rows()
        with db_api.CONTEXT_WRITER.using(self.ctx):
            new_changed = full_read.set_all(
                self.ctx, [s for seen in SEEN.values() for s in seen])
        self.assertEqual(old_table, self._rows())
        self.assertEqual(old_changed, new_changed)
        # And what that is, spelled out.
        self.assertEqual({"port-moved", "port-arrived", "port-replug", "port-same",
                          "port-new"}, set(old_table))
        self.assertEqual(("net-1", "vm-1", "vm-1", "H1", "mac-port-moved", "pg", None),
                         old_table["port-moved"])
        self.assertIsNone(old_table["port-arrived"][6])
        self.assertEqual("H2", old_table["port-same"][6])      # still migrating
        self.assertEqual("vm-8", old_table["port-replug"][1])
        self.assertEqual({"net-1", "net-2", "net-3", "net-4", "net-6", "net-7", "net-x"},
                         new_changed)

    def test_seen_again_unchanged_changes_nothing_but_the_time_seen(self):
        self._load_starting_rows()
        before = self._rows()
        with db_api.CONTEXT_READER.using(self.ctx):
            seen_at = {r.port_id: r.seen_at for r in self.ctx.session.query(Location)}
        again = [_seen(r.port_id, r.vm_moid, r.esxi_host) for r in STARTING
                 if r.port_id in PORTS and r.destination_host is None]
        with db_api.CONTEXT_WRITER.using(self.ctx):
            changed = full_read.set_all(self.ctx, again)
        after = self._rows()
        self.assertEqual({"net-x", "net-1", "net-2", "net-5"}, changed)   # rows not seen
        for port in ("port-gone", "port-replug", "port-off"):
            self.assertEqual(before[port], after[port])
        with db_api.CONTEXT_READER.using(self.ctx):
            later = {r.port_id: r.seen_at for r in self.ctx.session.query(Location)}
        self.assertTrue(all(later[p] >= seen_at[p] for p in later))

    def test_many_vms_in_chunks(self):
        # More ports than one IN list holds: every one placed, none lost.
        count = full_read.CHUNK * 2 + 7
        with db_api.CONTEXT_WRITER.using(self.ctx):
            for n in range(count):
                self.ctx.session.add(models_v2.Port(
                    id=f"bulk-{n}", project_id="p", network_id="net-1",
                    mac_address=f"bulk-{n}", admin_state_up=True, status="ACTIVE",
                    device_id="d", device_owner="compute:nova"))
        seen = [_seen(f"bulk-{n}", f"vm-b{n}", "H0") for n in range(count)]
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.assertEqual({"net-1"}, full_read.set_all(self.ctx, seen))
        self.assertEqual(count, len(self._rows()))
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.assertEqual({"net-1"}, full_read.set_all(self.ctx, seen[:3]))
        self.assertEqual(3, len(self._rows()))
