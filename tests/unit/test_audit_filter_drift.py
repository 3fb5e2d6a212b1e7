"""The audit's verdict on one port group of a set: pure, no vCenter, no database.

What the audit reads from vCenter is a ``PortGroup`` (``policy`` from a full read);
what Neutron wants is an ``ExpectedPortGroup`` and the set's ``WantedPolicy``.  The
lab's ``tests/integration/test_audit.py`` makes the same drift for real.
"""
from __future__ import annotations

import dataclasses

from networking_dvs_fabric.security.model import (
    ACCEPT, DROP, INCOMING, OUTGOING, FilterRule, PortGroupPolicy, PortRange)
from networking_dvs_fabric.sync import audit, expected
from networking_dvs_fabric.sync.filter_drift import policy_difference
from networking_dvs_fabric.vcenter.portgroups import PortGroup

NET = "5f0e7a52-3c2a-4a8e-9a55-0d5b1f0c2d11"
SET = "sg-0123456789"
SSH = FilterRule(OUTGOING, ACCEPT, protocol=6, destination_ports=PortRange(22, 22),
                 description="rule a")
WEB = FilterRule(OUTGOING, ACCEPT, protocol=6, destination_ports=PortRange(80, 80))
REST = FilterRule(OUTGOING, DROP)
OUT = FilterRule(INCOMING, ACCEPT, source="10.0.0.5/32")
WANT = PortGroupPolicy(filtered=True, rules=(SSH, WEB, REST, OUT), forged_transmits=False,
                       mac_changes=False)


def verdict(have: PortGroupPolicy | None, wanted: expected.WantedPolicy | None = None,
            vlan: int = 100, present: bool = True) -> list[tuple[str, str]]:
    report = audit.Report()
    want = expected.ExpectedPortGroup("DVS0", NET, "net", "physnet1", 100, SET)
    pg = PortGroup(key="dvportgroup-9", name=f"net-{NET}-{SET}", moid="dvportgroup-9",
                   vlan=vlan, network_id=NET, set_key=SET, policy=have) if present else None
    audit._compare_port_group(report, "vCenter DVS DVS0", want, pg,
                              wanted or expected.WantedPolicy(WANT))
    assert all(d.set_key == SET and d.network_id == NET for d in report.drifts)
    return [(d.kind, d.detail) for d in report.drifts]


def test_same_policy_is_clean_whatever_the_rule_descriptions() -> None:
    read_back = dataclasses.replace(WANT, rules=(dataclasses.replace(SSH, description=""),
                                                 WEB, REST, OUT))
    assert verdict(read_back) == []


def test_a_rule_changed_by_hand_is_filter_drift_naming_the_port_group() -> None:
    telnet = dataclasses.replace(SSH, destination_ports=PortRange(23, 23))
    ((kind, detail),) = verdict(dataclasses.replace(WANT, rules=(telnet, WEB, REST, OUT)))
    assert kind == "filter_drift"
    assert detail == (f"port group 'net-{NET}-{SET}' (set {SET}): 4 filter rules, expected "
                      "4 (1 missing or changed, 1 not wanted)")


def test_rule_removed_reordered_and_filter_off() -> None:
    assert policy_difference(WANT, dataclasses.replace(WANT, rules=(SSH, WEB, OUT))) == \
        "3 filter rules, expected 4 (1 missing or changed, 0 not wanted)"
    # First match wins: the same rules in another order filter differently.
    assert policy_difference(WANT, dataclasses.replace(WANT, rules=(REST, SSH, WEB, OUT))) == \
        "the 4 filter rules are in another order (first match wins)"
    assert policy_difference(WANT, dataclasses.replace(WANT, filtered=False, rules=())) == \
        "traffic filter off with 0 rules, expected on with 4"


def test_security_policy_flags_are_named_as_vcenter_shows_them() -> None:
    ((kind, detail),) = verdict(dataclasses.replace(WANT, forged_transmits=True,
                                                    blocked=True))
    assert kind == "filter_drift"
    assert detail.endswith("securityPolicy.forgedTransmits true, expected false; "
                           "blocked true, expected false")


def test_wrong_vlan_and_filter_are_two_drifts() -> None:
    found = verdict(dataclasses.replace(WANT, allow_promiscuous=True), vlan=7)
    assert [kind for kind, _ in found] == ["port_group_vlan", "filter_drift"]


def test_a_set_whose_filter_cannot_be_made_is_reported_as_such() -> None:
    too_large = expected.WantedPolicy(None, "Security groups x need 2000 DVS filter rules")
    assert verdict(WANT, too_large) == [
        ("filter_too_large", f"port group 'net-{NET}-{SET}' (set {SET}): Security groups "
                             "x need 2000 DVS filter rules")]
    assert [kind for kind, _ in verdict(None, too_large, present=False)] == \
        ["filter_too_large"]


def test_a_set_only_a_nic_not_moved_yet_sits_on_is_kept_as_it_is() -> None:
    """No port of the set is left (policy None): its port group is neither made nor
    has its policy checked - it only waits for the policy worker's move."""
    nothing = expected.WantedPolicy(None)
    assert verdict(dataclasses.replace(WANT, rules=()), nothing) == []
    assert verdict(None, nothing, present=False) == []


def test_missing_port_group_names_its_set() -> None:
    assert verdict(None, present=False) == [
        ("port_group_missing", f"no port group of set {SET} (VLAN 100 expected)")]
