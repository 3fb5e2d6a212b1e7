"""Hierarchical binding: a top-level VXLAN driver hands vsphere_dvs a dynamic VLAN segment.

The top-level driver is ``tests/fixtures/dvsf_test_drivers.py``, found by stevedore
through the ``dvsf_test_drivers-0.1.dist-info`` entry point on sys.path - nothing is
installed.
"""
from __future__ import annotations

import importlib.metadata
import sys
import unittest

import dvs_ml2_base as base
from neutron.db import segments_db
from neutron.plugins.ml2 import db as ml2_db
from neutron_lib.api.definitions import portbindings
from neutron_lib import constants as n_const
from neutron_lib.plugins.ml2 import api
from stevedore import driver as stevedore_driver

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


class TestEntryPoint(unittest.TestCase):

    def test_fixtures_dir_on_sys_path(self):
        self.assertIn(str(base.FIXTURES), sys.path)

    def test_entry_point_seen_by_importlib_metadata(self):
        eps = importlib.metadata.entry_points(group="neutron.ml2.mechanism_drivers")
        by_name = {ep.name: ep for ep in eps}
        self.assertIn("dvsf_test_toplevel", by_name)
        self.assertEqual("dvsf_test_drivers:TopLevelVxlanDriver",
                         by_name["dvsf_test_toplevel"].value)
        self.assertEqual("dvsf-test-drivers", by_name["dvsf_test_toplevel"].dist.name)

    def test_entry_point_loaded_by_stevedore(self):
        mgr = stevedore_driver.DriverManager("neutron.ml2.mechanism_drivers",
                                             "dvsf_test_toplevel")
        self.assertEqual("TopLevelVxlanDriver", mgr.driver.__name__)
        self.assertEqual(str(base.FIXTURES / "dvsf_test_drivers.py"),
                         sys.modules[mgr.driver.__module__].__file__)


class TestHierarchicalBinding(base.VSphereDVSTestCase):
    shared = _SIM
    _mechanism_drivers = ["dvsf_test_toplevel", "vsphere_dvs"]

    def levels(self, port):
        return ml2_db.get_binding_level_objs(self.context, port["id"],
                                             port[portbindings.HOST_ID])

    def test_vxlan_port_bound_on_dynamic_vlan_segment(self):
        top = self.driver.mechanism_manager.mech_drivers["dvsf_test_toplevel"].obj
        self.assertEqual("TopLevelVxlanDriver", type(top).__name__)

        net = self.make_network(network_type="vxlan", physnet=None, segmentation_id=5010)
        port = self.make_port(net["id"], host=base.HOST_C0)

        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual(n_const.PORT_STATUS_ACTIVE, port["status"])
        levels = self.levels(port)
        self.assertEqual(2, len(levels))
        self.assertEqual(["dvsf_test_toplevel", "vsphere_dvs"],
                         [level.driver for level in levels])
        self.assertEqual({"0": "dvsf_test_toplevel", "1": "vsphere_dvs"},
                         port[portbindings.VIF_DETAILS]["bound_drivers"])

        static = segments_db.get_network_segments(self.context, net["id"])
        self.assertEqual(["vxlan"], [s[api.NETWORK_TYPE] for s in static])
        self.assertEqual(static[0][api.ID], levels[0].segment_id)
        dynamics = segments_db.get_network_segments(self.context, net["id"],
                                                    filter_dynamic=True)
        self.assertEqual([levels[1].segment_id], [s[api.ID] for s in dynamics])
        dynamic = dynamics[0]
        self.assertEqual("vlan", dynamic[api.NETWORK_TYPE])
        self.assertEqual(base.PHYSNET, dynamic[api.PHYSICAL_NETWORK])

        pg = self.assertBoundToPortGroup(port, net, vlan=dynamic[api.SEGMENTATION_ID])
        self.assertEqual([pg], self.vc.port_groups_of(net["id"]))

        # Another port of the network on another cluster shares segment and port group.
        other = self.make_port(net["id"], host=base.HOST_C1)
        self.assertEqual(pg.key, other[portbindings.VIF_DETAILS]["pg_id"])
        self.assertEqual(levels[1].segment_id, self.levels(other)[1].segment_id)

        # Deleting the ports removes the port group (level 1 was ours).
        self.delete_port(other["id"])
        self.assertEqual(pg, self.vc.port_group(pg.key))
        self.delete_port(port["id"])
        self.assertPortGroupGone(pg.key)

    def test_host_unknown_to_top_level_driver_not_bound(self):
        net = self.make_network(network_type="vxlan", physnet=None, segmentation_id=5011)
        port = self.make_port(net["id"], host="kvm-1")
        self.assertNotBound(port)
        self.assertEqual([], self.levels(port))
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

    def test_plain_vlan_network_still_bound_at_level0(self):
        net = self.make_network(segmentation_id=1500)
        port = self.make_port(net["id"])
        self.assertBoundToPortGroup(port, net, vlan=1500)
        self.assertEqual(["vsphere_dvs"], [level.driver for level in self.levels(port)])
