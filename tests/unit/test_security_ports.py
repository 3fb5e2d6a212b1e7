"""Security groups, port security and admin state on vSphere ports (issue 13), ML2 side.

In-process Neutron (ML2 with vsphere_dvs and the port_security extension) against
the vCenter simulator: what a port group holds is read back from vCenter.  The
policy worker runs here as neutron-periodic-workers would (``drain``).  Packets
are the integration tests' (``tests/integration/test_security_groups.py``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator
from unittest import mock

import dvs_ml2_base as base
from neutron.extensions import securitygroup as ext_sg
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import exceptions as callback_exc
from oslo_config import cfg
from pyVmomi import vim

from networking_dvs_fabric import opts
from networking_dvs_fabric.db import locations
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.security import model, translate
from networking_dvs_fabric.sync import audit, repair
from networking_dvs_fabric.vcenter.policy_worker import PolicyWorker
from networking_dvs_fabric.vcenter.port_group_worker import PortGroupWorker

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


class SecurityTestCase(base.VSphereDVSTestCase):
    shared = _SIM

    def start_plugin(self) -> None:
        cfg.CONF.set_override("extension_drivers", ["port_security"], group="ml2")
        super().start_plugin()
        self.ctx = n_context.get_admin_context()

    # -- helpers ------------------------------------------------------------------
    def drain(self) -> None:
        """The policy worker, then the port group worker, until nothing is ready."""
        for worker in (PolicyWorker(self.mech.runtime), PortGroupWorker(self.mech.runtime)):
            passes = 0
            while worker.run_once():
                passes += 1
                self.assertLess(passes, 20, "the journal never drained")

    def network_with_subnet(self, cidr: str = "10.20.0.0/24") -> dict:
        net = self.make_network()
        self._make_subnet(self.fmt, {"network": net}, cidr.rsplit(".", 1)[0] + ".1", cidr)
        return net

    def group(self, name: str) -> dict:
        return self.driver.create_security_group(
            self.ctx, {"security_group": {"name": name, "description": "",
                                          "project_id": self._project_id}})

    def rule(self, group_id: str, direction: str = "ingress", protocol: str | None = "tcp",
             low: int | None = 22, high: int | None = 22, prefix: str | None = None,
             remote_group: str | None = None) -> dict:
        return self.driver.create_security_group_rule(self.ctx, {"security_group_rule": {
            "security_group_id": group_id, "direction": direction, "ethertype": "IPv4",
            "protocol": protocol, "port_range_min": low, "port_range_max": high,
            "remote_ip_prefix": prefix, "remote_group_id": remote_group,
            "remote_address_group_id": None, "description": "",
            "project_id": self._project_id}})

    def policy_of(self, port: dict) -> model.PortGroupPolicy:
        """The policy vCenter holds on the port group the port's binding names."""
        key = self.show_port(port["id"])[portbindings.VIF_DETAILS]["pg_id"]
        found = [pg for pg in self.mech.backend.network_port_groups(base.DVS,
                                                                     port["network_id"])
                 if pg.key == key]
        self.assertEqual(1, len(found), f"port group {key} of the port not in vCenter")
        assert found[0].policy is not None
        return found[0].policy

    def assert_member_admitted_until_it_leaves(self, server: dict, client: dict) -> None:
        """After the worker: the server's filter admits TCP 80 from the client; once the
        client's port is deleted, no more."""
        self.drain()
        address = f"{client['fixed_ips'][0]['ip_address']}/32"
        self.assertTrue(self.accepts(self.policy_of(server), model.OUTGOING, 6, address, 80))
        self.delete_port(client["id"])
        self.drain()
        self.assertFalse(self.accepts(self.policy_of(server), model.OUTGOING, 6, address, 80))

    @staticmethod
    def accepts(policy: model.PortGroupPolicy, direction: str, protocol: int | None,
                source: str | None, port: int | None = None) -> bool:
        return any(r.direction == direction and r.action == model.ACCEPT and
                   r.protocol == protocol and r.source == source and
                   (port is None or (r.destination_ports is not None and
                                     r.destination_ports.low <= port <=
                                     r.destination_ports.high))
                   for r in policy.rules)


