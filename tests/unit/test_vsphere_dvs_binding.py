"""The vsphere_dvs mechanism driver on Neutron's ML2 test base against a real vCenter
simulator: binding, port group reuse and cache, names, ownership, clean-up, concurrency.

Results are read back from vCenter with a separate pyVmomi session (``base.VCenter``),
never through the code under test.
"""
from __future__ import annotations

import threading
import uuid
from concurrent import futures
from unittest import mock

import dvs_ml2_base as base
from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings

from networking_dvs_fabric.security import desired, model
from networking_dvs_fabric.vcenter import pg_cache
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.portgroups import PortGroupManager
from networking_dvs_fabric.vcenter.session import VCenterSession
from networking_dvs_fabric.vcenter.sweeper import PortGroupSweeper

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


def second_backend(test, watch: bool = True) -> VSphereBackend:
    """What another API worker process has: its own session, locks and cache."""
    config = test.mech.backend.session.config
    other = VSphereBackend(test.mech.backend.settings, lambda: VCenterSession(config),
                           test.mech.backend.deployment)
    other.start(watch=watch)
    test.addCleanup(other.stop)
    return other


class VSphereDVSDriverTestCase(base.VSphereDVSTestCase):
    shared = _SIM


class TestBinding(VSphereDVSDriverTestCase):

    def test_level0_vlan_port_bound_to_port_group_with_segment_vlan(self):
        net = self.make_network(segmentation_id=1234)
        port = self.make_port(net["id"], host=base.HOST_C0)

        self.assertEqual(n_const.PORT_STATUS_ACTIVE, port["status"])
        pg = self.assertBoundToPortGroup(port, net, vlan=1234)
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual(pg.key, details["pg_id"])
        self.assertEqual(self.vc.dvs().uuid, details["dvs_id"])
        self.assertEqual(portbindings.CONNECTIVITY_L2,
                         details[portbindings.VIF_DETAILS_CONNECTIVITY])
        self.assertEqual("vsphere_dvs", details["bound_drivers"]["0"])
        self.assertEqual([pg], self.vc.port_groups_of(net["id"]))
        # What Neutron stored is what it shows again later.
        self.assertEqual(details, self.show_port(port["id"])[portbindings.VIF_DETAILS])

    def test_esxi_host_name_as_binding_host(self):
        net = self.make_network()
        port = self.make_port(net["id"], host=base.ESXI_HOST)
        self.assertBoundToPortGroup(port, net)

    def test_second_cluster_mapping(self):
        net = self.make_network()
        port = self.make_port(net["id"], host=base.HOST_C1)
        self.assertBoundToPortGroup(port, net)

    def test_unknown_host_not_bound(self):
        net = self.make_network()
        port = self.make_port(net["id"], host="kvm-1")
        self.assertNotBound(port)
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

    def test_vlan_on_unmapped_physnet_not_bound(self):
        net = self.make_network(physnet=base.OTHER_PHYSNET)
        self.assertEqual("vlan", net["provider:network_type"])
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.assertNotBound(port)
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

    def test_vxlan_network_not_bound(self):
        net = self.make_network(network_type="vxlan", physnet=None, segmentation_id=5001)
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.assertNotBound(port)
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

    def test_second_port_reuses_port_group(self):
        net = self.make_network()
        first = self.make_port(net["id"], host=base.HOST_C0)
        pg = self.assertBoundToPortGroup(first, net)
        count = len(self.vc.port_groups())

        second = self.make_port(net["id"], host=base.HOST_C1)
        self.assertBoundToPortGroup(second, net)
        self.assertEqual(pg.key, second[portbindings.VIF_DETAILS]["pg_id"])
        self.assertEqual(count, len(self.vc.port_groups()))
        self.assertEqual([pg], self.vc.port_groups_of(net["id"]))

    def test_port_group_deleted_behind_our_back_is_recreated(self):
        self.assertTrue(self.mech.backend.wait_cache_ready(5), "port group cache not ready")
        net = self.make_network()
        first = self.make_port(net["id"])
        old = self.assertBoundToPortGroup(first, net)
        # Once the watch reported the new port group, binds are answered from the cache.
        port_set = first[portbindings.VIF_DETAILS]["dvs_port_group_set"]
        self.assertTrue(base.wait_for(
            lambda: getattr(self.mech.backend.cached_port_group(base.PHYSNET, net["id"],
                                                                port_set),
                            "key", None) == old.key, timeout=10), "the cache never saw it")
        self.assertEqual(old.key, self.make_port(net["id"])[portbindings.VIF_DETAILS]["pg_id"])

        self.vc.destroy_port_group(old)
        self.assertPortGroupGone(old.key)
        # The cache's watch sees the deletion (vcsim's collector polls every 250 ms).
        self.assertTrue(base.wait_for(
            lambda: self.mech.backend.cached_port_group("physnet-dvs", net["id"],
                                                        port_set) is None,
            timeout=10), "the cache never saw the deletion")

        third = self.make_port(net["id"])
        new = self.assertBoundToPortGroup(third, net)
        self.assertNotEqual(old.key, new.key)
        self.assertEqual([new], self.vc.port_groups_of(net["id"]))

    def test_later_ports_cost_no_vcenter_call(self):
        """The first port of a network pays the vCenter task; the next ones, even right
        after it, are answered from the cache (a counting wrapper around the real
        session, not a mock: every call still reaches the simulator)."""
        backend = self.mech.backend
        self.assertTrue(backend.wait_cache_ready(5))
        calls = []
        real_invoke = VCenterSession.invoke

        me = threading.get_ident()

        def counting(session, func, what):
            if threading.get_ident() == me:        # the binds' calls, not the watch's
                calls.append(what)
            return real_invoke(session, func, what)

        # On the class: the session's channels (a listing's own handle) count too.
        patcher = mock.patch.object(VCenterSession, "invoke", counting)
        patcher.start()
        self.addCleanup(patcher.stop)
        net = self.make_network()
        first = self.assertBoundToPortGroup(self.make_port(net["id"]), net)
        self.assertTrue(any(what.startswith("create port group") for what in calls), calls)
        calls.clear()
        for _ in range(3):
            port = self.make_port(net["id"])
            self.assertEqual(first.key, port[portbindings.VIF_DETAILS]["pg_id"])
        self.assertEqual([], calls)

    def test_port_group_deleted_right_after_creation_is_recreated(self):
        """Created and deleted between two watch updates, vCenter reports neither: the
        cache holds a port group it never saw only provisionally, for a few seconds
        (regression: it used to keep it for good)."""
        backend = self.mech.backend
        self.assertTrue(backend.wait_cache_ready(5))
        network_id = str(uuid.uuid4())
        made = backend.ensure_port_group(base.PHYSNET, network_id, "blink", 700)
        self.vc.destroy_port_group(self.vc.port_group(made.pg_key))  # within vcsim's 250 ms
        # Several watch rounds report nothing; the provisional entry expires.
        base.time.sleep(pg_cache.PROVISIONAL_SECONDS + 0.5)
        self.assertIsNone(backend.cached_port_group(base.PHYSNET, network_id))
        again = backend.ensure_port_group(base.PHYSNET, network_id, "blink", 700)
        self.assertNotEqual(made.pg_key, again.pg_key)
        self.assertIsNotNone(self.vc.port_group(again.pg_key))

    def test_vlan_changed_behind_our_back_is_put_back(self):
        """Someone edits our port group's VLAN in vSphere: the next ensure restores it.

        Through a second backend without the watched cache (as an API worker whose
        cache is not ready yet), because the simulator does not publish property
        changes made by ReconfigureDVPortgroup_Task: the driver's own watch cannot see
        the edit in vcsim (a real vCenter reports it).
        """
        net = self.make_network(segmentation_id=3001)
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        port_set = port[portbindings.VIF_DETAILS]["dvs_port_group_set"]
        self.vc.set_vlan(pg, 42)
        self.assertEqual(42, self.vc.port_group(pg.key).vlan)

        other = second_backend(self, watch=False)
        wanted = desired.policy_for_set(n_context.get_admin_context(), net["id"], port_set)
        binding = other.ensure_port_group(base.PHYSNET, net["id"], net["name"], 3001,
                                          port_set, lambda: wanted)
        self.assertEqual(pg.key, binding.pg_key)
        restored = self.vc.port_group(pg.key)
        self.assertEqual(3001, restored.vlan)
        self.assertEqual(pg.description, restored.description)   # still ours
        self.assertEqual(pg.name, restored.name)


