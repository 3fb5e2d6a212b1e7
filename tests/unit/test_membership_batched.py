"""Membership's batched reads (``membership.addresses``, ``membership.plugged``): what
the policy worker, the sweep and the audit all ask of Neutron about many ports at once.

In-process Neutron (ML2 with vsphere_dvs and port security) against the vCenter
simulator, as ``test_security_ports.py``.  Queries are counted with SQLAlchemy's
``before_cursor_execute`` event in the test's thread only, as
``test_sweeper_queries.py`` does.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import dvs_ml2_base as base
from neutron_lib.api.definitions import portbindings
from sqlalchemy import event
from sqlalchemy.engine import Engine
from test_security_ports import SecurityTestCase

from networking_dvs_fabric.security import membership
from networking_dvs_fabric.vcenter import sweeper_needs

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


class TestMembershipBatched(SecurityTestCase):
    shared = _SIM

    def counted(self, call: Callable[[], Any]) -> tuple[Any, int]:
        me = threading.get_ident()
        count = [0]

        def seen(*_args: Any, **_kwargs: Any) -> None:
            if threading.get_ident() == me:
                count[0] += 1
        event.listen(Engine, "before_cursor_execute", seen)
        try:
            return call(), count[0]
        finally:
            event.remove(Engine, "before_cursor_execute", seen)

    def test_addresses_hold_fixed_and_pair_ips_and_name_ports_with_another_mac(self):
        net = self.network_with_subnet()
        web = self.group("web")
        plain = self.make_port(net["id"], security_groups=[web["id"]])
        own_mac = self.make_port(net["id"], security_groups=[web["id"]],
                                 allowed_address_pairs=[{"ip_address": "10.20.0.200"}])
        other_mac = self.make_port(net["id"], security_groups=[web["id"]],
                                   allowed_address_pairs=[{"ip_address": "10.20.0.201",
                                                           "mac_address": "fa:16:3e:00:00:99"}])
        ports = [plain, own_mac, other_mac]
        found = membership.addresses(self.ctx, [p["id"] for p in ports])
        for port in ports:
            self.assertIn(port["fixed_ips"][0]["ip_address"], found.by_port[port["id"]])
        self.assertIn("10.20.0.200", found.by_port[own_mac["id"]])
        self.assertIn("10.20.0.201", found.by_port[other_mac["id"]])
        self.assertEqual(frozenset({other_mac["id"]}), found.foreign_mac)
        # The set's port group is made from the same answer.
        key = plain[portbindings.VIF_DETAILS]["dvs_port_group_set"]
        inputs = membership.set_inputs(self.ctx, net["id"], key)
        assert inputs is not None
        self.assertEqual(found.of(p["id"] for p in ports), inputs.own_addresses)
        self.assertTrue(inputs.foreign_mac)
        self.assertEqual(membership.Addresses({}, frozenset()),
                         membership.addresses(self.ctx, []))

    def test_reads_of_many_ports_cost_what_reads_of_few_cost(self):
        net = self.network_with_subnet()
        web = self.group("web")
        few = [self.make_port(net["id"], security_groups=[web["id"]])["id"]
               for _ in range(2)]
        many = few + [self.make_port(net["id"], security_groups=[web["id"]])["id"]
                      for _ in range(5)]
        for read in (membership.addresses, membership.plugged):
            found_few, queries_few = self.counted(lambda: read(self.ctx, few))
            found_many, queries_many = self.counted(lambda: read(self.ctx, many))
            self.assertEqual(queries_few, queries_many, read.__name__)
        self.assertEqual(set(many), set(found_many))

    def test_members_addresses_are_read_without_listing_the_members(self):
        """A group's addresses: its members' fixed and pair IPs, however many members
        have none - a port group made in a project whose default group has thousands of
        ports without an address costs what it costs with two (bench scale, session 22:
        two statements of 4,000 parameters per port group before)."""
        with_ips = self.network_with_subnet()
        without = self.make_network("no-subnet")
        web, empty = self.group("web"), self.group("empty")
        fixed = self.make_port(with_ips["id"], security_groups=[web["id"]])
        paired = self.make_port(with_ips["id"], security_groups=[web["id"]],
                                allowed_address_pairs=[{"ip_address": "10.20.0.200"}])
        groups = [web["id"], empty["id"]]
        expected = {web["id"]: sorted([fixed["fixed_ips"][0]["ip_address"],
                                       paired["fixed_ips"][0]["ip_address"], "10.20.0.200"]),
                    empty["id"]: []}
        few, few_params = self.parameters(lambda: membership.members_addresses(self.ctx, groups))
        for _ in range(8):
            self.make_port(without["id"], security_groups=[web["id"]])
        many, many_params = self.parameters(
            lambda: membership.members_addresses(self.ctx, groups))
        self.assertEqual(expected, few)
        self.assertEqual(expected, many)          # the members without address add none
        self.assertEqual(few_params, many_params)

    def parameters(self, call: Callable[[], Any]) -> tuple[Any, list[int]]:
        """``call()`` and the parameter count of each statement it ran (this thread)."""
        me = threading.get_ident()
        counts: list[int] = []

        def seen(_conn: Any, _cursor: Any, _statement: str, parameters: Any,
                 *_args: Any) -> None:
            if threading.get_ident() == me:
                counts.append(len(parameters or ()))
        event.listen(Engine, "before_cursor_execute", seen)
        try:
            return call(), counts
        finally:
            event.remove(Engine, "before_cursor_execute", seen)

    def test_plugged_names_the_set_of_each_bound_port_and_none_for_an_unbound_one(self):
        net = self.network_with_subnet()
        web = self.group("web")
        bound = self.make_port(net["id"], security_groups=[web["id"]])
        open_port = self.make_port(net["id"], port_security_enabled=False,
                                   security_groups=[])
        unbound = self.make_port(net["id"], host="", security_groups=[web["id"]])
        web_set = bound[portbindings.VIF_DETAILS]["dvs_port_group_set"]
        open_set = open_port[portbindings.VIF_DETAILS]["dvs_port_group_set"]
        ids = [bound["id"], open_port["id"], unbound["id"]]
        self.assertEqual({bound["id"]: {web_set}, open_port["id"]: {open_set}},
                         membership.plugged(self.ctx, ids))
        self.assertEqual({bound["id"]: {web_set}, open_port["id"]: {open_set}},
                         membership.plugged(self.ctx, ids, active_only=True))
        everyone = membership.plugged(self.ctx)          # every port vsphere_dvs bound
        self.assertEqual({web_set}, everyone[bound["id"]])
        self.assertNotIn(unbound["id"], everyone)
        self.assertEqual({web_set, open_set}, membership.plugged_sets(self.ctx, ids))
        # The sweep's answer for the network on the cluster's hosts: both sets.
        needed = sweeper_needs.needed_sets(self.ctx, [net["id"], "gone"], [base.HOST_C0])
        self.assertEqual({net["id"]: {web_set, open_set}, "gone": set()}, needed)
        self.assertEqual([], membership.pending_moves(self.ctx))

    def test_inputs_of_many_networks_cost_what_those_of_one_cost_and_match_them(self):
        """The policy worker reads a batch's networks at once: a member of a group every
        network's sets name as remote group (Neutron's default group) concerns them all."""
        web, db = self.group("web"), self.group("db")
        self.rule(web["id"], remote_group=web["id"], low=80, high=80)
        self.rule(db["id"], remote_group=web["id"], low=5432, high=5432)
        nets = [self.network_with_subnet(f"10.{40 + i}.0.0/24") for i in range(4)]
        for i, net in enumerate(nets):
            self.make_port(net["id"], security_groups=[web["id"]])
            if i % 2:
                self.make_port(net["id"], security_groups=[db["id"]])
        ids = [net["id"] for net in nets]
        one, few = self.counted(lambda: membership.networks_inputs(self.ctx, ids[:1]))
        every, many = self.counted(lambda: membership.networks_inputs(self.ctx, ids))
        self.assertEqual(few, many)
        self.assertEqual(one, {ids[0]: every[ids[0]]})
        for network_id in ids:
            self.assertEqual(membership.network_inputs(self.ctx, network_id),
                             every[network_id])
        # ``about``: only the sets a change of web can touch - every set here (db's
        # rules name web as remote group); about db alone: only the db sets.
        self.assertEqual(every, membership.networks_inputs(self.ctx, ids, about={web["id"]}))
        only_db = membership.networks_inputs(self.ctx, ids, about={db["id"]})
        self.assertEqual(sorted(ids[1::2]), sorted(only_db))
        self.assertTrue(all(inputs.security_group_ids == (db["id"],)
                            for sets in only_db.values() for inputs in sets.values()))
