"""A port is ACTIVE when the fabric carries it (Neutron's provisioning blocks).

ML2 with ``fabric_hwvtep`` and ``vsphere_dvs`` on the real simulator and real
hardware_vtep leaves; the fabric worker is run by hand (``converge``), as
``neutron-periodic-workers`` would run it, in the process that has the ML2
plugin.  Statuses are read through Neutron's API; leaves with ``vtep-ctl``.
``vsphere_dvs`` alone and under a top-level driver that holds no block still
makes ports ACTIVE at once.
"""
from __future__ import annotations

from unittest import mock

import dvs_ml2_base as base
import fabric_base
from neutron.db import provisioning_blocks, segments_db
from neutron.tests.common import helpers as agent_helpers
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from oslo_config import cfg
from oslo_db import exception as db_exc

from networking_dvs_fabric import names, opts
from networking_dvs_fabric.cmd import journal_cmd
from networking_dvs_fabric.db import locations
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.lab import topology as lab_topology

_FABRIC = fabric_base.ModuleFabric("port-status-")
ACTIVE, DOWN = n_const.PORT_STATUS_ACTIVE, n_const.PORT_STATUS_DOWN
OVS_HOST = "ovs-host"            # an Open vSwitch host outside the fabric's topology


def setUpModule() -> None:
    _FABRIC.start()


def tearDownModule() -> None:
    _FABRIC.stop()


def attachment(esxi_host: str) -> lab_topology.Attachment:
    return next(a for a in lab_topology.attachments() if a.esxi_host == esxi_host)


class PortStatusTestCase(fabric_base.FabricTestCase):
    shared = _FABRIC.sim
    fabric_leaves = _FABRIC.leaves
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs", "openvswitch"]
    vlan_ranges = [f"{base.PHYSNET}:100:3999",
                   f"{lab_topology.KVM_PHYSICAL_NETWORK}:100:3999"]
    vni_ranges = ["5000:5999"]

    def status(self, port_id: str) -> str:
        return self.show_port(port_id)["status"]

    def vlan(self, network_id: str) -> int:
        """The network's dynamic VLAN (one physical network in these tests)."""
        [segment] = segments_db.get_network_segments(self.ctx, network_id,
                                                     filter_dynamic=True)
        return segment["segmentation_id"]

    def journal_pending(self) -> list[dict]:
        # The vsphere_dvs policy worker (filters, issue 13) does not run here.
        return [r for r in store.rows(self.ctx, states=[store.PENDING, store.PROCESSING])
                if r["resource_type"] not in names.POLICY_RESOURCES]

    def leaf_bindings(self, network_id: str) -> set[tuple[str, str]]:
        switch = f"dvsf-{network_id}"
        return {(item.name, port) for item in self.fabric_leaves for port in item.ports
                if switch in fabric_base.bindings(item, port).values()}