class TestNames(VSphereDVSDriverTestCase):

    NAMES = {
        "unicode": "réseau-網絡-сеть-ü",
        "quotes": "it's a \"quoted\" name",
        "slashes": "a/b\\c/d%2f",
        "long": "n" * 255,
        "long-unicode": "网" * 255,
    }

    def _check_name(self, net):
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        self.assertLessEqual(len(pg.name), 80, pg.name)
        self.assertIn(net["id"], pg.name)
        self.assertNotIn("/", pg.name)
        self.assertNotIn("%", pg.name)       # vCenter would show '/' as %2f
        self.assertEqual(pg.name, port[portbindings.VIF_DETAILS]["dvs_port_group_name"])
        # The port's set of security groups (issue 13) ends the name.
        self.assertTrue(pg.name.endswith(
            f"{net['id']}-{port[portbindings.VIF_DETAILS]['dvs_port_group_set']}"), pg.name)
        return pg

    def test_awkward_network_names(self):
        for label, name in self.NAMES.items():
            with self.subTest(label):
                net = self.make_network(name=name)
                self.assertEqual(name, net["name"])
                pg = self._check_name(net)
                if label == "unicode":
                    self.assertTrue(pg.name.startswith(f"{name}-{net['id']}-sg-"), pg.name)
                if label == "slashes":
                    self.assertTrue(pg.name.startswith("a_b_c_d_2f-"), pg.name)

    def test_empty_network_name(self):
        net = self.make_network(name="")
        pg = self._check_name(net)
        self.assertTrue(pg.name.startswith(f"-{net['id']}-"), pg.name)

    def test_same_long_name_twice_gives_distinct_port_groups(self):
        name = "same-" + "x" * 250
        one, two = self.make_network(name=name), self.make_network(name=name)
        pg1, pg2 = self._check_name(one), self._check_name(two)
        self.assertNotEqual(pg1.key, pg2.key)
        self.assertNotEqual(pg1.name, pg2.name)
        self.assertEqual(pg1.name.split(one["id"])[0], pg2.name.split(two["id"])[0])