class TestSets(SecurityTestCase):

    def test_a_port_with_groups_sits_on_a_filtered_port_group_of_its_set(self):
        net = self.network_with_subnet()
        # What Neutron's default group holds (its rule templates are not in the unit
        # tests' database): egress anywhere, ingress from members.
        app = self.group("app")
        self.rule(app["id"], direction="egress", protocol=None, low=None, high=None)
        self.rule(app["id"], protocol=None, low=None, high=None, remote_group=app["id"])
        port = self.make_port(net["id"], security_groups=[app["id"]])
        details = port[portbindings.VIF_DETAILS]
        self.assertTrue(details["dvs_port_group_set"].startswith("sg-"), details)
        policy = self.policy_of(port)
        self.assertTrue(policy.filtered)
        self.assertFalse(policy.forged_transmits)
        self.assertFalse(policy.mac_changes)
        # Egress from the port's own address only; a catch-all drop ends each direction.
        address = port["fixed_ips"][0]["ip_address"]
        self.assertTrue(any(r.direction == model.INCOMING and r.source == f"{address}/32"
                            and r.action == model.ACCEPT for r in policy.rules), policy)
        for direction in (model.INCOMING, model.OUTGOING):
            last = [r for r in policy.rules if r.direction == direction][-1]
            self.assertEqual(model.DROP, last.action)

    def test_port_security_off_gives_the_open_port_group(self):
        net = self.network_with_subnet()
        port = self.make_port(net["id"], port_security_enabled=False, security_groups=[])
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual(model.OPEN, details["dvs_port_group_set"])
        self.assertTrue(details["dvs_port_group_name"].endswith(net["id"]))   # as before
        policy = self.policy_of(port)
        self.assertFalse(policy.filtered)
        self.assertTrue(policy.forged_transmits)

    def test_ports_of_one_set_share_a_port_group_other_sets_get_their_own(self):
        net = self.network_with_subnet()
        a, b = self.make_port(net["id"]), self.make_port(net["id"])
        web = self.group("web")
        c = self.make_port(net["id"], security_groups=[web["id"]])
        pg = {p["id"]: p[portbindings.VIF_DETAILS]["pg_id"] for p in (a, b, c)}
        self.assertEqual(pg[a["id"]], pg[b["id"]])
        self.assertNotEqual(pg[a["id"]], pg[c["id"]])
        # The second port's address reaches the shared port group through the worker.
        self.drain()
        sources = {r.source for r in self.policy_of(b).rules if r.direction == model.INCOMING}
        self.assertTrue({f"{p['fixed_ips'][0]['ip_address']}/32" for p in (a, b)} <= sources
                        or any(s and "/" in s and not s.endswith("/32") for s in sources),
                        sources)

    def test_admin_down_at_bind_puts_the_port_on_the_blocked_port_group_down(self):
        net = self.network_with_subnet()
        port = self.make_port(net["id"], admin_state_up=False)
        self.assertEqual(model.BLOCKED, port[portbindings.VIF_DETAILS]["dvs_port_group_set"])
        self.assertTrue(self.policy_of(port).blocked)
        self.assertEqual("DOWN", self.show_port(port["id"])["status"])


