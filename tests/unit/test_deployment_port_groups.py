"""Port groups of two deployments on one vCenter (issue 12, item 1).

In-process Neutron (ML2 with vsphere_dvs) against the vCenter simulator.  The
other deployment's port groups are made with the same code and another id, and
legacy ones (made before deployments had ids) with the old marker, as an earlier
version wrote it.
"""
from __future__ import annotations

import uuid

import dvs_ml2_base as base

from networking_dvs_fabric.vcenter import errors, naming
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.portgroups import PortGroupManager
from networking_dvs_fabric.vcenter.session import VCenterSession
from networking_dvs_fabric.vcenter.sweeper import PortGroupSweeper

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


class TestDeployments(base.VSphereDVSTestCase):
    shared = _SIM

    def other_deployment(self) -> PortGroupManager:
        backend = self.mech.backend
        return PortGroupManager(backend.session, backend.inventory().dvs[base.DVS],
                                deployment=str(uuid.uuid4()))

    def test_our_port_groups_carry_this_deployments_id(self):
        net = self.make_network(segmentation_id=3101)
        pg = self.assertBoundToPortGroup(self.make_port(net["id"]), net)
        ours = self.mech.runtime.deployment_id
        self.assertEqual((net["id"], ours), naming.parse_marker(pg.description))
        # The same id every time, from Neutron's database.
        self.assertEqual(ours, self.mech.backend.deployment())

    def test_the_sweeper_leaves_another_deployments_port_groups_alone(self):
        other = self.other_deployment()
        theirs = other.create(f"theirs-{uuid.uuid4()}", str(uuid.uuid4()), 3102)
        mine = self.mech.backend.ensure_port_group(base.PHYSNET, str(uuid.uuid4()), "gone",
                                                   3103)
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        sweeper.sweep_once()
        deleted = sweeper.sweep_once()       # twice: unused on two sweeps in a row
        self.assertIn(mine.pg_name, deleted)
        self.assertNotIn(theirs.name, deleted)
        self.assertIsNotNone(self.vc.port_group(theirs.key))
        # And our manager refuses to delete or change it outright.
        ours = PortGroupManager(self.mech.backend.session,
                                self.mech.backend.inventory().dvs[base.DVS],
                                deployment=self.mech.runtime.deployment_id)
        with self.assertRaisesRegex(errors.PortGroupNotOwned, "belongs to deployment"):
            ours.delete(theirs)
        with self.assertRaisesRegex(errors.PortGroupNotOwned, "not ours"):
            ours.set_vlan(theirs, 3104)
        self.assertEqual(3102, self.vc.port_group(theirs.key).vlan)

    def test_legacy_port_groups_are_adopted_only_by_the_deployment_with_the_network(self):
        net = self.make_network(segmentation_id=3105)
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        # Rewrite it as an earlier version left it: marker without a deployment id (the
        # port's set kept: the port still needs that port group).
        self.vc.set_description(pg, naming.marker(
            net["id"], None, port["binding:vif_details"]["dvs_port_group_set"]))
        unknown_id = str(uuid.uuid4())
        unknown = self.vc.create_port_group(f"legacy-{unknown_id}", 3106,
                                            description=naming.marker(unknown_id))
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        sweeper.sweep_once()
        sweeper.sweep_once()
        ours = self.mech.runtime.deployment_id
        self.assertEqual((net["id"], ours),
                         naming.parse_marker(self.vc.port_group(pg.key).description))
        self.assertEqual(3105, self.vc.port_group(pg.key).vlan)        # VLAN kept
        left = self.vc.port_group(unknown.key)
        self.assertIsNotNone(left, "a legacy port group of a network not ours was deleted")
        self.assertEqual((unknown_id, None), naming.parse_marker(left.description))

    def test_a_bind_adopts_the_legacy_port_group_of_its_network(self):
        net = self.make_network(segmentation_id=3107)
        first = self.assertBoundToPortGroup(self.make_port(net["id"]), net)
        self.vc.set_description(first, naming.marker(net["id"]))
        # Another API worker, whose watch has not seen the port group (the simulator
        # does not publish a reconfigured port group's changes to a watch).
        mine = self.mech.backend
        backend = VSphereBackend(mine.settings, lambda: VCenterSession(mine.session.config),
                                 mine.deployment)
        backend.start(watch=False)
        self.addCleanup(backend.stop)
        binding = backend.ensure_port_group(base.PHYSNET, net["id"], net["name"], 3107)
        self.assertEqual(first.key, binding.pg_key)
        self.assertEqual((net["id"], self.mech.runtime.deployment_id),
                         naming.parse_marker(self.vc.port_group(first.key).description))
