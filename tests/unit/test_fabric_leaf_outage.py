"""A leaf down, or another worker busy, holds nothing back on the leaves that answer.

fabric_hwvtep on Neutron's ML2 test base with the real vCenter simulator and real
hardware_vtep leaves (ovsdb-servers; a stopped leaf is its server stopped).  The
physical networks have one VLAN each, so every new network gets the VLAN the last
one gave back.  What the leaves hold is read with ``vtep-ctl``.

"Another worker" is a journal claim taken in the test (``store.claim`` under
another worker id): its network's entry is in flight elsewhere while this worker
converges the next network, as with two ``neutron-periodic-workers`` processes.
"""
from __future__ import annotations

import time

import dvs_ml2_base as base
import fabric_base
from fabric_base import bindings, logical_switches
from neutron.db import segments_db
from neutron.tests.common import helpers as agent_helpers

from networking_dvs_fabric import names
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.lab.leaves import LeafSwitch

_FABRIC = fabric_base.ModuleFabric("fabric-outage-")
KVM_PHYSNET = lab_topology.KVM_PHYSICAL_NETWORK
VLAN = 100
H0, H1, H2 = "DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"     # behind leaf1, leaf2, leaf3 (swp1)


def setUpModule() -> None:
    _FABRIC.start()


def tearDownModule() -> None:
    _FABRIC.stop()


def leaf(name: str) -> LeafSwitch:
    return _FABRIC.leaf(name)


def ls(network: dict) -> str:
    return f"dvsf-{network['id']}"