class TestRules(SecurityTestCase):

    def test_a_rule_added_and_removed_reaches_the_port_group(self):
        net = self.network_with_subnet()
        ssh = self.group("ssh")
        port = self.make_port(net["id"], security_groups=[ssh["id"]])
        self.assertFalse(self.accepts(self.policy_of(port), model.OUTGOING, 6,
                                      "10.9.0.0/16", 22))
        rule = self.rule(ssh["id"], prefix="10.9.0.0/16")
        self.drain()
        self.assertTrue(self.accepts(self.policy_of(port), model.OUTGOING, 6, "10.9.0.0/16",
                                     22), self.policy_of(port))
        self.driver.delete_security_group_rule(self.ctx, rule["id"])
        self.drain()
        self.assertFalse(self.accepts(self.policy_of(port), model.OUTGOING, 6,
                                      "10.9.0.0/16", 22))

    def test_remote_group_follows_its_members(self):
        net = self.network_with_subnet()
        servers, clients = self.group("servers"), self.group("clients")
        self.rule(servers["id"], remote_group=clients["id"], low=80, high=80)
        server = self.make_port(net["id"], security_groups=[servers["id"]])
        client = self.make_port(net["id"], security_groups=[clients["id"]])
        self.assert_member_admitted_until_it_leaves(server, client)

    def test_a_member_joining_on_another_network_reaches_the_filters_naming_its_group(self):
        """The API journals the join for the member's own network only; the worker
        finds the other networks whose sets name the group as remote group."""
        server_net = self.network_with_subnet("10.20.0.0/24")
        client_net = self.network_with_subnet("10.21.0.0/24")
        servers, clients = self.group("servers"), self.group("clients")
        self.rule(servers["id"], remote_group=clients["id"], low=80, high=80)
        server = self.make_port(server_net["id"], security_groups=[servers["id"]])
        self.drain()
        client = self.make_port(client_net["id"], security_groups=[clients["id"]])
        pending = store.rows(self.ctx, states=[store.PENDING])
        self.assertNotIn(server_net["id"], " ".join(r["resource_id"] for r in pending))
        # The worker's first pass plans nothing itself: it turns the members entry into
        # one port_group_policy entry per network, so each network is planned under its
        # own claim (one worker at a time), never from two entries at once.
        PolicyWorker(self.mech.runtime).run_once()
        pending = {(r["resource_type"], r["resource_id"].split(":")[0])
                   for r in store.rows(self.ctx, states=[store.PENDING])}
        self.assertLessEqual({("port_group_policy", server_net["id"]),
                              ("port_group_policy", client_net["id"])}, pending)
        self.assertNotIn("security_group_members", {kind for kind, _ in pending})
        self.assert_member_admitted_until_it_leaves(server, client)

    def test_members_joining_many_networks_at_once_make_one_row_per_network(self):
        """A group naming itself as remote group, as Neutron's default group does:
        every member's join concerns every network of the group.  A worker that was
        away finds one members entry per join; its pass records one port_group_policy
        row per network (per join it was a row per network: N*N), and every filter
        then admits every member."""
        web = self.group("web")
        self.rule(web["id"], remote_group=web["id"], low=80, high=80)
        nets = [self.network_with_subnet(f"10.{30 + i}.0.0/24") for i in range(5)]
        ports = [self.make_port(net["id"], security_groups=[web["id"]]) for net in nets]
        ports.append(self.make_port(nets[0]["id"], security_groups=[web["id"]]))
        joins = [r for r in store.rows(self.ctx, states=[store.PENDING])
                 if r["resource_type"] == "security_group_members"]
        self.assertEqual(len(ports), len(joins))
        PolicyWorker(self.mech.runtime).run_once()
        rows = [r["resource_id"].split(":")[0]
                for r in store.rows(self.ctx, states=[store.PENDING], limit=1000)
                if r["resource_type"] == "port_group_policy" and r["operation"] == web["id"]]
        self.assertEqual(sorted(net["id"] for net in nets), sorted(rows))
        self.drain()
        for port in ports:
            policy = self.policy_of(port)
            for other in ports:
                address = f"{other['fixed_ips'][0]['ip_address']}/32"
                self.assertTrue(self.accepts(policy, model.OUTGOING, 6, address, 80),
                                f"{address} not admitted on port {port['id']}'s network")

    def test_a_member_without_addresses_concerns_only_its_own_network(self):
        """A port with no address (its network has no subnet) joining a group that
        other networks' sets name as remote group changes none of their filters: the
        API journals its own network only, no members entry, and the others' filters
        stay as they were; a port with an address, on the same networks, is fanned
        out to them."""
        web = self.group("web")
        self.rule(web["id"], remote_group=web["id"], low=80, high=80)
        nets = [self.network_with_subnet(f"10.{40 + i}.0.0/24") for i in range(3)]
        ports = [self.make_port(net["id"], security_groups=[web["id"]]) for net in nets]
        self.drain()
        before = {p["id"]: self.policy_of(p) for p in ports}
        bare_net = self.make_network("no-subnet")
        bare = self.make_port(bare_net["id"], security_groups=[web["id"]])
        self.assertEqual([], bare["fixed_ips"])
        pending = {(r["resource_type"], r["resource_id"].split(":")[0])
                   for r in store.rows(self.ctx, states=[store.PENDING])}
        self.assertEqual({("port_group_policy", bare_net["id"])}, pending)
        self.drain()
        self.assertEqual(before, {p["id"]: self.policy_of(p) for p in ports})
        self.assertTrue(self.policy_of(bare).rules)     # its own set's port group, filtered
        # The contrast: a member with an address is fanned out to every naming network.
        with_address = self.make_port(nets[0]["id"], security_groups=[web["id"]])
        PolicyWorker(self.mech.runtime).run_once()
        fanned = {r["resource_id"].split(":")[0]
                  for r in store.rows(self.ctx, states=[store.PENDING])
                  if r["resource_type"] == "port_group_policy"}
        self.assertLessEqual({net["id"] for net in nets}, fanned)
        self.drain()
        address = f"{with_address['fixed_ips'][0]['ip_address']}/32"
        for port in ports:
            self.assertTrue(self.accepts(self.policy_of(port), model.OUTGOING, 6, address, 80))

    def test_an_address_group_follows_its_addresses(self):
        net = self.network_with_subnet()
        admins = self.driver.create_address_group(self.ctx, {"address_group": {
            "name": "admins", "description": "", "project_id": self._project_id,
            "addresses": []}})
        ssh = self.group("ssh")
        self.driver.create_security_group_rule(self.ctx, {"security_group_rule": {
            "security_group_id": ssh["id"], "direction": "ingress", "ethertype": "IPv4",
            "protocol": "tcp", "port_range_min": 22, "port_range_max": 22,
            "remote_ip_prefix": None, "remote_group_id": None,
            "remote_address_group_id": admins["id"], "description": "",
            "project_id": self._project_id}})
        port = self.make_port(net["id"], security_groups=[ssh["id"]])
        self.assertFalse(self.accepts(self.policy_of(port), model.OUTGOING, 6,
                                      "192.0.2.0/28", 22))
        self.driver.add_addresses(self.ctx, admins["id"], {"addresses": ["192.0.2.0/28"]})
        self.drain()
        self.assertTrue(self.accepts(self.policy_of(port), model.OUTGOING, 6, "192.0.2.0/28",
                                     22), self.policy_of(port))
        self.driver.remove_addresses(self.ctx, admins["id"],
                                     {"addresses": ["192.0.2.0/28"]})
        self.drain()
        self.assertFalse(self.accepts(self.policy_of(port), model.OUTGOING, 6,
                                      "192.0.2.0/28", 22))

    def test_a_rule_making_a_filter_too_large_is_refused_at_the_api(self):
        net = self.network_with_subnet()
        wide = self.group("wide")
        self.make_port(net["id"], security_groups=[wide["id"]])
        self.mech.subscriber._max_rules = 29        # [ml2_vsphere] max_filter_rules
        for n in range(8):                          # 2 DVS rules each: 16 + 12 base
            self.rule(wide["id"], low=1000 + n, high=1000 + n, prefix="10.9.0.0/16")
        with self.assertRaises(ext_sg.SecurityGroupConflict) as refused:
            self.rule(wide["id"], low=2000, high=2000, prefix="10.9.0.0/16")
        self.assertIn("max_filter_rules", str(refused.exception))
        self.assertIn(wide["id"], str(refused.exception))
        rules = self.driver.get_security_group_rules(
            self.ctx, filters={"security_group_id": [wide["id"]], "port_range_min": [2000]})
        self.assertEqual([], rules)

    def test_a_rule_the_dvs_cannot_express_is_refused_naming_why(self):
        group = self.group("pingers")
        # Neutron's API answers the callback's exception as 400 (its inner exception,
        # an InvalidInput); called on the plugin, it comes wrapped.
        with self.assertRaises(callback_exc.CallbackFailure) as refused:
            self.rule(group["id"], protocol="icmp", low=8, high=0)
        [inner] = refused.exception.inner_exceptions
        self.assertIsInstance(inner, translate.RuleNotExpressible)
        self.assertIn("ICMP type 8 code 0", str(inner))
        rules = self.driver.get_security_group_rules(
            self.ctx, filters={"security_group_id": [group["id"]], "protocol": ["icmp"]})
        self.assertEqual([], rules)


