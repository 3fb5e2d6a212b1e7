"""The fabric worker's full sync: at start, one process at a time, never undoing newer work.

fabric_hwvtep and vsphere_dvs on Neutron's ML2 test base with the real vCenter
simulator and real hardware_vtep leaves (ovsdb-servers).  Drift is made on the
leaves with ``vtep-ctl``, as an operator would; what the leaves hold is read back
with ``vtep-ctl``.  Where a VM's location matters, the test writes it as the vCenter
watcher does (``db/locations.py``, then a journal entry for the network).  "Another
process" is a holder of the ``full-sync`` lease taken in the test.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Callable
from unittest import mock

import dvs_ml2_base as base
import fabric_base
from fabric_base import bindings, logical_switches
from neutron.db import segments_db

from networking_dvs_fabric import names
from networking_dvs_fabric.db import locations
from networking_dvs_fabric.fabric.worker import FabricWorker
from networking_dvs_fabric.journal import lease, store
from networking_dvs_fabric.journal import worker as journal_worker
from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.lab.leaves import LeafSwitch
from networking_dvs_fabric.sync import audit as audit_mod
from networking_dvs_fabric.sync import full_sync as full_sync_mod
from networking_dvs_fabric.sync.full_sync import FullSync

_FABRIC = fabric_base.ModuleFabric("full-sync-unit-")
H0, H1, H2 = "DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"     # behind leaf1, leaf2, leaf3 (swp1)
IP = {leaf.name: leaf.tunnel_ip for leaf in lab_topology.leaves()}
ELSEWHERE = "other-host:4242:0badc0de"                   # another process's worker


def setUpModule() -> None:
    _FABRIC.start()


def tearDownModule() -> None:
    _FABRIC.stop()


def leaf(name: str) -> LeafSwitch:
    return _FABRIC.leaf(name)


def ls(network: dict) -> str:
    return f"dvsf-{network['id']}"


class FullSyncTestCase(fabric_base.FabricTestCase):
    shared = _FABRIC.sim
    fabric_leaves = _FABRIC.leaves
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs"]

    def bound_network(self, name: str = "tenant") -> tuple[dict, int]:
        """A VXLAN network with a port bound to cluster DC0_C0, programmed; its VLAN."""
        net = self.vxlan_network(name)
        self.make_port(net["id"], host=base.HOST_C0)
        self.converge()
        return net, self.vlan_of(net)

    def vlan_of(self, network: dict) -> int:
        found = [s["segmentation_id"] for s in segments_db.get_network_segments(
            self.ctx, network["id"], filter_dynamic=True)]
        self.assertEqual(1, len(found), found)
        return found[0]

    def seen_at(self, port: dict, esxi_host: str) -> None:
        """The port's VM runs on ``esxi_host``: what the vCenter watcher records."""
        vm = f"vm-{port['id'][:8]}"
        locations.set_vm(self.ctx, vm, [locations.Seen(port["id"], vm, vm, esxi_host,
                                                        port["mac_address"], None)])
        store.record(self.ctx, names.RESOURCE_NETWORK, port["network_id"], "location")

    def full_sync(self) -> FullSync:
        return FullSync(self.fabric.runtime, self.worker.sync)

    @staticmethod
    def audit_held(part: Callable[[audit_mod.Parts], bool]):
        """(entered, go_on, patch): while ``patch`` is on, the audit of a ``part``
        sets ``entered`` and waits for ``go_on`` (at most 60 s) before it reads."""
        entered, go_on = threading.Event(), threading.Event()
        real_audit = audit_mod.audit

        def held(context, parts):
            if part(parts):
                entered.set()
                go_on.wait(60)
            return real_audit(context, parts)
        return entered, go_on, mock.patch.object(full_sync_mod, "audit", side_effect=held)

    def drift(self) -> tuple[dict, int]:
        """A programmed network whose binding on leaf1 swp1 someone removed."""
        net, vlan = self.bound_network()
        leaf("leaf1").vtep_ctl("unbind-ls", "leaf1", "swp1", str(vlan))
        self.assertEqual({}, bindings(leaf("leaf1"), "swp1"))
        return net, vlan