class OutageTestCase(fabric_base.FabricTestCase):
    shared = _FABRIC.sim
    fabric_leaves = _FABRIC.leaves
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs", "openvswitch"]
    vlan_ranges = [f"{base.PHYSNET}:{VLAN}:{VLAN}", f"{KVM_PHYSNET}:{VLAN}:{VLAN}"]
    vni_ranges = ["5000:5999"]

    def vsphere_options(self):
        options = super().vsphere_options()
        options["host_mappings"] = [f"{base.HOST_C0}:DC0_C0", f"{base.HOST_C1}:DC0_C1"]
        return options

    def vlan_of(self, network: dict, physnet: str = base.PHYSNET) -> int:
        found = [s["segmentation_id"] for s in segments_db.get_network_segments(
            self.ctx, network["id"], filter_dynamic=True) if s["physical_network"] == physnet]
        self.assertEqual(1, len(found), found)
        return found[0]

    def journal(self, network: dict, states=None) -> list[dict]:
        return [r for r in store.rows(self.ctx, states=states, limit=1000)
                if r["resource_id"] == network["id"]]

    def failed(self) -> list[dict]:
        return store.rows(self.ctx, states=[store.FAILED])

    def stop_leaf(self, name: str) -> LeafSwitch:
        down = leaf(name)
        down.stop()
        self.addCleanup(lambda: down.running() or down.start())
        return down

    def claim_elsewhere(self) -> list[store.Entry]:
        """What another worker process has claimed and is busy with."""
        return store.claim(self.ctx, "worker-elsewhere", 10,
                           resource_types=(names.RESOURCE_NETWORK,))

    def work_until(self, check, timeout: float = 30.0) -> bool:
        """Run the worker's passes (as its loop would, retries included) until ``check``."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                return False
            if not self.worker.run_once():
                time.sleep(0.1)
        return True


class TestLeafDown(OutageTestCase):

    def test_removals_and_vlan_reuse_converge_on_the_leaves_that_answer(self):
        down = self.stop_leaf("leaf3")
        old = self.vxlan_network("old")
        port_a = self.make_port(old["id"], host=H0)
        port_b = self.make_port(old["id"], host=H1)
        self.assertTrue(self.work_until(lambda: ls(old) in logical_switches(leaf("leaf1"))
                                        and ls(old) in logical_switches(leaf("leaf2"))))
        self.assertEqual({VLAN: ls(old)}, bindings(leaf("leaf1"), "swp1"))
        self.assertIn(port_b["mac_address"], leaf("leaf1").remote_macs(ls(old)))

        # Deleted while leaf3 is down; the next network gets its VLAN back at once.
        for port in (port_a, port_b):
            self.delete_port(port["id"])
        self.delete_network(old["id"])
        new = self.vxlan_network("new")
        self.make_port(new["id"], host=H0)
        self.assertEqual(VLAN, self.vlan_of(new))

        def right() -> bool:
            return (bindings(leaf("leaf1"), "swp1") == {VLAN: ls(new)}
                    and set(logical_switches(leaf("leaf1"))) == {ls(new)}
                    and logical_switches(leaf("leaf2")) == {})
        self.assertTrue(self.work_until(right), (
            logical_switches(leaf("leaf1")), bindings(leaf("leaf1"), "swp1"),
            logical_switches(leaf("leaf2")), self.journal(old), self.journal(new)))
        self.assertEqual([], self.failed())
        # leaf3 was never read: both entries wait for it, nothing failed.
        for network in (old, new):
            rows = self.journal(network, states=[store.PENDING])
            self.assertTrue(rows and all("leaf3" in (r["last_error"] or "") for r in rows),
                            self.journal(network))

        down.start()
        self.assertTrue(self.work_until(lambda: not self.pending_rows(), timeout=60),
                        self.pending_rows())
        self.assertEqual([], self.failed())
        self.assertEqual({VLAN: ls(new)}, bindings(leaf("leaf1"), "swp1"))
        self.assertEqual({ls(new)}, set(logical_switches(leaf("leaf1"))))
        self.assertEqual({}, logical_switches(leaf("leaf2")))
        self.assertEqual({}, logical_switches(down))

    def test_a_port_moving_to_a_leaf_that_is_down_keeps_its_old_place(self):
        # Make before break is unchanged: the destination is not programmed, so the
        # source keeps the network until it is.
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=H0)
        self.converge()
        down = self.stop_leaf("leaf3")
        self.update_port_host(port["id"], H2)
        self.worker.run_once()
        self.assertEqual({VLAN: ls(net)}, bindings(leaf("leaf1"), "swp1"))
        self.assertTrue(self.journal(net, states=[store.PENDING]))
        down.start()
        self.assertTrue(self.work_until(lambda: not self.pending_rows(), timeout=60))
        self.assertEqual({}, bindings(leaf("leaf1"), "swp1"))
        self.assertEqual({}, logical_switches(leaf("leaf1")))
        self.assertEqual({VLAN: ls(net)}, bindings(down, "swp1"))
        self.assertEqual([], self.failed())

    def pending_rows(self) -> list[dict]:
        # The vsphere_dvs policy worker (filters, issue 13) does not run here.
        return [r for r in store.rows(self.ctx, states=[store.PENDING, store.PROCESSING])
                if r["resource_type"] not in names.POLICY_RESOURCES]


class TestTwoWorkers(OutageTestCase):

    def test_a_vlan_given_back_is_rebound_while_another_worker_has_its_old_network(self):
        old = self.vxlan_network("old")
        port = self.make_port(old["id"], host=H0)
        self.converge()
        self.delete_port(port["id"])
        elsewhere = self.claim_elsewhere()
        self.assertEqual([old["id"]], [e.resource_id for e in elsewhere])

        new = self.vxlan_network("new")
        self.make_port(new["id"], host=H0)
        self.assertEqual(VLAN, self.vlan_of(new))
        self.assertTrue(self.worker.run_once())
        self.assertEqual([], self.failed())
        self.assertEqual({VLAN: ls(new)}, bindings(leaf("leaf1"), "swp1"))
        self.assertEqual({ls(new)}, set(logical_switches(leaf("leaf1"))))
        # The old network, not needed on leaf1 any more, left it; it is converged once
        # more by its own entry, whatever the other worker does with it.
        self.assertIn("vlan-rebound", [r["operation"] for r in self.journal(
            old, states=[store.PENDING])])

        # The other worker ends its batch (nothing left to do) and the journal drains.
        self.assertEqual([None], list(self.worker.sync(self.ctx, elsewhere)))
        store.complete(self.ctx, elsewhere[0])
        self.converge()
        self.assertEqual([], self.failed())
        self.assertEqual({VLAN: ls(new)}, bindings(leaf("leaf1"), "swp1"))
        for item in _FABRIC.leaves:
            self.assertNotIn(ls(old), logical_switches(item), item.name)

    def test_a_holder_still_needed_on_the_leaf_only_lets_go_of_the_vlan(self):
        # "old" is on leaf2 twice: swp1 (ESXi host H1, physnet-dvs) and swp9 (the KVM
        # host, physnet-kvm).  Its H1 port goes, so its physnet-dvs VLAN is free; the
        # new network takes it on swp1 while old keeps swp9.
        agent_helpers.register_ovs_agent(host=lab_topology.KVM_HOST,
                                         bridge_mappings={KVM_PHYSNET: "br-phys"})
        old = self.vxlan_network("old")
        esxi_port = self.make_port(old["id"], host=H1)
        self.make_port(old["id"], host=lab_topology.KVM_HOST)
        self.converge()
        self.assertEqual({VLAN: ls(old)}, bindings(leaf("leaf2"), "swp1"))
        self.assertEqual({VLAN: ls(old)}, bindings(leaf("leaf2"), "swp9"))
        self.delete_port(esxi_port["id"])
        elsewhere = self.claim_elsewhere()
        self.assertEqual([old["id"]], [e.resource_id for e in elsewhere])

        new = self.vxlan_network("new")
        self.make_port(new["id"], host=H1)
        self.assertEqual(VLAN, self.vlan_of(new))
        self.assertTrue(self.worker.run_once())
        self.assertEqual([], self.failed())
        self.assertEqual({VLAN: ls(new)}, bindings(leaf("leaf2"), "swp1"))
        self.assertEqual({VLAN: ls(old)}, bindings(leaf("leaf2"), "swp9"))
        self.assertEqual({ls(old), ls(new)}, set(logical_switches(leaf("leaf2"))))

        self.assertEqual([None], list(self.worker.sync(self.ctx, elsewhere)))
        store.complete(self.ctx, elsewhere[0])
        self.converge()
        self.assertEqual([], self.failed())
        self.assertEqual({VLAN: ls(new)}, bindings(leaf("leaf2"), "swp1"))
        self.assertEqual({VLAN: ls(old)}, bindings(leaf("leaf2"), "swp9"))
        self.assertEqual({ls(old)}, set(logical_switches(leaf("leaf3"))))