class TestPreProvision(PortStatusTestCase):

    def test_a_cluster_port_is_down_until_the_leaves_carry_it(self):
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual(DOWN, port["status"])          # the bind's answer
        self.assertEqual(DOWN, self.status(port["id"]))
        self.assertEqual(set(), self.leaf_bindings(net["id"]))
        # One pass: the status change it makes journals nothing more.
        self.assertEqual(1, self.converge())
        cluster = {(a.leaf, a.port) for a in lab_topology.attachments()
                   if a.esxi_host.startswith("DC0_C0_")}
        self.assertEqual(cluster, self.leaf_bindings(net["id"]))
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def test_a_second_port_of_a_carried_network_becomes_active_without_leaf_changes(self):
        net = self.vxlan_network()
        first = self.make_port(net["id"], host=base.HOST_C0)
        self.converge()
        self.assertEqual(ACTIVE, self.status(first["id"]))
        writes = self.worker.sync.transactions
        second = self.make_port(net["id"], host=base.HOST_C0)
        self.assertEqual(DOWN, second["status"])
        self.converge()
        self.assertEqual(writes, self.worker.sync.transactions)   # nothing to write
        self.assertEqual(ACTIVE, self.status(second["id"]))

    def test_a_port_the_leaf_refuses_stays_down_and_the_journal_says_why(self):
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        # Someone else's logical switch holds (leaf port, VLAN) of the cluster's.
        att = attachment("DC0_C0_H0")
        leaf = _FABRIC.leaf(att.leaf)
        leaf.vtep_ctl("add-ls", "not-ours")
        leaf.vtep_ctl("bind-ls", leaf.name, att.port, str(self.vlan(net["id"])), "not-ours")
        self.converge()
        self.assertEqual(DOWN, self.status(port["id"]))
        [row] = [r for r in store.rows(self.ctx, states=[store.FAILED])
                 if r["resource_id"] == net["id"]]
        shown = journal_cmd.format_rows([row])
        self.assertIn("which the project does not own", shown)
        self.assertIn(f"port {att.port} VLAN", shown)
        # Freed by the operator; the port's next change journals the network again.
        leaf.vtep_ctl("unbind-ls", leaf.name, att.port, str(self.vlan(net["id"])))
        self._update("ports", port["id"], {"port": {"name": "again"}}, as_admin=True)
        self.converge()
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def test_a_port_on_an_esxi_host_waits_only_for_that_hosts_leaf_port(self):
        net = self.vxlan_network()
        att, other = attachment("DC0_C0_H1"), attachment("DC0_C0_H2")
        self.assertNotEqual(att.leaf, other.leaf)
        port = self.make_port(net["id"], host=att.esxi_host)
        refused = self.make_port(net["id"], host=other.esxi_host)
        # The other host's leaf refuses the network: this port does not need that leaf.
        blocker = _FABRIC.leaf(other.leaf)
        blocker.vtep_ctl("add-ls", "not-ours")
        blocker.vtep_ctl("bind-ls", blocker.name, other.port, str(self.vlan(net["id"])),
                         "not-ours")
        self.converge()
        self.assertEqual({(att.leaf, att.port)}, self.leaf_bindings(net["id"]))
        self.assertEqual(ACTIVE, self.status(port["id"]))
        self.assertEqual(DOWN, self.status(refused["id"]))

    def test_a_status_update_that_failed_is_tried_again(self):
        # ML2 logs and swallows an error of its status update (after our block is
        # gone); a database failing at just that moment cannot be arranged here, so
        # the update is made to fail once.
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
            self.assertTrue(self.worker.run_once())
            self.assertEqual(DOWN, self.status(port["id"]))
            [row] = self.journal_pending()
            self.assertIn(f"port {port['id']} is carried but is still DOWN", row["last_error"])
            self.assertTrue(base.wait_for(lambda: not self.worker.run_once()
                                          and not self.journal_pending(), timeout=10))
        self.assertEqual(2, len(calls))
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def test_an_l2_agent_below_the_fabric_keeps_its_own_say(self):
        agent_helpers.register_ovs_agent(
            host=lab_topology.KVM_HOST,
            bridge_mappings={lab_topology.KVM_PHYSICAL_NETWORK: "br-phys"})
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=lab_topology.KVM_HOST,
                              device_owner="compute:nova")
        self.assertEqual(portbindings.VIF_TYPE_OVS, port[portbindings.VIF_TYPE])
        self.converge()
        self.assertEqual(DOWN, self.status(port["id"]))      # the agent has not said yet
        self.agent_reports_up(port["id"])
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def test_a_port_only_its_agent_reports_up_still_waits_for_that_agent(self):
        # ML2 puts no agent block on a DHCP port or a router interface: without one
        # of its own, the fabric's completion alone would make it ACTIVE, unwired.
        agent_helpers.register_ovs_agent(
            host=lab_topology.KVM_HOST,
            bridge_mappings={lab_topology.KVM_PHYSICAL_NETWORK: "br-phys"})
        net = self.vxlan_network()
        for owner in (n_const.DEVICE_OWNER_DHCP, n_const.DEVICE_OWNER_ROUTER_INTF):
            port = self.make_port(net["id"], host=lab_topology.KVM_HOST,
                                  device_owner=owner)
            self.assertEqual(portbindings.VIF_TYPE_OVS, port[portbindings.VIF_TYPE])
            self.converge()
            self.assertEqual(DOWN, self.status(port["id"]), owner)
            self.agent_reports_up(port["id"])
            self.assertEqual(ACTIVE, self.status(port["id"]), owner)

    def test_a_dhcp_port_moved_from_an_agent_host_to_a_cluster_is_not_held_by_the_agent(self):
        # The agent's block the fabric added on kvm-1 (the agent never reported) must
        # not follow the port to a cluster, where no agent will ever lift it.
        agent_helpers.register_ovs_agent(
            host=lab_topology.KVM_HOST,
            bridge_mappings={lab_topology.KVM_PHYSICAL_NETWORK: "br-phys"})
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=lab_topology.KVM_HOST,
                              device_owner=n_const.DEVICE_OWNER_DHCP)
        self.converge()
        self.assertEqual(DOWN, self.status(port["id"]))      # waiting for kvm-1's agent
        moved = self.update_port_host(port["id"], base.HOST_C0)
        self.assertEqual("dvs", moved[portbindings.VIF_TYPE])
        self.converge()
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def test_a_port_moved_off_the_fabric_is_not_held_down_by_it(self):
        agent_helpers.register_ovs_agent(host=OVS_HOST)       # VXLAN tunnels, no leaf
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0, device_owner="compute:nova")
        self.assertEqual(DOWN, port["status"])               # moved before it was carried
        moved = self.update_port_host(port["id"], OVS_HOST)
        self.assertEqual(portbindings.VIF_TYPE_OVS, moved[portbindings.VIF_TYPE])
        self.agent_reports_up(port["id"])
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def test_a_port_whose_binding_failed_below_the_fabric_is_not_held_down_by_it(self):
        net = self.vxlan_network()
        # The KVM host is in the topology, but no Open vSwitch agent runs there.
        port = self.make_port(net["id"], host=lab_topology.KVM_HOST,
                              device_owner="compute:nova")
        self.assertNotBound(port)
        agent_helpers.register_ovs_agent(host=OVS_HOST)
        moved = self.update_port_host(port["id"], OVS_HOST)
        self.assertEqual(portbindings.VIF_TYPE_OVS, moved[portbindings.VIF_TYPE])
        self.agent_reports_up(port["id"])
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def agent_reports_up(self, port_id: str) -> None:
        """What an L2 agent's ``update_device_up`` does for its part."""
        provisioning_blocks.provisioning_complete(
            self.ctx, port_id, resources.PORT, provisioning_blocks.L2_AGENT_ENTITY)

    def test_activating_a_live_migrations_binding_waits_for_the_destination(self):
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0, device_owner="compute:nova")
        self.converge()
        self.assertEqual(ACTIVE, self.status(port["id"]))
        response = self._create_port_binding(self.fmt, port["id"], base.HOST_C1)
        self.assertEqual(201, response.status_int, response.body)
        self.assertEqual(ACTIVE, self.status(port["id"]))     # still running at the source
        # The destination is prepared by entries due a little later: all of them done.
        self.assertTrue(base.wait_for(lambda: not self.worker.run_once()
                                      and not self.journal_pending(), timeout=10))
        self.assertEqual(ACTIVE, self.status(port["id"]))
        response = self._activate_port_binding(port["id"], base.HOST_C1)
        self.assertEqual(200, response.status_int, response.body)
        self.assertEqual(DOWN, self.status(port["id"]))
        self.converge()
        self.assertEqual(ACTIVE, self.status(port["id"]))

    def _create_port_binding(self, fmt, port_id, host):
        request = self.new_create_request(f"ports/{port_id}/bindings",
                                          {"binding": {"host": host}}, fmt)
        request.environ["neutron.context"] = _service_context()
        return request.get_response(self.api)

    def _activate_port_binding(self, port_id, host):
        return self._service_req("PUT", "ports", id=port_id, data={"port_id": port_id},
                                 subresource="bindings", sub_id=host,
                                 action="activate").get_response(self.api)


