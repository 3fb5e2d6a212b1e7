"""dvs-fabric audit / sync on the lab: drift made for real in vCenter and on the leaves.

Drift is made the way it happens: an admin deletes or re-VLANs a port group in
vCenter, a leaf loses a binding, a logical switch of ours outlives its network,
someone else's port group sits on the DVS.  The commands run as operators run
them (a subprocess against the lab's Neutron config).
"""
from __future__ import annotations

import json
import shutil
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


def _dvs(nova: FakeNova):
    view = nova.content.viewManager.CreateContainerView(
        nova.content.rootFolder, [vim.DistributedVirtualSwitch], True)
    try:
        return next(d for d in view.view if d.name == topology.DVS_NAME)
    finally:
        view.Destroy()


def _set_description(pg, description: str) -> None:
    """Rewrite a port group's description as an admin would (the rest kept)."""
    config = pg.config
    WaitForTask(pg.ReconfigureDVPortgroup_Task(vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=config.name, description=description, type=config.type,
        numPorts=config.numPorts, autoExpand=config.autoExpand,
        configVersion=config.configVersion, defaultPortConfig=config.defaultPortConfig)))


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
