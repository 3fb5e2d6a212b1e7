"""The lab as a user drives it: the CLI, the status JSON, restart, stop by pid."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from networking_dvs_fabric.lab import netns
from networking_dvs_fabric.lab.dataplane import lab_tag
from networking_dvs_fabric.lab.procs import pid_alive

CLI = str(Path(sys.executable).parent / "dvs-fabric")


def _cli(lab_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--lab-dir", str(lab_dir), *args], capture_output=True,
                          text=True, timeout=300, check=check)


def _pids(lab_dir: Path) -> list[int]:
    state = json.loads((lab_dir / "state.json").read_text())
    pids = [d["pid"] for d in state["daemons"]]
    services = state["services"]
    pids.append(services["vcsim"]["daemon"]["pid"])
    pids += [leaf["daemon"]["pid"] for leaf in services["leaves"]]
    return pids


@pytest.fixture
def lab_dir(tmp_path: Path):
    yield tmp_path
    _cli(tmp_path, "lab", "down", check=False)


def test_up_status_restart_down(lab_dir: Path):
    up = _cli(lab_dir, "lab", "up")
    assert "clouds.yaml" in up.stdout and "OS_CLOUD" in up.stdout

    status = json.loads(_cli(lab_dir, "lab", "status", "--json").stdout)
    assert set(status) == {"neutron", "vcenter", "compute_hosts", "leaves", "attachments",
                           "mode", "dataplane", "message_bus", "agent_hosts"}
    # No agents by default: oslo.messaging's in-process fake, no broker started.
    assert status["message_bus"] == {"kind": "fake"}
    assert status["agent_hosts"] == {}          # lab up --agents runs them
    # On by default where network namespaces work (here they do; elsewhere it says why).
    assert status["dataplane"] is (netns.unavailable() is None)
    assert status["neutron"]["url"].startswith("http://127.0.0.1:")
    vc = status["vcenter"]
    assert set(vc) == {"url", "username", "password", "ca_file", "datacenter", "dvs"}
    assert vc["url"].startswith("https://127.0.0.1:") and vc["url"].endswith("/sdk")
    assert os.path.isabs(vc["ca_file"]) and Path(vc["ca_file"]).is_file()
    assert vc["datacenter"] == "DC0" and vc["dvs"] == {"physnet-dvs": "DVS0"}
    assert len(status["compute_hosts"]) == 2
    for info in status["compute_hosts"].values():
        assert set(info) == {"cluster", "esxi_hosts"} and len(info["esxi_hosts"]) == 3
    assert [leaf["name"] for leaf in status["leaves"]] == ["leaf1", "leaf2", "leaf3"]
    for leaf in status["leaves"]:
        assert set(leaf) == {"name", "ovsdb", "tunnel_ip"}
        assert leaf["ovsdb"].startswith("tcp:127.0.0.1:")
    leaf_of = {a["esxi_host"]: a["leaf"] for a in status["attachments"]}
    for info in status["compute_hosts"].values():
        assert len({leaf_of[h] for h in info["esxi_hosts"]}) >= 2, \
            "a cluster's hosts must span two leaves"
    assert status["mode"] == "pre_provision"

    # The leaves really are hardware_vtep OVSDB servers with their switch.
    for leaf in status["leaves"]:
        out = subprocess.run(["vtep-ctl", f"--db={leaf['ovsdb']}", "list-ps"],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        assert leaf["name"] in out.split()

    first = _pids(lab_dir)
    assert all(pid_alive(p) for p in first)

    # Running it again restarts cleanly: old processes gone, new ones up.
    _cli(lab_dir, "lab", "up", "--mode", "on_demand")
    second = _pids(lab_dir)
    assert not any(pid_alive(p) for p in first)
    assert all(pid_alive(p) for p in second)
    assert json.loads(_cli(lab_dir, "lab", "status", "--json").stdout)["mode"] == "on_demand"

    down = _cli(lab_dir, "lab", "down")
    assert "neutron-api" in down.stdout and "vcsim" in down.stdout
    assert not any(pid_alive(p) for p in second)
    assert "nothing was running" in _cli(lab_dir, "lab", "down").stdout
    # The dataplane's namespaces went with it.
    tag = f"dvsf-{lab_tag(lab_dir)}-"
    assert not [ns for ns in netns.list_ns() if ns.startswith(tag)]


def test_up_after_down_in_the_same_directory_starts_a_consistent_lab(lab_dir: Path):
    """A new lab's Neutron knows nothing of the last one's networks, and neither may its
    leaves: the second lab's audit is clean (it used to report the first lab's logical
    switches as orphans)."""
    from networking_dvs_fabric.lab import topology
    from networking_dvs_fabric.lab.client import NeutronClient

    _cli(lab_dir, "lab", "up", "--no-dataplane")
    status = json.loads(_cli(lab_dir, "lab", "status", "--json").stdout)
    client = NeutronClient(status["neutron"]["url"])
    net = client.create_network("first-lab")
    client.create_port(net["id"], host=topology.compute_host("DC0_C0"))
    ls = f"dvsf-{net['id']}"

    def switches() -> set[str]:
        found = set()
        for leaf in json.loads(_cli(lab_dir, "lab", "status", "--json").stdout)["leaves"]:
            out = subprocess.run(["vtep-ctl", f"--db={leaf['ovsdb']}", "list-ls"],
                                 capture_output=True, text=True, check=True, timeout=30)
            found |= set(out.stdout.split())
        return found
    deadline = time.monotonic() + 30
    while ls not in switches():
        assert time.monotonic() < deadline, "the first lab never programmed its network"
        time.sleep(0.5)
    _cli(lab_dir, "lab", "down")

    _cli(lab_dir, "lab", "up", "--no-dataplane")
    assert switches() == set()
    audit = _cli(lab_dir, "audit", "--json", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert json.loads(audit.stdout)["drifts"] == []