def _service_context():
    from neutron_lib import context as n_context
    return n_context.Context("service", "service", roles=["service"])


class TestOnDemand(PortStatusTestCase):

    def start_plugin(self) -> None:
        opts.register_opts(cfg.CONF)
        cfg.CONF.set_override("mode", "on_demand", group=opts.FABRIC_GROUP)
        super().start_plugin()

    def test_a_cluster_port_is_down_until_the_watcher_saw_its_vm(self):
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.converge()
        self.assertEqual(set(), self.leaf_bindings(net["id"]))
        self.assertEqual(DOWN, self.status(port["id"]))
        # What the vCenter watcher writes when it sees the VM on an ESXi host.
        att = attachment("DC0_C0_H2")
        seen = locations.Seen(port["id"], "vm-1", "vm-1", att.esxi_host,
                              port["mac_address"],
                              port[portbindings.VIF_DETAILS]["pg_id"])
        for network_id in locations.set_vm(self.ctx, "vm-1", [seen]):
            store.record(self.ctx, names.RESOURCE_NETWORK, network_id, "location")
        self.converge()
        self.assertEqual({(att.leaf, att.port)}, self.leaf_bindings(net["id"]))
        self.assertEqual(ACTIVE, self.status(port["id"]))


class TestVSphereDvsAlone(base.VSphereDVSTestCase):
    shared = _FABRIC.sim

    def test_a_provider_vlan_port_is_active_at_once(self):
        net = self.make_network(segmentation_id=1700)
        port = self.make_port(net["id"])
        self.assertBoundToPortGroup(port, net, vlan=1700)
        self.assertEqual(ACTIVE, port["status"])


class TestVSphereDvsUnderAnotherTopDriver(base.VSphereDVSTestCase):
    shared = _FABRIC.sim
    _mechanism_drivers = ["dvsf_test_toplevel", "vsphere_dvs"]

    def test_a_vxlan_port_is_active_at_once_when_the_top_driver_holds_no_block(self):
        net = self.make_network(network_type="vxlan", physnet=None, segmentation_id=5020)
        port = self.make_port(net["id"], host=base.HOST_C1)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual(ACTIVE, port["status"])
        self.assertEqual(ACTIVE, self.show_port(port["id"])["status"])
