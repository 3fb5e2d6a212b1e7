"""The lab's emulation of ESXi's port filter: OpenFlow text from a port group's policy.

Pure: no switch.  What the flows do to real frames is shown by
``tests/integration/test_dataplane_filter.py``.
"""
from __future__ import annotations

import random
import re

import pytest

from networking_dvs_fabric.lab import dataplane_filter as df
from networking_dvs_fabric.security.model import (ACCEPT, BLOCKED_POLICY, DROP, INCOMING,
                                                  OUTGOING, FilterRule, PortGroupPolicy,
                                                  PortRange)
from networking_dvs_fabric.security.vim_spec import policy_from_setting, port_setting

MAC = "fa:16:3e:12:34:56"
LINK = "vm42n0"


def covered(pairs: list[tuple[int, int]]) -> set[int]:
    return {port for port in range(65536)
            if any(port & mask == value for value, mask in pairs)}


@pytest.mark.parametrize("low,high", [(0, 65535), (22, 22), (1000, 1999), (1, 65535),
                                      (0, 0), (65535, 65535), (1024, 2047), (80, 443)])
def test_port_masks_cover_exactly_the_range(low: int, high: int) -> None:
    pairs = df.port_masks(low, high)
    assert covered(pairs) == set(range(low, high + 1))
    # Disjoint: no port is matched twice (every pair is an aligned block).
    assert sum(1 << (16 - bin(mask).count("1")) for _, mask in pairs) == high - low + 1


def test_port_masks_random_ranges_and_size() -> None:
    rng = random.Random(13)
    for _ in range(40):
        low = rng.randrange(65536)
        high = rng.randrange(low, 65536)
        pairs = df.port_masks(low, high)
        assert covered(pairs) == set(range(low, high + 1))
        assert len(pairs) <= 30          # 2 * (16 - 1): the known bound
    assert df.port_masks(0, 65535) == [(0, 0)]
    assert df.port_masks(8080, 8080) == [(8080, 0xFFFF)]
    with pytest.raises(df.FilterError):
        df.port_masks(10, 9)


def test_rule_matches_tcp_port_from_a_cidr() -> None:
    rule = FilterRule(OUTGOING, ACCEPT, protocol=6, source="10.0.0.0/24",
                      destination_ports=PortRange(8080, 8080))
    assert df.rule_matches(rule) == ["dl_type=0x0800,nw_proto=6,nw_src=10.0.0.0/24,"
                                     "tp_dst=8080"]


def test_rule_matches_families_hosts_and_ranges() -> None:
    # No address: IP of either family.
    assert df.rule_matches(FilterRule(INCOMING, DROP)) == ["dl_type=0x0800", "dl_type=0x86dd"]
    # A single address is matched exactly; IPv6 fields for IPv6.
    assert df.rule_matches(FilterRule(INCOMING, ACCEPT, source="10.1.2.3/32")) == \
        ["dl_type=0x0800,nw_src=10.1.2.3"]
    assert df.rule_matches(FilterRule(OUTGOING, ACCEPT, protocol=58,
                                      destination="2001:db8::/64")) == \
        ["dl_type=0x86dd,nw_proto=58,ipv6_dst=2001:db8::/64"]
    # A range becomes masked matches; source x destination ports multiply.
    ranged = df.rule_matches(FilterRule(OUTGOING, ACCEPT, protocol=17,
                                        source_ports=PortRange(53, 53),
                                        destination_ports=PortRange(1024, 2047)))
    assert ranged == ["dl_type=0x0800,nw_proto=17,tp_src=53,tp_dst=0x400/0xfc00",
                      "dl_type=0x86dd,nw_proto=17,tp_src=53,tp_dst=0x400/0xfc00"]
    # Ports without a protocol: TCP, UDP and SCTP.
    anyproto = df.rule_matches(FilterRule(INCOMING, DROP, source="10.0.0.0/8",
                                          destination_ports=PortRange(0, 0)))
    assert [re.search(r"nw_proto=(\d+)", m).group(1) for m in anyproto] == ["6", "17", "132"]


def test_rule_matches_refuses_what_cannot_match() -> None:
    with pytest.raises(df.FilterError, match="mixes IPv4 and IPv6"):
        df.rule_matches(FilterRule(INCOMING, ACCEPT, source="10.0.0.0/8",
                                   destination="2001:db8::/32"))
    with pytest.raises(df.FilterError, match="only TCP, UDP, SCTP"):
        df.rule_matches(FilterRule(INCOMING, ACCEPT, protocol=1,
                                   destination_ports=PortRange(1, 2)))
    with pytest.raises(df.FilterError, match="bad address"):
        df.rule_matches(FilterRule(INCOMING, ACCEPT, source="10.0.0.300/8"))


def flows_of(policy: PortGroupPolicy, vlan: int = 100) -> list[str]:
    return df.link_flows(df.PortFilter(LINK, MAC.upper(), vlan, policy))