class TestOwnership(VSphereDVSDriverTestCase):

    def test_foreign_port_group_with_our_name_is_not_used_nor_touched(self):
        net = self.make_network(name="taken", segmentation_id=2001)
        # The default format's name for this network's port group of ports without
        # security groups (port security on).
        name = f"taken-{net['id']}-{model.set_key(True, [])}"
        foreign = self.vc.create_port_group(name, vlan=77, description="made by hand")

        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"], security_groups=[])
        self.assertNotBound(port)
        self.assertIn("not created by networking-dvs-fabric", base.log_lines(logs.records))
        self.assertEqual(foreign, self.vc.port_group(foreign.key))   # same VLAN, description
        self.assertEqual([foreign], self.vc.port_groups_of(net["id"]))

        # Neither deleting the port and network nor sweeping removes it.
        self.delete_port(port["id"])
        self.delete_network(net["id"])
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        sweeper.sweep_once()
        sweeper.sweep_once()
        self.assertEqual(foreign, self.vc.port_group(foreign.key))

    def test_sweeper_never_deletes_unmarked_port_groups(self):
        stranger = self.vc.create_port_group(f"vm-net-{uuid.uuid4()}", vlan=88)
        builtin = [pg for pg in self.vc.port_groups() if pg.name == "DC0_DVPG0"]
        self.assertEqual(1, len(builtin))
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        for _ in range(3):
            deleted = sweeper.sweep_once()
            self.assertNotIn(stranger.name, deleted)
        self.assertEqual(stranger, self.vc.port_group(stranger.key))
        self.assertEqual(builtin[0], self.vc.port_group(builtin[0].key))