class TestMoves(SecurityTestCase):

    def test_groups_changed_after_bind_move_the_binding_to_the_new_set(self):
        net = self.network_with_subnet()
        port = self.make_port(net["id"])
        before = port[portbindings.VIF_DETAILS]
        web = self.group("web")
        self.rule(web["id"], low=443, high=443, prefix="0.0.0.0/0")
        self._update("ports", port["id"], {"port": {"security_groups": [web["id"]]}},
                     as_admin=True)
        self.drain()
        after = self.show_port(port["id"])[portbindings.VIF_DETAILS]
        self.assertNotEqual(before["dvs_port_group_set"], after["dvs_port_group_set"])
        self.assertNotEqual(before["pg_id"], after["pg_id"])
        self.assertTrue(self.accepts(self.policy_of(port), model.OUTGOING, 6, "0.0.0.0/0",
                                     443))
        # The old set's port group had no other port: released.
        self.assertIsNone(self.vc.port_group(before["pg_id"]))

    def test_admin_down_and_up_again_after_bind(self):
        net = self.network_with_subnet()
        port = self.make_port(net["id"])
        self._update("ports", port["id"], {"port": {"admin_state_up": False}}, as_admin=True)
        self.drain()
        shown = self.show_port(port["id"])
        self.assertEqual(model.BLOCKED, shown[portbindings.VIF_DETAILS]["dvs_port_group_set"])
        self.assertEqual("DOWN", shown["status"])
        self.assertTrue(self.policy_of(port).blocked)
        self._update("ports", port["id"], {"port": {"admin_state_up": True}}, as_admin=True)
        self.drain()
        shown = self.show_port(port["id"])
        self.assertTrue(shown[portbindings.VIF_DETAILS]["dvs_port_group_set"].startswith("sg-"))
        self.assertEqual("ACTIVE", shown["status"])
        self.assertFalse(self.policy_of(port).blocked)


