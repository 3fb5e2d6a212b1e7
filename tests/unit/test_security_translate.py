"""Neutron security group rules -> a port group's DVS filter, judged by the packets it passes.

``verdict`` evaluates a policy the way the DVS does (first match in sequence wins,
stateless), so each test says what traffic an operator would see pass or drop.
"""
from __future__ import annotations

import random
import uuid
from typing import Any

import netaddr
import pytest

from networking_dvs_fabric.security import translate
from networking_dvs_fabric.security.model import (
    ACCEPT, DROP, INCOMING, OUTGOING, FilterRule, PortGroupPolicy)

SG, OTHER_SG = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
OWN = ["10.0.0.5", "10.0.0.4/32", "fd00::5"]
MEMBERS = {SG: ["10.0.0.4/32", "10.0.0.5/32", "10.0.0.9/32", "fd00::5/128"],
           OTHER_SG: ["10.0.1.7/32"]}
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def rule(direction: str, ethertype: str = "IPv4", protocol: Any = None,
         low: int | None = None, high: int | None = None, **remote: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "security_group_id": SG, "direction": direction,
            "ethertype": ethertype, "protocol": protocol, "port_range_min": low,
            "port_range_max": high, "remote_ip_prefix": remote.get("prefix"),
            "remote_group_id": remote.get("group"),
            "remote_address_group_id": remote.get("address_group")}


def default_group() -> list[dict[str, Any]]:
    return [rule("ingress", "IPv4", group=SG), rule("ingress", "IPv6", group=SG),
            rule("egress", "IPv4"), rule("egress", "IPv6")]


def policy(rules: list[dict[str, Any]], members: dict[str, list[str]] | None = None,
           address_groups: dict[str, list[str]] | None = None, **kw: Any) -> PortGroupPolicy:
    return translate.policy_for_set(rules, OWN, MEMBERS if members is None else members,
                                    address_groups or {}, **kw)


def matches(r: FilterRule, direction: str, proto: int, src: str, dst: str,
            sport: int | None, dport: int | None) -> bool:
    def in_net(addr: str, cidr: str | None) -> bool:
        if cidr is None:
            return True
        net, ip = netaddr.IPNetwork(cidr), netaddr.IPAddress(addr)
        return net.version == ip.version and ip in net

    def in_ports(port: int | None, ports: Any) -> bool:
        return ports is None or (port is not None and ports.low <= port <= ports.high)
    return (r.direction == direction and r.protocol in (None, proto)
            and in_net(src, r.source) and in_net(dst, r.destination)
            and in_ports(sport, r.source_ports) and in_ports(dport, r.destination_ports))


def verdict(p: PortGroupPolicy, direction: str, proto: int, src: str, dst: str,
            sport: int | None = None, dport: int | None = None) -> str:
    """What the DVS does with one IP packet: the first matching rule's action."""
    for r in p.rules:
        if matches(r, direction, proto, src, dst, sport, dport):
            return r.action
    return ACCEPT   # no rule: a DVS filter passes it


def sent(p: PortGroupPolicy, *args: Any, **kw: Any) -> str:       # the VM sends
    return verdict(p, INCOMING, *args, **kw)


def received(p: PortGroupPolicy, *args: Any, **kw: Any) -> str:   # delivered to the VM
    return verdict(p, OUTGOING, *args, **kw)