class TestCleanUp(VSphereDVSDriverTestCase):

    def test_delete_last_port_removes_port_group(self):
        net = self.make_network()
        port1 = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port1, net)
        port2 = self.make_port(net["id"], host=base.HOST_C1)

        self.delete_port(port2["id"])
        self.assertEqual(pg, self.vc.port_group(pg.key))
        self.delete_port(port1["id"])
        self.assertPortGroupGone(pg.key)
        self.assertEqual([], self.vc.port_groups_of(net["id"]))

    def test_two_ports_delete_one_keeps_port_group(self):
        net = self.make_network()
        one = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(one, net)
        two = self.make_port(net["id"])
        self.delete_port(one["id"])
        self.assertEqual(pg, self.vc.port_group(pg.key))
        self.delete_port(two["id"])
        self.assertPortGroupGone(pg.key)

    def test_unbound_port_on_other_host_does_not_keep_port_group(self):
        net = self.make_network()
        pg = self.assertBoundToPortGroup(self.make_port(net["id"]), net)
        self.assertNotBound(self.make_port(net["id"], host="kvm-1"))
        for port in self._list("ports", as_admin=True)["ports"]:
            if port["binding:host_id"] == base.HOST_C0:
                self.delete_port(port["id"])
        self.assertPortGroupGone(pg.key)

    def test_port_moved_off_the_dvs_releases_port_group(self):
        net = self.make_network()
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        moved = self.update_port_host(port["id"], "kvm-1")
        self.assertNotBound(moved)
        self.assertPortGroupGone(pg.key)
        back = self.update_port_host(port["id"], base.HOST_C1)
        self.assertBoundToPortGroup(back, net)

    def test_delete_network_removes_port_group(self):
        """A port group kept at port delete (a VM used it) goes with the network."""
        net = self.make_network()
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        self.vc.attach_nic(pg)
        self.addCleanup(self.vc.detach_nics, pg)
        self.delete_port(port["id"])
        self.assertEqual(pg, self.vc.port_group(pg.key))
        self.assertEqual(1, self.vc.detach_nics(pg))

        self.delete_network(net["id"])
        self.assertPortGroupGone(pg.key)

    def test_port_group_used_by_unknown_vm_is_kept_until_sweep(self):
        net = self.make_network()
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        self.vc.attach_nic(pg)
        self.addCleanup(self.vc.detach_nics, pg)
        self.assertIn(pg.name, self.vc.vm_networks())

        with self.assertLogs(base.LOGGER, "WARNING") as logs:
            self.delete_port(port["id"])
        text = base.log_lines(logs.records)
        self.assertIn(pg.name, text)
        self.assertIn(base.VM_NAME, text)
        self.assertEqual(pg, self.vc.port_group(pg.key))

        # A network still in use elsewhere keeps its port group through every sweep.
        busy_net = self.make_network()
        busy = self.assertBoundToPortGroup(self.make_port(busy_net["id"]), busy_net)

        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        self.assertNotIn(pg.name, sweeper.sweep_once())
        self.assertNotIn(pg.name, sweeper.sweep_once())     # the VM still has its NIC
        self.assertEqual(pg, self.vc.port_group(pg.key))

        self.assertEqual(1, self.vc.detach_nics(pg))
        fresh = PortGroupSweeper(self.mech.runtime, 60)
        self.assertNotIn(pg.name, fresh.sweep_once())       # first sweep: only suspect
        self.assertEqual(pg, self.vc.port_group(pg.key))
        self.assertIn(pg.name, fresh.sweep_once())          # second sweep: removed
        self.assertPortGroupGone(pg.key)
        self.assertEqual(busy, self.vc.port_group(busy.key))

    def test_sweeper_spares_port_group_bound_meanwhile(self):
        """A port group that became used between two sweeps is not removed."""
        net = self.make_network()
        port = self.make_port(net["id"])
        pg = self.assertBoundToPortGroup(port, net)
        self.vc.attach_nic(pg)
        self.addCleanup(self.vc.detach_nics, pg)
        self.delete_port(port["id"])          # kept: the VM uses it
        self.vc.detach_nics(pg)

        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        sweeper.sweep_once()                  # suspect now
        again = self.make_port(net["id"])     # ...but a port arrives
        self.assertEqual(pg.key, again[portbindings.VIF_DETAILS]["pg_id"])
        self.assertNotIn(pg.name, sweeper.sweep_once())
        self.assertEqual(pg, self.vc.port_group(pg.key))

    def test_sweeper_removes_port_group_of_deleted_network(self):
        """Left behind by an earlier failure: the network is gone from Neutron."""
        network_id = str(uuid.uuid4())
        made = self.mech.backend.ensure_port_group(base.PHYSNET, network_id, "orphan", 300)
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        self.assertNotIn(made.pg_name, sweeper.sweep_once())
        self.assertIn(made.pg_name, sweeper.sweep_once())
        self.assertPortGroupGone(made.pg_key)


