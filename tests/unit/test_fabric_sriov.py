"""SR-IOV below the fabric: fabric_hwvtep on top, Neutron's sriovnicswitch at the bottom.

The topology's KVM host (``lab_topology.KVM_HOST``, on its own physical network,
cabled to a leaf pair) runs an SR-IOV NIC agent.  A ``direct`` port of a VXLAN
network bound to it gets a dynamic VLAN segment on the KVM physical network from
fabric_hwvtep and a VF (``vif_type hw_veb``, the VLAN in ``vif_details``) from
sriovnicswitch; the fabric worker puts the VLAN-VNI binding on the KVM host's leaf
ports.  The port's ``binding:profile`` is what Nova's PCI code writes for a VF.

Real parts as in test_fabric_driver.py: the module's own vCenter simulator (the
vsphere_dvs driver and the fabric's host directory need one), hardware_vtep leaves
read back with ``vtep-ctl``.
"""
from __future__ import annotations

import dvs_ml2_base as base
import fabric_base
from fabric_base import bindings, logical_switches
from neutron.db import segments_db
from neutron.plugins.ml2 import db as ml2_db
from neutron.tests.common import helpers as agent_helpers
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings

from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.lab.leaves import LeafSwitch

KVM_HOST = lab_topology.KVM_HOST
KVM_PHYSNET = lab_topology.KVM_PHYSICAL_NETWORK
PF = "eth1"
# What Nova's PCI manager writes into binding:profile for a VF it claimed
# (nova.network.neutron._populate_pci_binding_profile); a VXLAN network is
# "tunneled" to Nova, so the VF's physical_network is None.
VF_PROFILE = {"pci_vendor_info": "8086:154c", "pci_slot": "0000:81:10.2",
              "physical_network": None}

_FABRIC = fabric_base.ModuleFabric("fabric-sriov-")
_SIM = _FABRIC.sim
_LEAVES = _FABRIC.leaves


def setUpModule() -> None:
    _FABRIC.start()


def tearDownModule() -> None:
    _FABRIC.stop()


def leaf(name: str) -> LeafSwitch:
    return _FABRIC.leaf(name)


class FabricSriovTestCase(fabric_base.FabricTestCase):
    shared = _SIM
    fabric_leaves = _LEAVES
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs", "sriovnicswitch"]
    vlan_ranges = [f"{base.PHYSNET}:100:3999", f"{KVM_PHYSNET}:100:3999"]
    vni_ranges = ["5000:5999"]

    def dynamic_segments(self, network_id: str) -> list[dict]:
        return list(segments_db.get_network_segments(self.ctx, network_id,
                                                     filter_dynamic=True))


    def vf_port(self, network_id: str, host: str = KVM_HOST) -> dict:
        """A direct port as Nova creates it: binding:profile is writable by the service
        role only (Neutron's policy), which is how Nova talks to Neutron."""
        kwargs = {portbindings.HOST_ID: host, portbindings.VNIC_TYPE: portbindings.VNIC_DIRECT,
                  portbindings.PROFILE: dict(VF_PROFILE)}
        res = self._create_port(self.fmt, network_id, is_service=True,
                                arg_list=tuple(kwargs), **kwargs)
        self.assertEqual(201, res.status_int, res.body)
        return self.deserialize(self.fmt, res)["port"]

    def register_sriov_agent(self) -> None:
        # The SR-IOV NIC agent reports physical_network -> [PF devices].
        agent_helpers.register_sriovnicswitch_agent(host=KVM_HOST,
                                                    device_mappings={KVM_PHYSNET: [PF]})


class TestSriovBelowFabric(FabricSriovTestCase):

    def test_direct_port_binds_fabric_then_sriov_and_programs_the_kvm_leaf_ports(self):
        self.register_sriov_agent()
        net = self.vxlan_network()
        port = self.vf_port(net["id"])

        self.assertEqual(portbindings.VIF_TYPE_HW_VEB, port[portbindings.VIF_TYPE], port)
        self.assertEqual(portbindings.VNIC_DIRECT, port[portbindings.VNIC_TYPE])
        levels = ml2_db.get_binding_level_objs(self.ctx, port["id"], KVM_HOST)
        self.assertEqual(["fabric_hwvtep", "sriovnicswitch"], [lv.driver for lv in levels])
        dynamic = self.dynamic_segments(net["id"])
        self.assertEqual([KVM_PHYSNET], [s["physical_network"] for s in dynamic])
        vlan = dynamic[0]["segmentation_id"]
        self.assertEqual(dynamic[0]["id"], levels[1].segment_id)
        # Nova's libvirt driver programs the VF with this VLAN.
        self.assertEqual(str(vlan), port[portbindings.VIF_DETAILS][portbindings.VIF_DETAILS_VLAN])
        # Agent-based: DOWN until the SR-IOV agent reports the VF up.
        self.assertEqual(n_const.PORT_STATUS_DOWN, port["status"])
        # No port group for a KVM host's network.
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

        self.converge()
        ls = f"dvsf-{net['id']}"
        kvm_ports = set(lab_topology.KVM_PORTS)
        for item in _LEAVES:
            for port_name in item.ports:
                want = {vlan: ls} if (item.name, port_name) in kvm_ports else {}
                self.assertEqual(want, bindings(item, port_name), (item.name, port_name))
            want_ls = ({ls: net["provider:segmentation_id"]}
                       if any(item.name == name for name, _ in kvm_ports) else {})
            self.assertEqual(want_ls, logical_switches(item), item.name)

        # The VF goes: segment released, leaf ports cleared.
        self.delete_port(port["id"])
        self.assertEqual([], self.dynamic_segments(net["id"]))
        self.converge()
        for item in _LEAVES:
            self.assertEqual({}, logical_switches(item), item.name)
            for port_name in item.ports:
                self.assertEqual({}, bindings(item, port_name), (item.name, port_name))

    def test_without_an_sriov_agent_the_direct_port_is_not_bound_nor_programmed(self):
        net = self.vxlan_network()
        port = self.vf_port(net["id"])
        self.assertNotBound(port)
        self.assertEqual([], ml2_db.get_binding_level_objs(self.ctx, port["id"], KVM_HOST))
        self.converge()
        for item in _LEAVES:
            self.assertEqual({}, logical_switches(item), item.name)

    # As in test_fabric_two_dvs.TestFailedBottomLevel: the dynamic VLAN segment
    # allocated in bind_port is given back when the level below does not bind (here:
    # no SR-IOV agent on the host).
    def test_without_an_sriov_agent_no_vlan_is_kept(self):
        net = self.vxlan_network()
        port = self.vf_port(net["id"])
        self.assertNotBound(port)
        self.delete_port(port["id"])             # Nova gives up on the instance
        self.assertEqual([], self.dynamic_segments(net["id"]))
