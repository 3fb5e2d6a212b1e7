"""dvs-fabric audit / sync on the lab: drift made for real in vCenter and on the leaves.

Drift is made the way it happens: an admin deletes or re-VLANs a port group in
vCenter, a leaf loses a binding, a logical switch of ours outlives its network,
someone else's port group sits on the DVS.  The commands run as operators run
them (a subprocess against the lab's Neutron config).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from networking_dvs_fabric.fabric.api import DEPLOYMENT_KEY, LeafSpec, NetworkOnLeaf
from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.probe import VCenterProbe
from networking_dvs_fabric.security import membership, vim_spec
from networking_dvs_fabric.security.model import (
    ACCEPT, INCOMING, FilterRule, PortGroupPolicy, PortRange)
from networking_dvs_fabric.vcenter import naming

HOST_C0 = topology.compute_host("DC0_C0")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab-audit")
    lab = Lab(directory)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)


def run(lab: Lab, *args: str) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "networking_dvs_fabric.cmd.main",
                          "--lab-dir", str(lab.dir), *args],
                         capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout


def audit(lab: Lab) -> tuple[int, dict]:
    code, out = run(lab, "audit", "--json")
    return code, json.loads(out)


def kinds(report: dict) -> set[tuple[str, str]]:
    return {(d["kind"], d["network_id"]) for d in report["drifts"]}


def test_clean_then_drift_found_then_repaired(lab):
    client = NeutronClient(lab.status()["neutron"]["url"])
    nets = [client.create_network(f"audit-{i}") for i in range(3)]
    ports = [client.create_port(n["id"], host=HOST_C0) for n in nets]
    deadline = time.monotonic() + 20
    while (clean := audit(lab))[0] != 0:
        assert time.monotonic() < deadline, clean[1]
        time.sleep(0.5)
    deployment = clean[1]["deployment"]
    assert deployment

    # Drift, made for real.
    upgraded = nets[2]["id"]          # as an earlier version left it: markers without an id
    with FakeNova(lab.status()["vcenter"]) as nova:
        pgs = {pg.key: pg for pg in _dvs(nova).portgroup}
        gone = pgs[ports[0]["binding:vif_details"]["pg_id"]]
        WaitForTask(gone.Destroy_Task())
        foreign = _add_port_group(nova, "someone-elses-pg", 42)
        _set_description(pgs[ports[2]["binding:vif_details"]["pg_id"]],
                         naming.marker(upgraded))
    leaf1 = lab.leaf("leaf1")
    # vtep-ctl prints VLANs zero-padded ("0742") and would read that back as octal.
    vlan = next(str(int(line.split()[0], 10))
                for line in leaf1.vtep_ctl("list-bindings", "leaf1", "swp1").splitlines()
                if line.strip() and upgraded not in line)
    leaf1.vtep_ctl("unbind-ls", "leaf1", "swp1", vlan)
    leaf1.vtep_ctl("remove", "Logical_Switch", f"dvsf-{upgraded}", "other_config",
                   DEPLOYMENT_KEY)
    orphan, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    for network_id, vlan, ours in ((orphan, 3333, deployment), (unknown, 3334, None)):
        backend = HwvtepBackend([LeafSpec("leaf2", lab.leaf("leaf2").ovsdb, "192.0.2.2")],
                                deployment=lambda d=ours: d)
        try:
            backend.converge("leaf2", {network_id: NetworkOnLeaf(
                network_id, 7777, frozenset({("swp2", vlan)}))})
        finally:
            backend.close()

    code, report = audit(lab)
    assert code == 1
    found = kinds(report)
    assert ("port_group_missing", nets[0]["id"]) in found
    assert ("switch_orphan", orphan) in found
    # (The port group may be adopted already: the sweeper adopts too, every 5 s here.)
    assert ("switch_legacy", upgraded) in found
    assert not [kind for kind, network_id in found if network_id == unknown]
    assert any(unknown in line for line in report["foreign"])
    assert any(kind == "binding_missing" for kind, _ in found)
    text = run(lab, "audit")[1]
    assert "port groups missing in vCenter" in text and "leaf leaf2" in text

    code, out = run(lab, "sync", "--dry-run")
    assert code == 1 and "nothing changed" in out
    assert audit(lab)[0] == 1                     # a dry run changes nothing

    code, out = run(lab, "sync")
    assert code == 0, out
    code, report = audit(lab)
    assert (code, report["drifts"]) == (0, [])
    with FakeNova(lab.status()["vcenter"]) as nova:
        names = {pg.name for pg in _dvs(nova).portgroup}
    assert foreign in names                       # not ours: never touched
    assert "dvsf-" + orphan not in lab.leaf("leaf2").vtep_ctl("list-ls")
    # The upgraded network's objects were adopted; the legacy switch of a network this
    # Neutron does not have is left alone (and listed as foreign).
    assert "dvsf-" + unknown in lab.leaf("leaf2").vtep_ctl("list-ls")
    assert any(unknown in line for line in report["foreign"])
    assert deployment in leaf1.vtep_ctl("get", "Logical_Switch", f"dvsf-{upgraded}",
                                        "other_config")
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        marks = {naming.parse_marker(pg.description) for pg in probe.port_groups(
            topology.DVS_NAME)}
    assert (upgraded, deployment) in marks


def test_unreachable_leaf_is_reported_not_empty(lab):
    lab.stop_leaf("leaf3")
    try:
        code, report = audit(lab)
    finally:
        lab.start_leaf("leaf3")
    assert code == 2
    assert any("leaf3" in where for where in report["unreachable"])
    assert not any(d["kind"] == "switch_missing" and d["where"] == "leaf leaf3"
                   for d in report["drifts"])


def _desired(lab: Lab, network_id: str, set_key: str) -> PortGroupPolicy:
    """What ``security/desired.py`` says the set's port group must hold, asked of the
    lab's Neutron database in a process of its own (as the CLI does)."""
    script = ("import pickle, sys\n"
              "from pathlib import Path\n"
              "from networking_dvs_fabric.cmd import neutron_db\n"
              "from networking_dvs_fabric.security import desired\n"
              "policy = neutron_db.read([Path(p) for p in sys.argv[3:]], lambda c: "
              "desired.policy_for_set(c, sys.argv[1], sys.argv[2]))\n"
              "sys.stdout.buffer.write(pickle.dumps(policy))\n")
    out = subprocess.run([sys.executable, "-c", script, network_id, set_key,
                          *lab.state()["config_files"]], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    return pickle.loads(out.stdout)


def _policy_in_vcenter(lab: Lab, pg_key: str) -> tuple[PortGroupPolicy, int]:
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        setting = probe.port_group_object(pg_key).config.defaultPortConfig
        return vim_spec.policy_from_setting(setting), vim_spec.vlan_from_setting(setting)


def _by_hand(lab: Lab, pg_key: str, policy: PortGroupPolicy, vlan: int) -> None:
    """An admin rewrites the port group's port settings in vCenter (the rest kept)."""
    with FakeNova(lab.status()["vcenter"]) as nova:
        pg = next(p for p in _dvs(nova).portgroup if p.key == pg_key)
        _reconfigure(pg, port_config=vim_spec.port_setting(policy, vlan))


def _filter_drifts(report: dict, network_id: str) -> list[dict]:
    return [d for d in report["drifts"]
            if d["kind"] == "filter_drift" and d["network_id"] == network_id]


def test_filter_changed_in_vcenter_is_found_and_put_back(lab):
    client = NeutronClient(lab.status()["neutron"]["url"])
    net = client.create_network("audit-filter")
    port = client.create_port(net["id"], host=HOST_C0)
    assert port["security_groups"], port           # the project's default group
    details = port["binding:vif_details"]
    set_key, pg_key = details[membership.VIF_DETAILS_SET], details["pg_id"]
    assert set_key.startswith("sg-"), details
    _wait(lambda: audit(lab)[0] == 0, 30, "audit clean with the default group bound")
    want = _desired(lab, net["id"], set_key)
    assert want.filtered and want.rules, want
    have, vlan = _policy_in_vcenter(lab, pg_key)
    assert have.same_as(want)

    # A rule changed by hand: the last one now lets telnet out instead.
    telnet = FilterRule(INCOMING, ACCEPT, protocol=6, destination_ports=PortRange(23, 23))
    _by_hand(lab, pg_key, dataclasses.replace(want, rules=want.rules[:-1] + (telnet,)), vlan)
    code, report = audit(lab)
    assert code == 1, report
    (drift,) = _filter_drifts(report, net["id"])
    assert drift["set_key"] == set_key
    assert details["dvs_port_group_name"] in drift["detail"]
    assert f"{len(want.rules)} filter rules, expected {len(want.rules)} (1 missing or " \
           "changed, 1 not wanted)" in drift["detail"], drift
    text = run(lab, "audit")[1]
    assert "filter or security policy was changed in vCenter" in text, text

    code, out = run(lab, "sync")
    assert code == 0, out
    have, _ = _policy_in_vcenter(lab, pg_key)
    assert have.same_as(_desired(lab, net["id"], set_key)), (have, want)
    assert audit(lab)[0] == 0

    # The security policy changed by hand: forged transmits allowed on a filtered port.
    _by_hand(lab, pg_key, dataclasses.replace(want, forged_transmits=not want.forged_transmits),
             vlan)
    (drift,) = _filter_drifts(audit(lab)[1], net["id"])
    assert f"securityPolicy.forgedTransmits {str(not want.forged_transmits).lower()}, " \
           f"expected {str(want.forged_transmits).lower()}" in drift["detail"], drift
    code, out = run(lab, "sync")
    assert code == 0, out
    assert _policy_in_vcenter(lab, pg_key)[0].same_as(want)
    assert audit(lab)[0] == 0


def test_port_group_of_a_set_no_port_needs_is_an_orphan_and_goes(lab):
    """The network is in use (its port's set has a port group); a port group of
    another set of it - no port there any more - is an orphan, the other is kept."""
    client = NeutronClient(lab.status()["neutron"]["url"])
    net = client.create_network("audit-stale-set")
    port = client.create_port(net["id"], host=HOST_C0)
    _wait(lambda: audit(lab)[0] == 0, 30, "audit clean")
    deployment = audit(lab)[1]["deployment"]
    stale = "sg-0123456789"
    _, vlan = _policy_in_vcenter(lab, port["binding:vif_details"]["pg_id"])
    # The workers' sweeper removes such a port group by itself after two sweeps (5 s
    # apart in the lab): on a loaded machine before the audit's process got to it.
    # So they are paused (SIGSTOP) until the audit has seen it.
    with _periodic_workers_paused(lab):
        with FakeNova(lab.status()["vcenter"]) as nova:
            name = _add_port_group(nova, f"audit-stale-set-{net['id']}-{stale}", vlan)
            pg = next(p for p in _dvs(nova).portgroup if p.name == name)
            _reconfigure(pg, description=naming.marker(net["id"], deployment, stale))
        code, report = audit(lab)
    assert code == 1, report
    assert [(d["kind"], d["set_key"]) for d in report["drifts"]
            if d["network_id"] == net["id"]] == [("port_group_orphan", stale)]
    code, out = run(lab, "sync")
    assert code == 0, out
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        left = {pg.name for pg in probe.port_groups_of_network(topology.DVS_NAME, net["id"])}
    assert left == {port["binding:vif_details"]["dvs_port_group_name"]}
    assert audit(lab)[0] == 0


def test_audit_counts_the_port_groups_of_the_deployment(lab):
    client = NeutronClient(lab.status()["neutron"]["url"])
    net = client.create_network("audit-count")
    client.create_port(net["id"], host=HOST_C0)
    _wait(lambda: audit(lab)[0] == 0, 30, "audit clean")

    def counted() -> tuple[dict, int]:
        report = audit(lab)[1]
        with VCenterProbe(lab.status()["vcenter"]) as probe:
            marks = [naming.parse_marker(pg.description)
                     for pg in probe.port_groups(topology.DVS_NAME)]
        return report["port_groups"], sum(1 for m in marks
                                          if m and m[1] == report["deployment"])
    count, in_vcenter = counted()
    if count["ours"] != in_vcenter:              # a sweep in between: once more
        count, in_vcenter = counted()
    assert in_vcenter >= 1
    assert count == {"ours": in_vcenter, "marked": count["marked"], "limit": 9000}
    assert count["marked"] >= in_vcenter
    text = run(lab, "audit")[1]
    assert f"port groups: {in_vcenter} of ours on vCenter, limit 9000 " \
           "([ml2_vsphere] max_port_groups)" in text, text


def _dvs(nova: FakeNova):
    view = nova.content.viewManager.CreateContainerView(
        nova.content.rootFolder, [vim.DistributedVirtualSwitch], True)
    try:
        return next(d for d in view.view if d.name == topology.DVS_NAME)
    finally:
        view.Destroy()


def _set_description(pg, description: str) -> None:
    """Rewrite a port group's description as an admin would (the rest kept)."""
    _reconfigure(pg, description=description)


def _reconfigure(pg, description: str | None = None, port_config=None) -> None:
    """Reconfigure a port group as an admin would: what is not given is kept."""
    config = pg.config
    WaitForTask(pg.ReconfigureDVPortgroup_Task(vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=config.name, type=config.type, numPorts=config.numPorts,
        autoExpand=config.autoExpand, configVersion=config.configVersion,
        description=config.description if description is None else description,
        defaultPortConfig=config.defaultPortConfig if port_config is None else port_config)))