def test_flows_first_match_wins_in_rule_order() -> None:
    policy = PortGroupPolicy(filtered=True, forged_transmits=False, mac_changes=False, rules=(
        FilterRule(OUTGOING, ACCEPT, protocol=6, destination_ports=PortRange(22, 22)),
        FilterRule(INCOMING, DROP, protocol=1),
        FilterRule(OUTGOING, DROP, destination="10.0.0.0/24")))
    cookie = f"cookie={df.link_cookie(LINK):#x}"
    assert flows_of(policy) == [
        f"table=1,{cookie},priority=30000,reg0=100,dl_dst={MAC},dl_type=0x0800,nw_proto=6,"
        "tp_dst=22,actions=NORMAL",
        f"table=1,{cookie},priority=30000,reg0=100,dl_dst={MAC},dl_type=0x86dd,nw_proto=6,"
        "tp_dst=22,actions=NORMAL",
        f"table=0,{cookie},priority=29999,in_port={LINK},dl_src={MAC},dl_type=0x0800,"
        "nw_proto=1,actions=drop",
        f"table=0,{cookie},priority=29999,in_port={LINK},dl_src={MAC},dl_type=0x86dd,"
        "nw_proto=1,actions=drop",
        f"table=1,{cookie},priority=29998,reg0=100,dl_dst={MAC},dl_type=0x0800,"
        "nw_dst=10.0.0.0/24,actions=drop",
        # No rule matched (ARP, other IP): on, with the link's VLAN.
        f"table=0,{cookie},priority=20,in_port={LINK},dl_src={MAC},"
        "actions=load:100->NXM_NX_REG0[0..11],resubmit(,1)",
        # Another source MAC: dropped (forged transmits off).
        f"table=0,{cookie},priority=10,in_port={LINK},actions=drop"]


def test_flows_without_filter_and_with_forged_transmits() -> None:
    cookie = f"cookie={df.link_cookie(LINK):#x}"
    # Rules of an unfiltered policy are not enforced; any source MAC passes.
    open_policy = PortGroupPolicy(filtered=False, rules=(FilterRule(INCOMING, DROP),))
    assert flows_of(open_policy, vlan=7) == [
        f"table=0,{cookie},priority=20,in_port={LINK},"
        "actions=load:7->NXM_NX_REG0[0..11],resubmit(,1)"]
    # macChanges off alone also ties the source MAC (the lab's reading of it).
    strict = PortGroupPolicy(filtered=False, forged_transmits=True, mac_changes=False)
    assert any("dl_src=" in f for f in flows_of(strict))
    assert df.spoof_check(strict) and not df.spoof_check(open_policy)


def test_flows_of_a_blocked_port_drop_both_ways_whatever_the_rules() -> None:
    blocked = PortGroupPolicy(filtered=True, blocked=True,
                              rules=(FilterRule(INCOMING, ACCEPT), FilterRule(OUTGOING, ACCEPT)))
    for policy in (blocked, BLOCKED_POLICY):
        flows = flows_of(policy)
        assert len(flows) == 2 and all(f.endswith("actions=drop") for f in flows)
        assert f"in_port={LINK}" in flows[0] and f"reg0=100,dl_dst={MAC}" in flows[1]


def test_policy_read_back_from_a_vim_setting_gives_the_same_flows() -> None:
    """What the agent does: vCenter's setting -> policy -> flows (no vCenter needed)."""
    policy = PortGroupPolicy(filtered=True, forged_transmits=False, mac_changes=False, rules=(
        FilterRule(OUTGOING, ACCEPT, protocol=6, source="10.10.0.0/24",
                   destination_ports=PortRange(8000, 8099)),
        FilterRule(INCOMING, ACCEPT, source="10.10.0.5/32"),
        FilterRule(INCOMING, DROP), FilterRule(OUTGOING, DROP)))
    read = policy_from_setting(port_setting(policy, 100))
    assert read.same_as(policy)
    assert flows_of(read) == flows_of(policy)


def test_bundle_replaces_one_cookie_and_bridge_flows_fail_closed() -> None:
    text = df.bundle(["table=0,priority=1,actions=drop"], df.link_cookie(LINK))
    lines = text.splitlines()
    assert lines[0] == f"flow delete cookie={df.link_cookie(LINK):#x}/0xffffffffffffffff"
    assert lines[1:] == ["flow add table=0,priority=1,actions=drop"]
    assert df.bundle([], None).splitlines() == ["flow delete"]
    cookies = {df.link_cookie(f"vm{n}n0") for n in range(500)}
    assert len(cookies) == 500 and df.BASE_COOKIE not in cookies
    base = df.bridge_flows(["up-h0"])
    assert "table=0,cookie=0x1,priority=0,actions=drop" in base
    assert "table=1,cookie=0x1,priority=0,actions=NORMAL" in base
    assert any("in_port=up-h0" in f and "NXM_OF_VLAN_TCI[0..11]->NXM_NX_REG0[0..11]" in f
               for f in base)


def test_flows_name_the_link_by_its_port_number_when_chosen_ahead() -> None:
    """A plug or a vMotion puts the flows in before the port exists: by number."""
    port = df.PortFilter(LINK, MAC, 100, PortGroupPolicy(filtered=False,
                                                         forged_transmits=False), ofport=123)
    flows = df.link_flows(port)
    assert all("in_port=123" in f for f in flows if f.startswith("table=0"))
    assert not any(LINK in f for f in flows)
