"""Two DVSs, two physical networks, the same VLAN for different VNIs on different leaf ports.

A VLAN is only significant on one leaf port: cluster DC0_C0 stays on DVS0
(``physnet-dvs``) and is cabled to swp1 of leaf1..3, cluster DC0_C1 is moved to a
second DVS, DVS1 (``physnet-dvs1``), cabled to swp2 of the same leaves.  Each
physical network has exactly one VLAN (100), so two VXLAN networks, one per
cluster, both get VLAN 100, and every leaf must map swp1/100 and swp2/100 to
different logical switches (VNIs).

Everything is real: the module reshapes its own vCenter simulator with pyVmomi as
the lab's ``--second-dvs`` does (``lab/second_dvs.py``: ``CreateDVS_Task``,
``ReconfigureDvs_Task`` add/remove of host members, C1's VMs' NICs first moved to a
port group of DVS1), the leaves are ovsdb-servers with the hardware_vtep schema, read
back with ``vtep-ctl``.

Two tests guard fixed bugs: one network on both DVSs (port group names are unique
per datacenter, so the second DVS's port group gets a DVS-qualified name) and the
dynamic VLAN segment given back after a binding whose lower level failed.
"""
from __future__ import annotations

from typing import Any

import dvs_ml2_base as base
import fabric_base
from fabric_base import bindings, logical_switches
from neutron.db import segments_db
from neutron.plugins.ml2 import db as ml2_db
from neutron_lib.api.definitions import portbindings

from networking_dvs_fabric.lab import second_dvs
from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.lab.leaves import LeafSwitch
from networking_dvs_fabric.security import model

PHYSNET0, DVS0 = base.PHYSNET, base.DVS            # physnet-dvs -> DVS0 (cluster C0)
PHYSNET1, DVS1 = "physnet-dvs1", lab_topology.SECOND_DVS_NAME  # physnet-dvs1 -> DVS1 (cluster C1)
VLAN = 100
C0, C1 = "DC0_C0", "DC0_C1"
C0_PORT, C1_PORT = "swp1", "swp2"                  # see lab_topology.attachments()

_FABRIC = fabric_base.ModuleFabric("fabric-2dvs-")
_SIM = _FABRIC.sim
_LEAVES = _FABRIC.leaves


# -- the module's vCenter: DVS1 for cluster C1, C1 off DVS0 -------------------------
def _members(dvs: Any) -> set[str]:
    return {host.name for host in dvs.summary.hostMember or []}


def _second_dvs(vc: base.VCenter) -> None:
    """DVS1 with C1's hosts, C1 off DVS0: what ``lab up --second-dvs`` does to its
    simulator (``lab/second_dvs.py``, which reads the members back)."""
    second_dvs.reshape(vc.si)


def setUpModule() -> None:
    _FABRIC.start(_second_dvs)


def tearDownModule() -> None:
    _FABRIC.stop()


def topology() -> dict:
    """The lab topology, with C0's hosts pinned to DVS0 and C1's to DVS1."""
    topo = lab_topology.fabric_topology({item.name: item.ovsdb for item in _LEAVES})
    pin = {**{h: DVS0 for h in lab_topology.esxi_hosts(C0)},
           **{h: DVS1 for h in lab_topology.esxi_hosts(C1)}}
    for host in topo["hosts"]:
        if host["name"] in pin:
            for att in host["attachments"]:
                att["dvs"] = pin[host["name"]]
    return topo


# -- reading the leaves with vtep-ctl, independently of the code under test ----------
def all_bindings(switch: LeafSwitch) -> dict[str, dict[int, str]]:
    return {port: bindings(switch, port) for port in switch.ports}


