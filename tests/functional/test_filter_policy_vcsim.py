"""Port group policies written through the vCenter simulator and read back.

What the lab's dataplane enforces is what vCenter returns, so a policy must survive
the round trip: ``port_setting`` -> AddDVPortgroup_Task/ReconfigureDVPortgroup_Task
-> ``config.defaultPortConfig`` -> ``policy_from_setting``.
"""
from __future__ import annotations

import shutil
import ssl
import uuid
from typing import Any, Iterator

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from networking_dvs_fabric.lab import vcsim as vcsim_mod
from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.security import model, translate
from networking_dvs_fabric.security.model import (
    ACCEPT, DROP, INCOMING, OUTGOING, FilterRule, PortGroupPolicy, PortRange)
from networking_dvs_fabric.security.vim_spec import (
    policy_from_setting, port_setting, vlan_from_setting)
from networking_dvs_fabric.vcenter import naming, raw_soap
from networking_dvs_fabric.vcenter.inventory import load_inventory
from networking_dvs_fabric.vcenter.portgroups import (LIGHT_PROPERTIES, PG_PROPERTIES,
                                                      PortGroupManager, port_group_from_props)
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession, collect

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("needs the Debian packages golang-go and golang-github-vmware-govmomi-dev",
                allow_module_level=True)

SG = "5a0c6a1e-0000-4000-8000-000000000001"
DEPLOYMENT = "d0d0d0d0-0000-4000-8000-000000000002"


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCenterSimulator]:
    with VCenterSimulator(tmp_path_factory.mktemp("vcsim")) as started:
        yield started


@pytest.fixture(scope="module")
def si(sim: VCenterSimulator) -> Iterator[Any]:
    instance = SmartConnect(
        host="127.0.0.1", port=sim.port, user=sim.username, pwd=sim.password,
        sslContext=ssl.create_default_context(cafile=str(sim.ca_file)))
    try:
        yield instance
    finally:
        Disconnect(instance)


@pytest.fixture(scope="module")
def dvs(si: Any) -> Any:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vim.DistributedVirtualSwitch], True)
    try:
        return next(d for d in view.view if d.name == "DVS0")
    finally:
        view.Destroy()


def add_port_group(dvs: Any, setting: Any) -> Any:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, type="earlyBinding", numPorts=8, defaultPortConfig=setting)
    WaitForTask(dvs.AddDVPortgroup_Task([spec]))
    return next(pg for pg in dvs.portgroup if pg.name == name)


def reconfigure(pg: Any, setting: Any) -> None:
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion=pg.config.configVersion, name=pg.name, type="earlyBinding",
        numPorts=8, defaultPortConfig=setting)
    WaitForTask(pg.ReconfigureDVPortgroup_Task(spec))


def default_group_policy() -> PortGroupPolicy:
    rules = [{"id": f"r{i}", "security_group_id": SG, "direction": d, "ethertype": e,
              "protocol": None, "port_range_min": None, "port_range_max": None,
              "remote_ip_prefix": None, "remote_address_group_id": None,
              "remote_group_id": SG if d == "ingress" else None}
             for i, (d, e) in enumerate([("ingress", "IPv4"), ("ingress", "IPv6"),
                                         ("egress", "IPv4"), ("egress", "IPv6")])]
    return translate.policy_for_set(
        rules, ["10.0.0.5", "fd00::5"], {SG: ["10.0.0.5/32", "10.0.0.9/32", "fd00::5/128"]},
        {})


def ports_policy() -> PortGroupPolicy:
    return PortGroupPolicy(filtered=True, forged_transmits=False, mac_changes=False, rules=(
        FilterRule(INCOMING, ACCEPT, 6, "10.0.0.0/24", "192.0.2.7/32",
                   destination_ports=PortRange(22, 22), description="ssh out"),
        FilterRule(INCOMING, ACCEPT, 17, "10.0.0.4/31", None,
                   source_ports=PortRange(68, 68), destination_ports=PortRange(67, 67)),
        FilterRule(OUTGOING, ACCEPT, 132, "2001:db8::/32", "fd00::5/128",
                   source_ports=PortRange(1000, 2000),
                   destination_ports=PortRange(32768, 65535)),
        FilterRule(OUTGOING, ACCEPT, 58, "fe80::/10"),
        FilterRule(INCOMING, DROP),
        FilterRule(OUTGOING, DROP),
    ))