class TestFullSyncAtStart(FullSyncTestCase):

    def test_drift_made_while_no_worker_ran_is_repaired_when_a_worker_starts(self):
        net, vlan = self.drift()
        # A periodic-worker process starts: its fabric worker's first pass.
        workers = self.fabric.get_workers()
        fabric_worker = next(w for w in workers if isinstance(w, FabricWorker))
        fabric_worker.run_once()
        self.assertEqual({vlan: ls(net)}, bindings(leaf("leaf1"), "swp1"))
        self.assertIsNone(lease.holder_of(self.ctx, full_sync_mod.LEASE),
                          "the full sync's lease is released after it")


class TestLeavesOpened(FullSyncTestCase):

    def test_leaves_that_do_not_answer_are_waited_for_together(self):
        # Two switches whose OVSDB accepts connections but never answers (their server
        # stopped, as a hung switch): each costs the connect timeout.  A worker that
        # starts asks the leaves side by side (eight at once), so that dead leaves cost
        # a timeout per eight, not one each: both are being asked at the same moment.
        self.fabric.runtime.close_fabric()
        hung = [leaf("leaf2"), leaf("leaf3")]
        for item in hung:
            os.kill(item.pid, signal.SIGSTOP)
            self.addCleanup(os.kill, item.pid, signal.SIGCONT)
        full = self.full_sync()
        asking = threading.Thread(target=full.due)
        asking.start()
        both = False
        while asking.is_alive() and not both:
            both = all(_connections_to(item.port) for item in hung)
            time.sleep(0.01)
        asking.join()
        self.assertTrue(both, "the hung leaves were asked one after the other")
        known = self.fabric.runtime.fabric.known_identity
        self.assertIsNotNone(known("leaf1"), "the leaf that answers was not opened")
        self.assertEqual([None, None], [known("leaf2"), known("leaf3")])


def _connections_to(port: int) -> int:
    """Established TCP connections from this machine to 127.0.0.1:``port``."""
    found = 0
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in list(table)[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rpartition(":")[2], 16) == port:
                found += 1
    return found


class TestOneAtATime(FullSyncTestCase):

    def test_a_process_finding_the_lease_held_runs_no_full_sync(self):
        net, vlan = self.drift()
        self.assertTrue(lease.acquire(self.ctx, full_sync_mod.LEASE, ELSEWHERE, 60))
        full = self.full_sync()
        with self.assertLogs(full_sync_mod.LOG.name, "INFO") as logged:
            full.run_if_due(self.ctx)
        self.assertEqual((0, 1), (full.runs, full.skipped))
        self.assertIn(f"full sync (worker start) not run here: {ELSEWHERE} runs one now",
                      "\n".join(logged.output))
        self.assertEqual({}, bindings(leaf("leaf1"), "swp1"))
        self.assertEqual(ELSEWHERE, lease.holder_of(self.ctx, full_sync_mod.LEASE)[0])
        # The other process's sync covers this start: nothing is due here after it.
        lease.release(self.ctx, full_sync_mod.LEASE, ELSEWHERE)
        full.run_if_due(self.ctx)
        self.assertEqual(0, full.runs)

    def test_a_changed_identity_waits_for_the_lease_then_is_synced(self):
        net, vlan = self.bound_network()
        full = self.full_sync()
        full.run_if_due(self.ctx)                        # the start sync: nothing to do
        self.assertEqual(1, full.runs)
        self.assertTrue(lease.acquire(self.ctx, full_sync_mod.LEASE, ELSEWHERE, 60))
        # leaf2 comes back as a new switch (an empty database) while another process's
        # full sync runs: that one may have read leaf2 before, so this one must wait.
        restarted = leaf("leaf2")
        restarted.stop()
        restarted.start(fresh=True)
        self.assertNotIn(ls(net), logical_switches(restarted))

        def waiting() -> bool:
            full.run_if_due(self.ctx)
            return full.skipped > 0
        self.assertTrue(base.wait_for(waiting, timeout=30, interval=0.5),
                        "the new identity of leaf2 was never seen")
        self.assertEqual(1, full.runs)
        self.assertNotIn(ls(net), logical_switches(restarted))
        lease.release(self.ctx, full_sync_mod.LEASE, ELSEWHERE)
        full.run_if_due(self.ctx)
        self.assertEqual(2, full.runs)
        self.assertIn(ls(net), logical_switches(restarted))
        self.assertEqual({vlan: ls(net)}, bindings(restarted, "swp1"))

    def test_the_lease_is_held_while_the_full_sync_runs_and_released_after(self):
        self.drift()
        seen: list = []
        real_audit = audit_mod.audit

        def audit_noting_the_lease(context, parts):
            seen.append(lease.holder_of(context, full_sync_mod.LEASE))
            return real_audit(context, parts)
        full = self.full_sync()
        with mock.patch.object(full_sync_mod, "audit", side_effect=audit_noting_the_lease):
            full.run_if_due(self.ctx)
        self.assertEqual(1, full.runs)
        self.assertIsNotNone(seen[0])
        self.assertEqual(full._holder, seen[0][0])
        self.assertIsNone(lease.holder_of(self.ctx, full_sync_mod.LEASE))