def test_default_group_members_in_anything_out() -> None:
    p = policy(default_group())
    assert p.filtered and not p.blocked and not p.forged_transmits and not p.mac_changes
    # Members of the group reach the VM on any protocol; others do not.
    assert received(p, TCP, "10.0.0.9", "10.0.0.5", 40000, 22) == ACCEPT
    assert received(p, UDP, "10.0.0.9", "10.0.0.5", 5000, 53) == ACCEPT
    assert received(p, TCP, "10.0.1.7", "10.0.0.5", 40000, 22) == DROP
    assert received(p, ICMPV6, "fd00::5", "fd00::6") == ACCEPT
    assert received(p, TCP, "fd00::99", "fd00::5", 40000, 22) == DROP
    # The VM talks to anyone, from its own addresses only (anti-spoofing).
    assert sent(p, TCP, "10.0.0.5", "192.0.2.1", 40000, 443) == ACCEPT
    assert sent(p, TCP, "10.0.0.4", "192.0.2.1", 40000, 443) == ACCEPT
    assert sent(p, TCP, "10.0.0.6", "192.0.2.1", 40000, 443) == DROP
    assert sent(p, UDP, "fd00::5", "2001:db8::1", 40000, 53) == ACCEPT
    # Own /32s are merged: 10.0.0.4 and 10.0.0.5 make one /31.
    assert any(r.source == "10.0.0.4/31" for r in p.rules)


def test_replies_to_egress_come_back_only_to_ephemeral_ports() -> None:
    p = policy(default_group())
    assert received(p, TCP, "192.0.2.1", "10.0.0.5", 443, 40000) == ACCEPT
    assert received(p, UDP, "2001:db8::1", "fd00::5", 53, 40000) == ACCEPT
    assert received(p, ICMP, "192.0.2.1", "10.0.0.5") == ACCEPT   # any ICMP: types not known
    # A new connection from outside to a service port is not a reply.
    assert received(p, TCP, "192.0.2.1", "10.0.0.5", 40000, 22) == DROP
    assert received(p, ICMPV6, "2001:db8::1", "fd00::5") == ACCEPT


def test_tcp_22_from_a_cidr() -> None:
    p = policy([rule("ingress", "IPv4", "tcp", 22, 22, prefix="198.51.100.0/24")])
    assert received(p, TCP, "198.51.100.9", "10.0.0.5", 50000, 22) == ACCEPT
    assert received(p, TCP, "198.51.100.9", "10.0.0.5", 50000, 23) == DROP
    assert received(p, UDP, "198.51.100.9", "10.0.0.5", 50000, 22) == DROP
    assert received(p, TCP, "203.0.113.9", "10.0.0.5", 50000, 22) == DROP
    # The server's answers leave; nothing else does (no egress rule).
    assert sent(p, TCP, "10.0.0.5", "198.51.100.9", 22, 50000) == ACCEPT
    assert sent(p, TCP, "10.0.0.5", "198.51.100.9", 40000, 80) == DROP
    assert sent(p, TCP, "10.0.0.6", "198.51.100.9", 22, 50000) == DROP


def test_egress_tcp_port_range_replies_from_those_ports_only() -> None:
    p = policy([rule("egress", "IPv4", "6", 8000, 8080, prefix="192.0.2.0/24")])
    assert sent(p, TCP, "10.0.0.5", "192.0.2.7", 40000, 8080) == ACCEPT
    assert sent(p, TCP, "10.0.0.5", "192.0.2.7", 40000, 8081) == DROP
    assert received(p, TCP, "192.0.2.7", "10.0.0.5", 8000, 40000) == ACCEPT
    assert received(p, TCP, "192.0.2.7", "10.0.0.5", 9000, 40000) == DROP
    assert received(p, TCP, "192.0.2.7", "10.0.0.5", 8000, 1000) == DROP


def test_remote_group_follows_its_members() -> None:
    rules = [rule("ingress", "IPv4", "tcp", 5432, 5432, group=OTHER_SG)]
    before = policy(rules)
    assert received(before, TCP, "10.0.1.7", "10.0.0.5", 40000, 5432) == ACCEPT
    assert received(before, TCP, "10.0.1.8", "10.0.0.5", 40000, 5432) == DROP
    after = policy(rules, members={OTHER_SG: ["10.0.1.8/32"]})
    assert received(after, TCP, "10.0.1.8", "10.0.0.5", 40000, 5432) == ACCEPT
    assert received(after, TCP, "10.0.1.7", "10.0.0.5", 40000, 5432) == DROP
    assert not after.same_as(before)