class TestCeiling(SecurityTestCase):

    def test_a_new_set_beyond_max_port_groups_fails_to_bind_naming_the_option(self):
        self.assertTrue(self.mech.backend.wait_cache_ready(10))
        net = self.network_with_subnet()
        self.make_port(net["id"])
        count = self.mech.backend.port_group_count()
        self.assertIsNotNone(count)
        cfg.CONF.set_override("max_port_groups", count, group=opts.VSPHERE_GROUP)
        self.mech.backend.settings = type(self.mech.backend.settings)(
            **{**self.mech.backend.settings.__dict__, "max_port_groups": count})
        web = self.group("web")
        with self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"], security_groups=[web["id"]])
        self.assertNotBound(port)
        self.assertIn("max_port_groups", base.log_lines(logs.records))
        # A port of an existing set still binds.
        self.assertEqual("dvs", self.make_port(net["id"])[portbindings.VIF_TYPE])


DENIED = "Permission to perform this operation was denied."


@contextlib.contextmanager
def task_refused(method: str, fault: BaseException) -> Iterator[list[str]]:
    """``vim.DistributedVirtualSwitch/dvs.DistributedVirtualPortgroup/VirtualMachine
    .<method>`` raises ``fault``.

    A mock, because the simulator checks no privileges: it never refuses a port group
    or VM change with NoPermission.  Only that one pyVmomi call is replaced; yields the
    moids it was called on.
    """
    owner = {"AddDVPortgroup_Task": vim.DistributedVirtualSwitch,
             "ReconfigVM_Task": vim.VirtualMachine}.get(method,
                                                        vim.dvs.DistributedVirtualPortgroup)
    called: list[str] = []

    def refuse(mo: Any, *args: Any, **kwargs: Any) -> Any:
        called.append(mo._moId)
        raise fault
    with mock.patch.object(owner, method, refuse):
        yield called


