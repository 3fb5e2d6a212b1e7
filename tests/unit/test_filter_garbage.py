"""Filters made and read back leave nothing for Python's cycle collector.

The periodic workers read every port group's filter at their start and in each
port-group audit (thousands at scale).  Anything those reads leave in reference
cycles waits for a collection, which stops every thread of the process while it
walks them: at 6,000 networks collections of ~400,000 objects took 0.6-0.74 s
(bench23), and an IPv6 address read was what pinned each filter's parsed answer
(netaddr's failed IPv4 attempt, its frames and through them the readers' locals).
"""
from __future__ import annotations

import gc
import types
import uuid
from xml.etree import ElementTree

import netaddr
from pyVmomi import VmomiSupport
from pyVmomi.SoapAdapter import Serialize

from networking_dvs_fabric.security import translate
from networking_dvs_fabric.security.vim_spec import policy_from_setting, port_setting
from networking_dvs_fabric.vcenter import raw_soap

GROUP = str(uuid.UUID(int=7))


def _rule(direction: str, ethertype: str, **remote: str) -> dict:
    return {"id": str(uuid.uuid4()), "security_group_id": GROUP, "direction": direction,
            "ethertype": ethertype, "protocol": None, "port_range_min": None,
            "port_range_max": None, "remote_ip_prefix": remote.get("prefix"),
            "remote_group_id": remote.get("group"), "remote_address_group_id": None}


def _default_group_policy():
    """Neutron's default group (ingress from its members, egress anywhere, both
    families) for a set with IPv4 and IPv6 members."""
    rules = [_rule("ingress", "IPv4", group=GROUP), _rule("ingress", "IPv6", group=GROUP),
             _rule("egress", "IPv4"), _rule("egress", "IPv6"),
             _rule("ingress", "IPv6", prefix="2001:db8:5::/48")]
    members = {GROUP: ["10.0.0.5/32", "10.0.0.9/32", "fd00::5/128", "fd00::9/128"]}
    return translate.policy_for_set(rules, ["10.0.0.5", "fd00::5"], members, {})


def _garbage_of(work) -> list[str]:
    """What ``work()`` left in reference cycles that is the filter's own: netaddr's
    errors, vCenter's parsed answer, and frames of netaddr's or the project's code.
    (Counted by type, as other threads of the test process may leave cycles too.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            result = work()
            gc.collect()
            found = [_ours(o) for o in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert result is not None
    return sorted({name for name in found if name})


def _ours(obj) -> str:
    if isinstance(obj, (netaddr.AddrFormatError, raw_soap.Xml, ElementTree.Element)):
        return type(obj).__name__
    if isinstance(obj, types.FrameType):
        where = obj.f_code.co_filename
        if "netaddr" in where or "networking_dvs_fabric" in where:
            return f"frame {obj.f_code.co_name}"
    return ""


def test_a_filter_with_ipv6_rules_translated_and_read_back_from_vcenters_xml_leaves_no_cycles():
    policy = _default_group_policy()
    assert any(":" in (r.source or r.destination or "") for r in policy.rules)   # IPv6 in it
    answer = Serialize(port_setting(policy, 100),
                       version=VmomiSupport.newestVersions.GetName("vim"))

    def read_back():
        read = policy_from_setting(raw_soap.Xml(ElementTree.fromstring(answer)))
        assert read.same_as(policy)         # read right, not merely read
        return read

    assert _garbage_of(_default_group_policy) == []
    assert _garbage_of(read_back) == []
    assert _garbage_of(lambda: policy_from_setting(port_setting(policy, 100))) == []