class TestConcurrency(VSphereDVSDriverTestCase):

    def _owned(self, network_id):
        return [pg for pg in self.vc.port_groups_of(network_id)
                if base.MARKER in (pg.description or "")]

    def test_ten_threads_one_port_group(self):
        backend = self.mech.backend
        network_id = str(uuid.uuid4())
        barrier = threading.Barrier(10)

        def ensure(_):
            barrier.wait(5)
            return backend.ensure_port_group(base.PHYSNET, network_id, "racy", 555)

        with futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(ensure, range(10)))
        self.assertEqual(1, len({r.pg_key for r in results}), results)
        owned = self._owned(network_id)
        self.assertEqual(1, len(owned), owned)
        self.assertEqual(results[0].pg_key, owned[0].key)
        self.assertEqual(555, owned[0].vlan)

    def test_two_backends_racing_one_port_group(self):
        backends = [self.mech.backend, second_backend(self)]
        for round_ in range(5):
            network_id = str(uuid.uuid4())
            barrier = threading.Barrier(10)

            def ensure(i, network_id=network_id, barrier=barrier):
                barrier.wait(5)
                return backends[i % 2].ensure_port_group(
                    base.PHYSNET, network_id, f"race-{round_}", 600 + round_)

            with futures.ThreadPoolExecutor(10) as pool:
                results = list(pool.map(ensure, range(10)))
            owned = self._owned(network_id)
            self.assertEqual(1, len(owned), owned)
            self.assertEqual({owned[0].key}, {r.pg_key for r in results})
            self.assertEqual(600 + round_, owned[0].vlan)

    def test_duplicate_name_from_concurrent_creator_is_adopted(self):
        """The loser of a create race (DuplicateName from vCenter) adopts the winner's."""
        other = second_backend(self)
        network_id = str(uuid.uuid4())
        dvs = self.mech.backend.inventory().dvs[base.DVS]
        name = f"dup-{network_id}"
        winner = PortGroupManager(self.mech.backend.session, dvs).create(name, network_id, 700)
        with self.assertLogs(base.LOGGER, "INFO") as logs:
            loser = PortGroupManager(other.session, dvs).create(name, network_id, 700)
        self.assertIn("adopting it", base.log_lines(logs.records))
        self.assertEqual(winner.key, loser.key)
        self.assertEqual(1, len(self._owned(network_id)))


class TestSweeperProjects(VSphereDVSDriverTestCase):

    def test_ports_of_other_projects_count(self):
        """The sweep sees every project's ports (admin context), not just one."""
        net = self.make_network()
        port = self.make_port(net["id"], project_id="another-project")
        pg = self.assertBoundToPortGroup(port, net)
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        sweeper.sweep_once()
        sweeper.sweep_once()
        self.assertEqual(pg, self.vc.port_group(pg.key))