@contextlib.contextmanager
def _periodic_workers_paused(lab: Lab) -> Iterator[None]:
    groups = [d.pid for d in lab.periodic_workers() if d.running() and d.pid is not None]
    stopped: list[int] = []
    try:
        for pid in groups:
            os.killpg(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:     # continued even when a later group could not be stopped
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)


def _add_port_group(nova: FakeNova, name: str, vlan: int) -> str:
    vds = vim.dvs.VmwareDistributedVirtualSwitch
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, type="earlyBinding", numPorts=8,
        defaultPortConfig=vds.VmwarePortConfigPolicy(
            vlan=vds.VlanIdSpec(vlanId=vlan, inherited=False)))
    WaitForTask(_dvs(nova).AddDVPortgroup_Task([spec]))
    return name


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.5)


def test_vcenter_back_empty_gets_its_port_groups_back_by_itself(lab):
    """The simulator restarted with a fresh inventory has a new instance UUID: the
    fabric worker notices on its next housekeeping pass and runs a full sync."""
    from networking_dvs_fabric.lab.probe import VCenterProbe
    client = NeutronClient(lab.status()["neutron"]["url"])
    net = client.create_network("vc-back")
    port = client.create_port(net["id"], host=HOST_C0)
    assert port["binding:vif_type"] == "dvs"
    lab.restart_vcenter()

    def back() -> bool:
        try:
            with VCenterProbe(lab.status()["vcenter"]) as probe:
                return bool(probe.port_groups_of_network(topology.DVS_NAME, net["id"]))
        except Exception:  # noqa: BLE001 - still starting
            return False
    _wait(back, 60, "port group recreated")
    _wait(lambda: audit(lab)[0] == 0, 60, "audit clean")


def test_leaf_back_empty_is_reprogrammed_by_itself(lab):
    client = NeutronClient(lab.status()["neutron"]["url"])
    net = client.create_network("leaf-back")
    client.create_port(net["id"], host=HOST_C0)
    ls = f"dvsf-{net['id']}"
    _wait(lambda: ls in lab.leaf("leaf2").vtep_ctl("list-ls"), 30, "programmed")
    lab.stop_leaf("leaf2")
    lab.start_leaf("leaf2", empty=True)
    assert ls not in lab.leaf("leaf2").vtep_ctl("list-ls")
    _wait(lambda: ls in lab.leaf("leaf2").vtep_ctl("list-ls"), 60, "reprogrammed")
    _wait(lambda: audit(lab)[0] == 0, 60, "audit clean")