class TwoDVSTestCase(fabric_base.FabricTestCase):
    shared = _SIM
    fabric_leaves = _LEAVES
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs"]
    # One VLAN per physical network: both networks must get VLAN 100.
    vlan_ranges = [f"{PHYSNET0}:{VLAN}:{VLAN}", f"{PHYSNET1}:{VLAN}:{VLAN}"]
    vni_ranges = ["5000:5999"]

    def vsphere_options(self) -> dict[str, Any]:
        options = super().vsphere_options()
        options["dvs_mappings"] = [f"{PHYSNET0}:{DVS0}", f"{PHYSNET1}:{DVS1}"]
        options["host_mappings"] = [f"{base.HOST_C0}:{C0}", f"{base.HOST_C1}:{C1}"]
        return options

    def fabric_topology(self) -> dict[str, Any]:
        return topology()

    def dynamic_segments(self, network_id: str) -> list[tuple[str, int]]:
        return sorted((s["physical_network"], s["segmentation_id"])
                      for s in segments_db.get_network_segments(self.ctx, network_id,
                                                                filter_dynamic=True))

    def assertBoundOn(self, port: dict, network: dict, dvs_name: str) -> base.PG:
        """Bound by fabric_hwvtep over vsphere_dvs, to the network's VLAN 100 port group
        on ``dvs_name`` (and the network has no port group on the other DVS)."""
        self.assertEqual("dvs", port[portbindings.VIF_TYPE], port)
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual(self.vc.dvs(dvs_name).uuid, details["dvs_id"], details)
        pg = self.vc.port_group(details["pg_id"], dvs_name=dvs_name)
        self.assertIsNotNone(pg, f"pg_id {details['pg_id']} is not a port group of {dvs_name}")
        assert pg is not None
        self.assertEqual(pg.name, details["dvs_port_group_name"])
        self.assertIn(network["id"], pg.name)
        self.assertIn(base.MARKER, pg.description or "")
        self.assertEqual(VLAN, pg.vlan)
        self.assertEqual([pg], self.vc.port_groups_of(network["id"], dvs_name=dvs_name))
        other = DVS1 if dvs_name == DVS0 else DVS0
        self.assertEqual([], self.vc.port_groups_of(network["id"], dvs_name=other))
        levels = ml2_db.get_binding_level_objs(self.ctx, port["id"],
                                               port[portbindings.HOST_ID])
        self.assertEqual(["fabric_hwvtep", "vsphere_dvs"], [lv.driver for lv in levels])
        return pg

    def assertLeaves(self, swp1: dict[int, str], swp2: dict[int, str],
                     switches: dict[str, int]) -> None:
        """Every leaf: exactly these bindings on swp1/swp2, nothing elsewhere."""
        for item in _LEAVES:
            want = {port: {} for port in item.ports}
            want[C0_PORT], want[C1_PORT] = swp1, swp2
            self.assertEqual(want, all_bindings(item), item.name)
            self.assertEqual(switches, logical_switches(item), item.name)


class TestVCenterShape(TwoDVSTestCase):

    def test_the_simulator_holds_two_dvs_with_disjoint_clusters(self):
        self.assertEqual(set(lab_topology.esxi_hosts(C0)), _members(self.vc.dvs(DVS0)))
        self.assertEqual(set(lab_topology.esxi_hosts(C1)), _members(self.vc.dvs(DVS1)))
        self.assertNotEqual(self.vc.dvs(DVS0).uuid, self.vc.dvs(DVS1).uuid)
        # And the driver reads it so: each cluster's compute host is on its own DVS.
        backend = self.mech.backend
        self.assertTrue(backend.serves(base.HOST_C0, PHYSNET0))
        self.assertFalse(backend.serves(base.HOST_C0, PHYSNET1))
        self.assertTrue(backend.serves(base.HOST_C1, PHYSNET1))
        self.assertFalse(backend.serves(base.HOST_C1, PHYSNET0))