class TestNeverOlderState(FullSyncTestCase):

    def test_a_vmotion_recorded_after_the_audit_ends_with_the_mac_at_the_new_leaf(self):
        net = self.vxlan_network()
        p = self.make_port(net["id"], host=base.HOST_C0)
        q = self.make_port(net["id"], host=base.HOST_C0)
        self.seen_at(p, H0)                              # behind leaf1
        self.seen_at(q, H2)                              # behind leaf3
        self.converge()
        mac = p["mac_address"]
        self.assertEqual(IP["leaf1"], leaf("leaf3").remote_macs(ls(net)).get(mac))
        # Drift: someone removed p's MAC on leaf3.
        leaf("leaf3").vtep_ctl("del-ucast-remote", ls(net), mac)

        # The full sync's audit reads the state (p behind leaf1).  Then, before its
        # repair writes, p's VM moves to H1 (leaf2): the watcher records it and the
        # fabric worker converges it.  A hook around the repair makes that happen
        # exactly there (the real interleaving cannot be forced otherwise).
        real_repair = full_sync_mod.repair

        def vmotion_then_repair(*args, **kwargs):
            self.seen_at(p, H1)
            self.converge()
            self.assertEqual(IP["leaf2"], leaf("leaf3").remote_macs(ls(net)).get(mac))
            return real_repair(*args, **kwargs)
        full = self.full_sync()
        with mock.patch.object(full_sync_mod, "repair", side_effect=vmotion_then_repair):
            full.run_if_due(self.ctx)
        self.assertEqual(1, full.runs)
        for name in ("leaf1", "leaf3"):
            self.assertEqual(IP["leaf2"], leaf(name).remote_macs(ls(net)).get(mac), name)
        self.assertNotIn(mac, leaf("leaf2").remote_macs(ls(net)))
        self.converge()
        self.assertEqual(IP["leaf2"], leaf("leaf3").remote_macs(ls(net)).get(mac))
        parts = audit_mod.Parts.of(self.fabric.runtime)
        self.assertEqual([], audit_mod.audit(self.ctx, parts).drifts)

    def test_a_port_group_no_longer_needed_after_the_audit_is_not_made_again(self):
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.converge()
        # Drift: someone deleted the network's port group in vCenter.
        for pg in self.vc.port_groups_of(net["id"]):
            self.vc.destroy_port_group(pg)
        # The audit finds it missing; before the repair writes, the port goes (hook
        # around the repair, as above): no port group is needed any more.
        real_repair = full_sync_mod.repair

        def unbind_then_repair(*args, **kwargs):
            self.delete_port(port["id"])
            return real_repair(*args, **kwargs)
        full = self.full_sync()
        with mock.patch.object(full_sync_mod, "repair", side_effect=unbind_then_repair):
            full.run_if_due(self.ctx)
        self.assertEqual(1, full.runs)
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

    def test_one_refused_network_does_not_stop_the_repair_of_the_others_on_a_leaf(self):
        net_a, vlan_a = self.bound_network("a")
        net_b, vlan_b = self.bound_network("b")
        on_leaf1 = leaf("leaf1")
        self.assertEqual({vlan_a: ls(net_a), vlan_b: ls(net_b)}, bindings(on_leaf1, "swp1"))
        # Drift: both bindings gone from leaf1; a's (port, VLAN) now bound to a logical
        # switch the project does not own.
        for vlan in (vlan_a, vlan_b):
            on_leaf1.vtep_ctl("unbind-ls", "leaf1", "swp1", str(vlan))
        on_leaf1.vtep_ctl("add-ls", "someone-elses-ls")
        on_leaf1.vtep_ctl("bind-ls", "leaf1", "swp1", str(vlan_a), "someone-elses-ls")

        full = self.full_sync()
        with self.assertLogs(full_sync_mod.LOG.name, "WARNING") as logged:
            full.run_if_due(self.ctx)
        self.assertEqual({vlan_a: "someone-elses-ls", vlan_b: ls(net_b)},
                         bindings(on_leaf1, "swp1"))
        text = "\n".join(logged.output)
        self.assertIn(f"network {net_a['id']}", text)
        self.assertIn("someone-elses-ls", text)
        self.assertNotIn(f"network {net_b['id']}", text)
        failed = {r["resource_id"] for r in store.rows(self.ctx, states=[store.FAILED])}
        self.assertEqual({net_a["id"]}, failed)