POLICIES = {
    "default-group": default_group_policy,
    "open": lambda: model.OPEN_POLICY,
    "blocked": lambda: model.BLOCKED_POLICY,
    "ports-ranges-ipv6": ports_policy,
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_round_trip_on_create_and_reconfigure(dvs: Any, name: str) -> None:
    policy = POLICIES[name]()
    pg = add_port_group(dvs, port_setting(policy, 101))
    setting = pg.config.defaultPortConfig
    assert policy_from_setting(setting).same_as(policy)
    assert vlan_from_setting(setting) == 101

    # Reconfigure to another policy and VLAN and back: each time what is read is what was sent.
    other = model.BLOCKED_POLICY if name != "blocked" else default_group_policy()
    reconfigure(pg, port_setting(other, 102))
    setting = pg.config.defaultPortConfig
    assert policy_from_setting(setting).same_as(other)
    assert not policy_from_setting(setting).same_as(policy)
    assert vlan_from_setting(setting) == 102
    reconfigure(pg, port_setting(policy, 101))
    assert policy_from_setting(pg.config.defaultPortConfig).same_as(policy)


def test_rules_come_back_in_sequence_with_their_descriptions(dvs: Any) -> None:
    policy = ports_policy()
    pg = add_port_group(dvs, port_setting(policy, 7))
    ruleset = pg.config.defaultPortConfig.filterPolicy.filterConfig[0].trafficRuleset
    assert ruleset.enabled is True
    assert [r.sequence for r in ruleset.rules] == [10, 20, 30, 40, 50, 60]
    read = policy_from_setting(pg.config.defaultPortConfig)
    assert [r.description for r in read.rules][:1] == ["ssh out"]
    assert read.rules == policy.rules


def test_open_policy_replaces_a_hand_added_filter(dvs: Any) -> None:
    pg = add_port_group(dvs, port_setting(ports_policy(), 7))
    reconfigure(pg, port_setting(model.OPEN_POLICY, 7))
    config = pg.config.defaultPortConfig.filterPolicy.filterConfig
    assert len(config) == 1 and config[0].trafficRuleset.enabled is False
    assert policy_from_setting(pg.config.defaultPortConfig).same_as(model.OPEN_POLICY)


def test_empty_filter_config_does_not_exist_on_the_wire(dvs: Any) -> None:
    """Why filter-off is a disabled ruleset: an empty filterConfig comes back absent."""
    setting = port_setting(model.OPEN_POLICY, 7)
    setting.filterPolicy.filterConfig = []
    pg = add_port_group(dvs, setting)
    assert not pg.config.defaultPortConfig.filterPolicy.filterConfig


def test_reconfigure_without_filter_policy_drops_the_filter_on_the_simulator(
        dvs: Any) -> None:
    """The simulator replaces the whole defaultPortConfig (real vCenter keeps unsent parts)."""
    pg = add_port_group(dvs, port_setting(ports_policy(), 7))
    reconfigure(pg, vim.dvs.VmwareDistributedVirtualSwitch.VmwarePortConfigPolicy(
        vlan=vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(vlanId=8, inherited=False)))
    setting = pg.config.defaultPortConfig
    assert setting.filterPolicy is None and setting.securityPolicy is None
    assert vlan_from_setting(setting) == 8
    read = policy_from_setting(setting)
    assert read.same_as(model.OPEN_POLICY)
    assert not read.same_as(ports_policy())


def _drops() -> PortGroupPolicy:
    return PortGroupPolicy(filtered=True, forged_transmits=False, mac_changes=False, rules=(
        FilterRule(INCOMING, DROP), FilterRule(OUTGOING, DROP), FilterRule(INCOMING, DROP)))


def test_foreign_rules_never_compare_equal(dvs: Any) -> None:
    """Hand-made rules the project never writes read as something it never wants."""
    policy = _drops()
    setting = port_setting(policy, 9)
    rules = setting.filterPolicy.filterConfig[0].trafficRuleset.rules
    rules[0].qualifier[0].sourceAddress = vim.SingleIp(address="10.0.0.1", negate=True)
    rules[1].action = vim.dvs.TrafficRule.PuntAction()
    rules[2].qualifier[0].tcpFlags = vim.IntExpression(value=2)
    pg = add_port_group(dvs, setting)
    read = policy_from_setting(pg.config.defaultPortConfig)
    assert [r.description.split()[0] for r in read.rules] == ["unknown"] * 3
    assert all(r.action == DROP for r in read.rules)
    assert not read.same_as(policy)
    assert not any(read.same_as(p) for p in (model.OPEN_POLICY, model.BLOCKED_POLICY,
                                             default_group_policy()))


def test_mac_and_system_traffic_qualifiers_read_as_foreign() -> None:
    """Parsed without the simulator: its XML decoder panics on these qualifiers."""
    policy = _drops()
    setting = port_setting(policy, 9)
    rules = setting.filterPolicy.filterConfig[0].trafficRuleset.rules
    rules[0].qualifier = [vim.dvs.TrafficRule.MacQualifier(
        protocol=vim.IntExpression(value=0x0806))]
    rules[1].qualifier = [vim.dvs.TrafficRule.SystemTrafficQualifier(
        typeOfSystemTraffic=vim.StringExpression(value="vMotion"))]
    rules[2].qualifier = []
    setting.filterPolicy.filterConfig.append(
        vim.dvs.DistributedVirtualPort.FilterConfig(agentName="vendor-filter"))
    read = policy_from_setting(setting)
    assert [r.description.split()[0] for r in read.rules] == ["unknown"] * 4
    assert read.filtered and not read.same_as(policy)


def _list_spec(dvs: Any, properties: tuple[str, ...]) -> Any:
    """The read ``PortGroupManager.list`` makes: every port group of the DVS."""
    pcq = vmodl.query.PropertyCollector
    return pcq.FilterSpec(
        objectSet=[pcq.ObjectSpec(obj=dvs, skip=True, selectSet=[
            pcq.TraversalSpec(name="pgs", path="portgroup", skip=False,
                              type=vim.DistributedVirtualSwitch)])],
        propSet=[pcq.PropertySpec(type=vim.dvs.DistributedVirtualPortgroup,
                                  pathSet=list(properties))])


@pytest.mark.parametrize("full", [True, False], ids=["full", "light"])
def test_port_groups_read_raw_are_what_pyvmomi_reads(si: Any, dvs: Any, full: bool) -> None:
    """Port groups are listed with ElementTree (``vcenter/raw_soap``), not pyVmomi's
    parser (~3.5 ms a port group with a filter, thousands per audit): every port group
    of the DVS - translated policies, open, blocked, no filter, the VLAN trunk of the
    uplinks, hand-made foreign rules, a marker - reads exactly as pyVmomi's objects
    read.  (The simulator never pages an answer: ``test_raw_soap.py`` pages one.)"""
    for policy in (ports_policy(), default_group_policy(), model.OPEN_POLICY,
                   model.BLOCKED_POLICY, _drops()):
        setting = port_setting(policy, 11)
        if policy is model.BLOCKED_POLICY:
            setting.filterPolicy = setting.securityPolicy = None
        add_port_group(dvs, setting)
    foreign = port_setting(_drops(), 12)
    rules = foreign.filterPolicy.filterConfig[0].trafficRuleset.rules
    rules[0].qualifier[0].sourceAddress = vim.IpRange(addressPrefix="10.1.0.0",
                                                      prefixLength=16)
    rules[1].action = vim.dvs.TrafficRule.PuntAction()
    rules[2].qualifier[0].destinationIpPort = vim.dvs.TrafficRule.IpPortRange(
        startPortNumber=1000, endPortNumber=2000, negate=True)
    marked = add_port_group(dvs, foreign)
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion=marked.config.configVersion, name=marked.name,
        description=naming.marker(str(uuid.uuid4()), DEPLOYMENT, model.set_key(True, [SG]),
                                  model.fingerprint(_drops())))
    WaitForTask(marked.ReconfigureDVPortgroup_Task(spec))
    pc = si.content.propertyCollector
    query = _list_spec(dvs, PG_PROPERTIES if full else LIGHT_PROPERTIES)
    by_pyvmomi = sorted((port_group_from_props(obj, props, with_policy=full)
                         for obj, props in collect(pc, [query])), key=lambda pg: pg.moid)
    by_raw = sorted((port_group_from_props(moid, raw_soap.readable(props), with_policy=full)
                     for moid, props in raw_soap.retrieve(pc, [query])),
                    key=lambda pg: pg.moid)
    assert len(by_pyvmomi) >= 8
    for raw, ref in zip(by_raw, by_pyvmomi):       # one by one: a readable difference
        assert raw == ref
    assert by_raw == by_pyvmomi
    if full:
        assert any(pg.policy is not None and pg.policy.rules for pg in by_raw)
    assert any(pg.network_id and pg.deployment == DEPLOYMENT and
               pg.fingerprint == model.fingerprint(_drops()) for pg in by_raw)