class TestSameVlanTwoDVS(TwoDVSTestCase):

    def _two_networks(self) -> tuple[dict, dict, dict, dict]:
        net_a, net_b = self.vxlan_network("net-a"), self.vxlan_network("net-b")
        port_a = self.make_port(net_a["id"], host=base.HOST_C0)
        port_b = self.make_port(net_b["id"], host=base.HOST_C1)
        return net_a, net_b, port_a, port_b

    def test_vlan_100_on_both_dvs_maps_to_different_vnis_per_leaf_port(self):
        net_a, net_b, port_a, port_b = self._two_networks()
        vni_a, vni_b = net_a["provider:segmentation_id"], net_b["provider:segmentation_id"]
        self.assertNotEqual(vni_a, vni_b)
        self.assertEqual([(PHYSNET0, VLAN)], self.dynamic_segments(net_a["id"]))
        self.assertEqual([(PHYSNET1, VLAN)], self.dynamic_segments(net_b["id"]))
        pg_a = self.assertBoundOn(port_a, net_a, DVS0)
        self.assertBoundOn(port_b, net_b, DVS1)

        self.converge()
        ls_a, ls_b = f"dvsf-{net_a['id']}", f"dvsf-{net_b['id']}"
        self.assertLeaves({VLAN: ls_a}, {VLAN: ls_b}, {ls_a: vni_a, ls_b: vni_b})

        # Port A goes: its swp1 bindings, logical switch, segment and port group go;
        # network B on swp2 (same VLAN 100) is untouched.
        self.delete_port(port_a["id"])
        self.assertEqual([], self.dynamic_segments(net_a["id"]))
        self.assertIsNone(self.vc.port_group(pg_a.key, dvs_name=DVS0))
        self.converge()
        self.assertLeaves({}, {VLAN: ls_b}, {ls_b: vni_b})
        self.assertBoundOn(self.show_port(port_b["id"]), net_b, DVS1)

    def test_taken_vlan_fails_cleanly_and_binds_once_freed(self):
        net_a, net_b, port_a, port_b = self._two_networks()
        self.converge()
        ls_a, ls_b = f"dvsf-{net_a['id']}", f"dvsf-{net_b['id']}"
        vni_a, vni_b = net_a["provider:segmentation_id"], net_b["provider:segmentation_id"]

        # VLAN 100 is the only VLAN of physnet-dvs and network A has it: a third network
        # cannot be bound to C0 (VLAN 100 on physnet-dvs1 is no use to C0's hosts).
        net_c = self.vxlan_network("net-c")
        with self.assertLogs("networking_dvs_fabric.ml2.fabric_hwvtep", "ERROR") as logs:
            port_c = self.make_port(net_c["id"], host=base.HOST_C0)
        self.assertNotBound(port_c)
        # A clear reason naming the physical network, not a traceback.
        self.assertIn(f"no VLAN left on physical network {PHYSNET0}", logs.output[0])
        self.assertEqual([], self.dynamic_segments(net_c["id"]))
        self.assertEqual([], ml2_db.get_binding_level_objs(self.ctx, port_c["id"],
                                                           base.HOST_C0))
        for dvs_name in (DVS0, DVS1):
            self.assertEqual([], self.vc.port_groups_of(net_c["id"], dvs_name=dvs_name))
        self.converge()
        self.assertLeaves({VLAN: ls_a}, {VLAN: ls_b}, {ls_a: vni_a, ls_b: vni_b})
        # Nova gives up on the failed port and deletes it: nothing changes.
        self.delete_port(port_c["id"])
        self.converge()
        self.assertLeaves({VLAN: ls_a}, {VLAN: ls_b}, {ls_a: vni_a, ls_b: vni_b})
        self.assertEqual([(PHYSNET0, VLAN)], self.dynamic_segments(net_a["id"]))

        # Port A goes: VLAN 100 of physnet-dvs is free again and C's new port gets it.
        self.delete_port(port_a["id"])
        port_c2 = self.make_port(net_c["id"], host=base.HOST_C0)
        self.assertEqual([(PHYSNET0, VLAN)], self.dynamic_segments(net_c["id"]))
        self.assertBoundOn(port_c2, net_c, DVS0)
        self.assertEqual([], self.vc.port_groups_of(net_a["id"], dvs_name=DVS0))
        self.converge()
        ls_c, vni_c = f"dvsf-{net_c['id']}", net_c["provider:segmentation_id"]
        self.assertLeaves({VLAN: ls_c}, {VLAN: ls_b}, {ls_c: vni_c, ls_b: vni_b})