class TestRefusals(SecurityTestCase):

    def test_a_port_group_vcenter_refuses_to_make_fails_the_bind_naming_it_and_the_fault(self):
        net = self.network_with_subnet()
        web = self.group("web")
        fault = vim.fault.NoPermission(msg=DENIED, privilegeId="DVPortgroup.PolicyOp")
        with task_refused("AddDVPortgroup_Task", fault) as tried, \
                self.assertLogs(base.LOGGER, "ERROR") as logs:
            port = self.make_port(net["id"], security_groups=[web["id"]])
        self.assertTrue(tried)
        self.assertNotBound(port)
        text = base.log_lines(logs.records)
        for word in ("create port group", net["id"], "NoPermission", "DVPortgroup.PolicyOp"):
            self.assertIn(word, text)
        # Nothing half-made: no port group of the network at all (the filter goes in the
        # same call as the port group).
        self.assertEqual([], self.mech.backend.network_port_groups(base.DVS, net["id"]))

    def test_a_filter_change_vcenter_refuses_fails_its_entry_and_keeps_the_old_filter(self):
        net = self.network_with_subnet()
        ssh = self.group("ssh")
        port = self.make_port(net["id"], security_groups=[ssh["id"]])
        before = self.policy_of(port)
        self.rule(ssh["id"], prefix="10.9.0.0/16")
        fault = vim.fault.NoPermission(msg=DENIED, privilegeId="DVPortgroup.PolicyOp")
        with task_refused("ReconfigureDVPortgroup_Task", fault) as tried:
            self.drain()
        self.assertTrue(tried)
        self.assertTrue(self.policy_of(port).same_as(before))
        failed = store.rows(self.ctx, states=[store.FAILED])
        self.assertEqual({f"{net['id']}:{base.DVS}"}, {r["resource_id"] for r in failed})
        error = failed[0]["last_error"]
        pg_name = port[portbindings.VIF_DETAILS]["dvs_port_group_name"]
        for word in ("write the filter", pg_name, "NoPermission", "DVPortgroup.PolicyOp"):
            self.assertIn(word, error)

    def test_a_nic_move_vcenter_refuses_leaves_nic_and_binding_in_place_and_sync_moves_it(self):
        net = self.network_with_subnet()
        ssh = self.group("ssh")
        self.rule(ssh["id"], prefix="10.9.0.0/16")
        port = self.make_port(net["id"], security_groups=[ssh["id"]])
        old = port[portbindings.VIF_DETAILS]
        old_pg = self.vc.port_group(old["pg_id"])
        assert old_pg is not None
        # The VM as Nova plugs it (its NIC has the port's MAC, on the port group the
        # binding names) and as the watcher records it; the VM's other NICs stay.
        self.vc.attach_nic(old_pg, mac=port["mac_address"])
        vm = self.vc.vm()
        locations.set_vm(self.ctx, vm._moId, [locations.Seen(
            port["id"], vm._moId, vm.name, "esx-1", port["mac_address"], old_pg.name)])
        web = self.group("web")
        self.rule(web["id"], low=443, high=443, prefix="0.0.0.0/0")
        self._update("ports", port["id"], {"port": {"security_groups": [web["id"]]}},
                     as_admin=True)
        fault = vim.fault.NoPermission(msg=DENIED,
                                       privilegeId="VirtualMachine.Config.EditDevice")
        with task_refused("ReconfigVM_Task", fault) as tried:
            self.drain()
        self.assertEqual([vm._moId], tried)
        failed = store.rows(self.ctx, states=[store.FAILED])
        self.assertEqual([port["id"]], [r["resource_id"] for r in failed])
        for word in ("move the NIC", port["mac_address"], vm._moId, "NoPermission",
                     "VirtualMachine.Config.EditDevice"):
            self.assertIn(word, failed[0]["last_error"])
        # Nothing half-done: the NIC, the binding and the port group it sits on stay.
        self.assertEqual([old["pg_id"]], self.nic_port_groups(port["mac_address"]))
        self.assertEqual(old, self.show_port(port["id"])[portbindings.VIF_DETAILS])
        self.assertIsNotNone(self.vc.port_group(old["pg_id"]))
        # The audit names the port; the sync, once vCenter allows it, moves it.
        parts = audit.Parts.of(self.mech.runtime)
        pending = [d for d in audit.audit(self.ctx, parts).drifts
                   if d.kind == "port_set_pending"]
        self.assertEqual(1, len(pending), pending)
        self.assertIn(port["id"], pending[0].detail)
        report = audit.audit(self.ctx, parts)
        done = repair.repair(self.ctx, parts, report)
        self.assertEqual([], done.failures)
        new = self.show_port(port["id"])[portbindings.VIF_DETAILS]
        self.assertNotEqual(old["pg_id"], new["pg_id"])
        self.assertEqual([new["pg_id"]], self.nic_port_groups(port["mac_address"]))
        self.assertTrue(self.accepts(self.policy_of(port), model.OUTGOING, 6, "0.0.0.0/0",
                                     443))
        self.drain()        # the release the move handed over
        self.assertIsNone(self.vc.port_group(old["pg_id"]))
        self.assertEqual([], audit.audit(self.ctx, parts).drifts)

    def nic_port_groups(self, mac: str) -> list[str]:
        """The port groups of the VM's NICs with ``mac``."""
        card = vim.vm.device.VirtualEthernetCard
        return [dev.backing.port.portgroupKey for dev in self.vc.vm().config.hardware.device
                if isinstance(dev, card) and (dev.macAddress or "").lower() == mac.lower()]