def test_every_port_group_listed_in_full_as_its_answer_is_parsed(
        sim: VCenterSimulator, si: Any, dvs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit lists a DVS's port groups with their policies, each made from its
    elements as the answer is parsed (a whole answer parsed first held ~150 MB at 4,000
    port groups): parsed in slices of 512 bytes - every object, value and the token
    cut across slices - the list is what pyVmomi reads."""
    for policy in (default_group_policy(), model.OPEN_POLICY, ports_policy(), _drops()):
        add_port_group(dvs, port_setting(policy, 21))
    monkeypatch.setattr(raw_soap, "SLICE", 512)
    session = VCenterSession(VCenterConfig(url=sim.url, username=sim.username,
                                           password=sim.password, ca_file=str(sim.ca_file)))
    try:
        inventory = load_inventory(session, "DC0", ["DVS0"])
        listed = PortGroupManager(session, inventory.dvs["DVS0"]).list(full=True)
    finally:
        session.close()
    by_pyvmomi = sorted((port_group_from_props(obj, props, with_policy=True) for obj, props
                         in collect(si.content.propertyCollector,
                                    [_list_spec(dvs, PG_PROPERTIES)])),
                        key=lambda pg: pg.moid)
    assert len(by_pyvmomi) >= 6
    assert sorted(listed, key=lambda pg: pg.moid) == by_pyvmomi
    assert sum(1 for pg in listed if pg.policy is not None and pg.policy.rules) >= 3