def test_remote_group_without_addresses_allows_nothing() -> None:
    empty = policy([rule("ingress", "IPv4", group=OTHER_SG)], members={OTHER_SG: []})
    assert empty.same_as(policy([]))
    assert received(empty, TCP, "10.0.1.7", "10.0.0.5", 40000, 22) == DROP


def test_address_group() -> None:
    ag = str(uuid.uuid4())
    p = policy([rule("ingress", "IPv6", "udp", 53, 53, address_group=ag)],
               address_groups={ag: ["2001:db8:1::/48", "192.0.2.0/24"]})
    assert received(p, UDP, "2001:db8:1::7", "fd00::5", 40000, 53) == ACCEPT
    assert received(p, UDP, "192.0.2.1", "10.0.0.5", 40000, 53) == DROP   # IPv4 of an IPv6 rule
    assert received(p, UDP, "2001:db8:2::7", "fd00::5", 40000, 53) == DROP


def test_ipv6_rule_leaves_ipv4_alone() -> None:
    p = policy([rule("egress", "IPv6", "icmp")])   # icmp in an IPv6 rule is ICMPv6
    assert sent(p, ICMPV6, "fd00::5", "2001:db8::1") == ACCEPT
    assert received(p, ICMPV6, "2001:db8::1", "fd00::5") == ACCEPT
    assert sent(p, ICMP, "10.0.0.5", "192.0.2.1") == DROP
    assert sent(p, TCP, "fd00::5", "2001:db8::1", 40000, 80) == DROP


def test_always_allowed_dhcp_and_neighbour_discovery() -> None:
    p = policy([])
    assert sent(p, UDP, "0.0.0.0", "255.255.255.255", 68, 67) == ACCEPT
    assert received(p, UDP, "10.0.0.2", "255.255.255.255", 67, 68) == ACCEPT
    assert sent(p, UDP, "fe80::5", "ff02::1:2", 546, 547) == ACCEPT
    assert sent(p, ICMPV6, "fe80::5", "fe80::1") == ACCEPT
    assert sent(p, ICMPV6, "::", "ff02::1:ff00:5") == ACCEPT         # DAD
    assert received(p, ICMPV6, "fe80::1", "ff02::1") == ACCEPT       # RA
    assert received(p, ICMPV6, "2001:db8::1", "fd00::5") == DROP
    # The VM may not act as a DHCP server, whatever its rules say.
    open_egress = policy([rule("egress", "IPv4"), rule("egress", "IPv6")])
    assert sent(open_egress, UDP, "10.0.0.5", "10.0.0.9", 67, 68) == DROP
    assert sent(open_egress, UDP, "fd00::5", "fd00::9", 547, 546) == DROP


def test_catch_all_drop_ends_each_direction() -> None:
    p = policy(default_group())
    for direction in (INCOMING, OUTGOING):
        mine = [r for r in p.rules if r.direction == direction]
        assert mine[-1].same_match(FilterRule(direction, DROP))
        assert [r for r in mine[:-1] if r.same_match(FilterRule(direction, DROP))] == []
    directions = [r.direction for r in p.rules]
    assert directions == sorted(directions)   # one block per direction


def test_same_input_same_policy_whatever_the_order() -> None:
    rules = default_group() + [rule("ingress", "IPv4", "tcp", 22, 22, prefix="0.0.0.0/0"),
                               rule("ingress", "IPv4", "tcp", 22, 22, prefix="0.0.0.0/0")]
    first = policy(rules)
    shuffled = rules[:]
    random.Random(4).shuffle(shuffled)
    second = translate.policy_for_set(shuffled, list(reversed(OWN)), MEMBERS, {})
    assert first == second
    keys = [(r.direction, r.action, r.protocol, r.source, r.destination, r.source_ports,
             r.destination_ports) for r in first.rules]
    assert len(keys) == len(set(keys))   # the duplicate rule gave no second DVS rule


def test_allowed_address_pair_with_foreign_mac_allows_forged_transmits() -> None:
    p = policy(default_group(), foreign_mac=True)
    assert p.forged_transmits and p.mac_changes and not p.allow_promiscuous