class TestOneNetworkOnBothDVS(TwoDVSTestCase):

    # The default port_group_name_format "{network_name}-{network_id}" gives the
    # network's port groups on DVS0 and DVS1 the same name; names are unique per
    # datacenter, so the second AddDVPortgroup_Task fails with DuplicateName.  The
    # backend then retries with the DVS in the name (it used to fail the binding).
    def test_one_network_on_both_clusters_gets_a_port_group_on_each_dvs(self):
        net = self.vxlan_network("net-both")
        port_0 = self.make_port(net["id"], host=base.HOST_C0)
        port_1 = self.make_port(net["id"], host=base.HOST_C1)
        self.assertEqual([(PHYSNET0, VLAN), (PHYSNET1, VLAN)],
                         self.dynamic_segments(net["id"]))
        self.assertEqual("dvs", port_0[portbindings.VIF_TYPE], port_0)
        self.assertEqual("dvs", port_1[portbindings.VIF_TYPE], port_1)
        pg_0 = self.vc.port_groups_of(net["id"], dvs_name=DVS0)
        pg_1 = self.vc.port_groups_of(net["id"], dvs_name=DVS1)
        self.assertEqual([VLAN], [pg.vlan for pg in pg_0])
        self.assertEqual([VLAN], [pg.vlan for pg in pg_1])
        self.assertEqual(self.vc.dvs(DVS0).uuid, port_0[portbindings.VIF_DETAILS]["dvs_id"])
        self.assertEqual(self.vc.dvs(DVS1).uuid, port_1[portbindings.VIF_DETAILS]["dvs_id"])
        self.converge()
        ls = f"dvsf-{net['id']}"
        self.assertLeaves({VLAN: ls}, {VLAN: ls}, {ls: net["provider:segmentation_id"]})

        self.delete_port(port_1["id"])
        self.assertEqual([(PHYSNET0, VLAN)], self.dynamic_segments(net["id"]))
        self.assertEqual([], self.vc.port_groups_of(net["id"], dvs_name=DVS1))
        self.assertEqual(pg_0, self.vc.port_groups_of(net["id"], dvs_name=DVS0))
        self.converge()
        self.assertLeaves({VLAN: ls}, {}, {ls: net["provider:segmentation_id"]})


class TestFailedBottomLevel(TwoDVSTestCase):

    # fabric_hwvtep.bind_port allocates the dynamic VLAN segment; when no driver binds
    # the level below, the failed binding has no binding levels to find it by, so the
    # driver looks it up by the host's physical network and gives it back (it used to
    # stay reserved until the network was deleted).
    def test_failed_bottom_level_gives_back_the_dynamic_segment(self):
        # vsphere_dvs refuses to bind on C1 because a port group with the name it would
        # use exists on DVS1 and is not ours (documented: left alone, binding fails).
        net = self.vxlan_network("net-blocked")
        name = self.mech.backend.port_group_name(DVS1, PHYSNET1, net["id"], net["name"],
                                                 model.set_key(True, []))
        self.vc.create_port_group(name, 999, dvs_name=DVS1)
        port = self.make_port(net["id"], host=base.HOST_C1, security_groups=[])
        self.assertNotBound(port)
        # Nothing half-made: the VLAN fabric_hwvtep allocated for the failed binding
        # must not stay reserved (physnet-dvs1 has a single VLAN).
        self.assertEqual([], self.dynamic_segments(net["id"]))
        other = self.vxlan_network("net-other")
        self.assertBoundOn(self.make_port(other["id"], host=base.HOST_C1), other, DVS1)