class TestPrompt(FullSyncTestCase):
    """The full sync's two parts do not wait for, or hold up, the fabric worker."""

    def test_a_replaced_leaf_is_reprogrammed_without_waiting_for_the_housekeeping(self):
        net, vlan = self.bound_network()
        workers = self.fabric.get_workers()
        fabric_worker = next(w for w in workers if isinstance(w, FabricWorker))
        fabric_worker.run_once()                         # its start sync, by hand
        # From now on neither the housekeeping nor the poll comes within the test:
        # whatever the worker does next, something woke it.
        fabric_worker.settings = dataclasses.replace(fabric_worker.settings,
                                                     poll_interval=3600.0)
        long_housekeeping = mock.patch.object(journal_worker, "HOUSEKEEPING_INTERVAL",
                                              3600.0)
        long_housekeeping.start()
        self.addCleanup(long_housekeeping.stop)
        fabric_worker.start()
        self.addCleanup(fabric_worker.wait)
        self.addCleanup(fabric_worker.stop)
        # leaf2 is replaced: a switch with an empty database at the same address.
        replaced = leaf("leaf2")
        replaced.stop()
        replaced.start(fresh=True)
        self.assertNotIn(ls(net), logical_switches(replaced))
        self.assertTrue(base.wait_for(lambda: bindings(replaced, "swp1") == {vlan: ls(net)},
                                      timeout=60, interval=0.2),
                        "leaf2 was not reprogrammed before the housekeeping")
        self.assertIn(ls(net), logical_switches(replaced))

    def test_the_port_groups_part_does_not_hold_up_the_fabric_workers_batches(self):
        first = self.vxlan_network("first")
        self.make_port(first["id"], host=base.HOST_C0)
        self.converge()
        # Drift: someone deleted the first network's port group in vCenter.
        for pg in self.vc.port_groups_of(first["id"]):
            self.vc.destroy_port_group(pg)
        # A vCenter slow to list its port groups, which the simulator cannot be made
        # to be: the port groups' audit waits for the test (an injected delay).
        entered, go_on, held = self.audit_held(lambda parts: parts.vsphere is not None)
        full = self.full_sync()
        full.start()
        self.addCleanup(full.join)
        self.addCleanup(full.stop)
        self.addCleanup(go_on.set)
        with held:
            full.run_if_due(self.ctx)                    # the start sync
            self.assertTrue(entered.wait(30), "the port groups' part never started")
            # Meanwhile a network is bound: the fabric worker programs it at once.
            second = self.vxlan_network("second")
            self.make_port(second["id"], host=base.HOST_C0)
            self.converge()
            self.assertIn(ls(second), logical_switches(leaf("leaf1")))
            self.assertEqual(2, len(bindings(leaf("leaf1"), "swp1")),
                             "both networks bound on leaf1 swp1")
            self.assertEqual([], self.vc.port_groups_of(first["id"]))
            self.assertEqual(full._holder, lease.holder_of(self.ctx, full_sync_mod.LEASE)[0],
                             "the lease is held while the port groups' part runs")
            go_on.set()
            self.assertTrue(full.wait_idle(60), "the port groups' part never ended")
        self.assertEqual(1, len(self.vc.port_groups_of(first["id"])))
        self.assertIsNone(lease.holder_of(self.ctx, full_sync_mod.LEASE),
                          "the lease is released after the port groups' part")

    def test_the_start_port_group_repair_comes_after_the_watchers_first_read(self):
        """A vCenter watcher in the same process reads where every VM runs first; the
        start's read of every port group waits for it (they share one interpreter),
        and the leaves' part does not."""
        net, vlan = self.bound_network()
        for pg in self.vc.port_groups_of(net["id"]):
            self.vc.destroy_port_group(pg)          # drift made while no worker ran
        runtime = self.fabric.runtime
        runtime.expect_watcher_read()
        self.addCleanup(runtime.watcher_read_done)
        full = self.full_sync()
        full.start()
        self.addCleanup(full.join)
        self.addCleanup(full.stop)
        full.run_if_due(self.ctx)                        # the start sync
        self.assertFalse(full.wait_idle(2), "the port groups' part did not wait")
        self.assertEqual([], self.vc.port_groups_of(net["id"]))
        runtime.watcher_read_done()                      # the watcher's read ended
        self.assertTrue(full.wait_idle(60), "the port groups' part never ended")
        self.assertEqual(1, len(self.vc.port_groups_of(net["id"])))

    def test_the_periodic_sync_of_the_leaves_does_not_hold_up_the_fabric_workers_batches(self):
        net, vlan = self.bound_network("first")
        full = self.full_sync()
        full.start()
        self.addCleanup(full.join)
        self.addCleanup(full.stop)
        full.run_if_due(self.ctx)                        # the start sync, inline
        self.assertTrue(full.wait_idle(60))
        # Drift on a leaf, then the interval is up.
        leaf("leaf1").vtep_ctl("unbind-ls", "leaf1", "swp1", str(vlan))
        full.interval = 1.0
        time.sleep(1.1)
        # An audit of the leaves as slow as at thousands of networks, which a test
        # cannot make in time: the leaves' audit waits for the test (injected delay).
        entered, go_on, held = self.audit_held(lambda parts: parts.fabric is not None)
        self.addCleanup(go_on.set)
        with held:
            housekeeping = threading.Thread(target=full.run_if_due, args=(self.ctx,))
            housekeeping.start()
            self.assertTrue(entered.wait(30), "the periodic sync never audited the leaves")
            housekeeping.join(30)
            self.assertFalse(housekeeping.is_alive(),
                             "the fabric worker's housekeeping waits for the leaves' audit")
            # Meanwhile a network is bound: the fabric worker programs it at once.
            second = self.vxlan_network("second")
            self.make_port(second["id"], host=base.HOST_C0)
            self.converge()
            self.assertIn(ls(second), logical_switches(leaf("leaf1")))
            self.assertEqual([ls(second)], list(bindings(leaf("leaf1"), "swp1").values()))
            self.assertEqual(full._holder, lease.holder_of(self.ctx, full_sync_mod.LEASE)[0],
                             "the lease is held while the leaves' part runs")
            go_on.set()
            self.assertTrue(full.wait_idle(60), "the periodic sync never ended")
        self.assertEqual(ls(net), bindings(leaf("leaf1"), "swp1").get(vlan),
                         "the periodic sync repaired the drift")
        self.assertEqual(2, len(bindings(leaf("leaf1"), "swp1")))
        self.assertIsNone(lease.holder_of(self.ctx, full_sync_mod.LEASE),
                          "the lease is released after the periodic sync")