@pytest.mark.parametrize("protocol", ["icmp", "1", 1, "icmpv6", "ipv6-icmp"])
def test_icmp_type_code_is_refused_by_name(protocol: Any) -> None:
    r = rule("ingress", "IPv6" if "6" in str(protocol) else "IPv4", protocol, 8, 0)
    reason = translate.check_rule(r)
    assert reason is not None and "ICMP type 8 code 0" in reason
    assert "cannot match ICMP types" in reason
    exc = translate.not_expressible(r)
    assert isinstance(exc, translate.RuleNotExpressible)
    assert r["id"] in str(exc) and "ICMP type 8" in str(exc)
    # An existing such rule allows nothing rather than all ICMP.
    assert received(policy([r]), ICMP, "192.0.2.1", "10.0.0.5") == DROP
    assert translate.refused_rules([r]) == [(r["id"], reason)]


@pytest.mark.parametrize("r, expected", [
    (rule("ingress", "IPv4", "tcp", 22, 22), None),
    (rule("ingress", "IPv4", "icmp"), None),
    (rule("egress", "IPv4", "gre"), None),
    (rule("egress", "IPv4", "dccp", 5000, 5001), "matches ports only for TCP, UDP and SCTP"),
    (rule("egress", "IPv4", None, 80, 80), "port range 80-80 with any protocol"),
    (rule("egress", "IPv4", "frobnicate"), "unknown protocol name 'frobnicate'"),
])
def test_check_rule(r: dict[str, Any], expected: str | None) -> None:
    reason = translate.check_rule(r)
    assert (reason is None) if expected is None else (expected in (reason or ""))
    assert translate.not_expressible(r) is None if expected is None else True


def test_policy_too_large_names_groups_count_and_limit() -> None:
    rules = [rule("ingress", "IPv4", "tcp", port, port, prefix="192.0.2.0/24")
             for port in range(1000, 1100)]
    with pytest.raises(translate.PolicyTooLarge) as caught:
        policy(rules, max_rules=150)
    text = str(caught.value)
    assert SG in text and "150" in text and "[ml2_vsphere] max_filter_rules" in text
    count = len(policy(rules, max_rules=10_000).rules)
    assert f"need {count} DVS filter rules" in text
    assert translate.DEFAULT_MAX_RULES == 1000


def test_a_group_admitting_its_own_members_grows_linearly_not_squared() -> None:
    """200 ports of the default group with scattered addresses on one network.

    Without dropping the replies that "egress anywhere" covers, each (own address,
    member) pair needed a rule: ~40,000, far past max_filter_rules, and a network
    with ~32 such ports could bind no more of them.
    """
    rng = random.Random(7)
    members = sorted({f"10.0.{rng.randint(0, 15)}.{rng.randint(1, 254)}"
                      for _ in range(200)})
    rules = default_group()
    p = translate.policy_for_set(rules, members, {SG: members}, {})
    assert len(p.rules) <= 3 * len(members) + 20, len(p.rules)
    # The same behaviour: members in, others out, replies out from every member.
    first, last = members[0], members[-1]
    assert received(p, TCP, last, first, 40000, 22) == ACCEPT
    assert received(p, TCP, "10.0.99.1", first, 40000, 22) == DROP
    assert sent(p, TCP, first, last, 22, 40000) == ACCEPT
    assert sent(p, TCP, "10.0.99.1", last, 22, 40000) == DROP


def test_replies_kept_when_egress_is_restricted() -> None:
    """No "egress anywhere": the replies of an ingress rule are needed and stay."""
    p = policy([rule("ingress", protocol="tcp", low=22, high=22, prefix="192.0.2.0/24")])
    assert received(p, TCP, "192.0.2.7", "10.0.0.5", 40000, 22) == ACCEPT
    assert sent(p, TCP, "10.0.0.5", "192.0.2.7", 22, 40000) == ACCEPT
    assert sent(p, TCP, "10.0.0.5", "198.51.100.1", 22, 40000) == DROP
