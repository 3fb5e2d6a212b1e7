"""Ports carried by the leaves are made ACTIVE on the completer's thread (issue 15).

The fabric worker's thread only converges the leaves and hands the carried ports to
its ``Completer``; ML2's status updates (80-300 ms a port) run there, giving way
while a batch is handled, so they no longer hold the next batch's leaves back.
Nothing is lost when telling fails or the process dies: the network converges
again and its ports are handed over again.  ML2, the simulator and real leaves as
in ``test_port_status.py``, on an SQLite file (``file_db.py``): the completer's
thread and the test's use the database at once.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from unittest import mock

import dvs_ml2_base as base
import fabric_base
import file_db
from neutron.db import provisioning_blocks
from neutron_lib import constants as n_const
from neutron_lib.callbacks import resources
from oslo_db import exception as db_exc

from networking_dvs_fabric import names
from networking_dvs_fabric.fabric import completer as completer_module
from networking_dvs_fabric.fabric import provisioning
from networking_dvs_fabric.fabric.completer import OPERATION, Completer
from networking_dvs_fabric.journal import store

_FABRIC = fabric_base.ModuleFabric("port-status-completer-")
ACTIVE, DOWN = n_const.PORT_STATUS_ACTIVE, n_const.PORT_STATUS_DOWN


def setUpModule() -> None:
    _FABRIC.start()


def tearDownModule() -> None:
    _FABRIC.stop()


class CompleterTestCase(fabric_base.FabricTestCase):
    shared = _FABRIC.sim
    fabric_leaves = _FABRIC.leaves
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs"]
    vni_ranges = ["5000:5999"]

    def _setup_database_fixtures(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="completer-db-"))
        self.addCleanup(shutil.rmtree, directory, True)
        fixture = file_db.FileDatabase(directory)
        self.useFixture(fixture)
        self.engine = fixture.engine

    def status(self, port_id: str) -> str:
        return self.show_port(port_id)["status"]

    def completer(self, start: bool = True) -> Completer:
        completer = Completer()
        self.worker.sync.completer = completer
        if start:
            completer.start()
            self.addCleanup(completer.join, 10)
            self.addCleanup(completer.stop)
        return completer

    def network_rows(self, network_id: str) -> list[dict]:
        return [r for r in store.rows(self.ctx, states=[store.PENDING, store.PROCESSING])
                if r["resource_type"] == names.RESOURCE_NETWORK
                and r["resource_id"] == network_id]

    def test_the_completer_makes_carried_ports_active_after_the_batch(self):
        completer = self.completer()
        net = self.vxlan_network()
        ports = [self.make_port(net["id"], host=base.HOST_C0) for _ in range(2)]
        with completer.busy():
            # While a batch is handled (here: held open around it) no port is told.
            self.converge()
            self.assertEqual(0, completer.told)
            self.assertEqual([DOWN, DOWN], [self.status(p["id"]) for p in ports])
        self.assertTrue(base.wait_for(
            lambda: all(self.status(p["id"]) == ACTIVE for p in ports), timeout=20))
        self.assertEqual(2, completer.told)
        self.assertEqual([], self.network_rows(net["id"]))

    def test_a_status_update_that_failed_converges_the_network_again(self):
        self.completer()            # running: it tells Neutron after each converge
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        update = self.driver.update_port_status
        calls: list[tuple] = []

        def fails_once(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                raise db_exc.DBConnectionError("the database went away")
            return update(*args, **kwargs)
        with mock.patch.object(self.driver, "update_port_status", side_effect=fails_once):
            self.converge()
            # The completer found the port still DOWN: a journal row for its network.
            self.assertTrue(base.wait_for(
                lambda: OPERATION in [r["operation"] for r in self.network_rows(net["id"])],
                timeout=20))
            self.assertEqual(DOWN, self.status(port["id"]))
            self.assertTrue(base.wait_for(
                lambda: not self.worker.run_once() and self.status(port["id"]) == ACTIVE,
                timeout=20))
        self.assertEqual(2, len(calls))

    def test_ports_left_down_by_a_dead_worker_are_found_at_the_next_start(self):
        dead = self.completer(start=False)          # its thread never runs: it "died"
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.converge()
        self.assertEqual(1, dead.pending())
        self.assertEqual(DOWN, self.status(port["id"]))
        self.assertEqual([], self.network_rows(net["id"]))      # the entry is done
        self.completer()                                        # the next process
        self.assertTrue(base.wait_for(lambda: self.network_rows(net["id"]), timeout=20))
        self.assertTrue(base.wait_for(
            lambda: not self.worker.run_once() and self.status(port["id"]) == ACTIVE,
            timeout=20))

    def test_a_port_whose_status_update_died_with_its_worker_is_made_active_at_the_next_start(self):
        """Neutron lifts a block in one transaction and updates the status in the next:
        a worker killed between the two (seen in a lab: three ports DOWN for good)
        leaves a carried port DOWN with no block, which nothing looked at again.  The
        next start gives it our block back and tells Neutron once more.  A port that is
        DOWN because it is administratively down is left alone.  (The kill falls between
        Neutron's two transactions: its block is removed without the status update, as
        ``provisioning_blocks.remove_provisioning_component`` alone does.)"""
        dead = self.completer(start=False)
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        down = self.make_port(net["id"], host=base.HOST_C0, admin_state_up=False)
        self.converge()
        self.assertEqual({port["id"], down["id"]}, set(dead._queue))
        for stranded in (port, down):
            provisioning_blocks.remove_provisioning_component(
                self.ctx, stranded["id"], resources.PORT, provisioning.ENTITY)
        self.assertEqual([DOWN, DOWN], [self.status(port["id"]), self.status(down["id"])])
        self.completer()                                        # the next process
        self.assertTrue(base.wait_for(
            lambda: not self.worker.run_once() and self.status(port["id"]) == ACTIVE,
            timeout=20))
        self.assertEqual(DOWN, self.status(down["id"]))
        self.assertEqual([], provisioning.hold_stranded(self.ctx))   # nothing left

    def test_the_start_recovery_is_tried_again_while_the_database_is_away(self):
        """The database away when a worker starts (injected: one failing read, which
        the real database cannot be made to do on cue): its recovery tries again, and
        a port a dead worker left DOWN is made ACTIVE all the same."""
        dead = self.completer(start=False)
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.converge()
        self.assertEqual(1, dead.pending())
        real = provisioning.hold_stranded
        attempts: list[int] = []

        def away_once(context):
            attempts.append(1)
            if len(attempts) == 1:
                raise db_exc.DBConnectionError("the database went away")
            return real(context)
        with mock.patch.object(provisioning, "hold_stranded", side_effect=away_once), \
                mock.patch.object(completer_module, "RECOVER_RETRY", 0.2):
            self.completer()
            self.assertTrue(base.wait_for(lambda: len(attempts) >= 2, timeout=20))
        self.assertTrue(base.wait_for(
            lambda: not self.worker.run_once() and self.status(port["id"]) == ACTIVE,
            timeout=20))
