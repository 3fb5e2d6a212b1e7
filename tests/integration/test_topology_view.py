"""``dvs-fabric topology`` on a lab in a known state: one network, two VMs behind two leaves.

The lab runs both drivers in pre_provision mode: the network's VLAN goes on every leaf
port of cluster DC0_C0 as soon as a port is bound there.  Two VMs are booted as Nova
would, on DC0_C0_H0 (leaf1) and DC0_C0_H1 (leaf2); the watcher then puts each VM's MAC
on the other leaves.  The command runs as an operator runs it (a subprocess against the
lab's Neutron config); its JSON and its SVG must show that state.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.nova import FakeNova
from tests.integration.conftest import lab_directory

CLUSTER = "DC0_C0"
VMS = {"topo-vm-a": "DC0_C0_H0", "topo-vm-b": "DC0_C0_H1"}
NETWORK = "topo-net"


def run(lab: Lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "networking_dvs_fabric.cmd.main",
                           "--lab-dir", str(lab.dir), "topology", *args],
                          capture_output=True, text=True, timeout=180)


def view(lab: Lab) -> dict:
    out = run(lab, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def lab_state(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[Lab, dict, list]]:
    """The lab, the network, and the two ports (one per VM, in VMS order)."""
    with lab_directory(request, tmp_path_factory, "lab-topology") as directory:
        lab = Lab(directory)
        try:
            lab.up()
            client = NeutronClient(lab.status()["neutron"]["url"])
            network = client.create_network(NETWORK)
            ports = [client.create_port(network["id"], host=topology.compute_host(CLUSTER))
                     for _ in VMS]
            with FakeNova(lab.status()["vcenter"]) as nova:
                for (vm, esxi_host), port in zip(VMS.items(), ports):
                    nova.boot(vm, esxi_host, [port])
            yield lab, network, ports
        finally:
            lab.down()


def settled(lab: Lab, ports: list) -> dict:
    """The view once both VMs' MACs are on the leaves (the watcher has seen them)."""
    deadline = time.monotonic() + 30
    while True:
        found = view(lab)
        macs = {m["mac"] for leaf in found["leaves"] for m in leaf["remote_macs"] or ()}
        if {p["mac_address"] for p in ports} <= macs:
            return found
        assert time.monotonic() < deadline, f"remote MACs never showed: {found['leaves']}"
        time.sleep(0.5)


def test_json_shows_vms_on_their_hosts_and_vlan_to_vni_on_the_cluster_ports(lab_state):
    lab, network, ports = lab_state
    found = settled(lab, ports)
    assert found["unreachable"] == []
    hosts = {h["name"]: h for h in found["hosts"]}
    vni = network["provider:segmentation_id"]
    vlans = set()
    for (vm_name, esxi_host), port in zip(VMS.items(), ports):
        vm = next(v for v in hosts[esxi_host]["vms"] if v["name"] == vm_name)
        nic = vm["nics"][0]
        assert (nic["mac"], nic["port_id"], nic["network_id"], nic["network_name"]) == (
            port["mac_address"], port["id"], network["id"], NETWORK)
        assert hosts[esxi_host]["cluster"] == CLUSTER
        vlans.add(nic["vlan"])
    assert len(vlans) == 1 and None not in vlans               # one port group, one VLAN
    vlan = vlans.pop()

    # pre_provision: every leaf port of every host of the cluster carries VLAN -> VNI.
    bound = {(leaf["name"], p["name"]): p["bindings"] for leaf in found["leaves"]
             for p in leaf["ports"]}
    cluster_ports = {(a.leaf, a.port) for a in topology.attachments()
                     if a.esxi_host in topology.esxi_hosts(CLUSTER)}
    for where in cluster_ports:
        assert {"vlan": vlan, "vni": vni, "network_id": network["id"],
                "network_name": NETWORK} in bound[where], where
    assert not any(b["network_id"] == network["id"] for where, bs in bound.items()
                   if where not in cluster_ports for b in bs or ())

    net = next(n for n in found["networks"] if n["id"] == network["id"])
    assert (net["name"], net["vni"], net["neutron_vni"]) == (NETWORK, vni, vni)
    assert {(p["leaf"], p["port"]) for p in net["leaf_ports"]} == cluster_ports
    assert net["vms"] == sorted(VMS)
    assert [pg["vlan"] for pg in net["port_groups"]] == [vlan]

    # The VM behind leaf1 is a remote MAC on leaf2, pointing at leaf1.
    leaf2 = next(leaf for leaf in found["leaves"] if leaf["name"] == "leaf2")
    assert {"mac": ports[0]["mac_address"], "network_id": network["id"],
            "tunnel_ip": "192.0.2.1", "leaf": "leaf1"} in leaf2["remote_macs"]


def test_text_and_svg(lab_state, tmp_path: Path):
    lab, network, ports = lab_state
    settled(lab, ports)
    out = run(lab)
    assert out.returncode == 0, out.stderr
    for name in [*VMS, NETWORK, "leaf1", "leaf3", topology.KVM_HOST, "cluster DC0_C0"]:
        assert name in out.stdout, name
    assert f"VNI {network['provider:segmentation_id']} ({NETWORK})" in out.stdout

    picture = tmp_path / "topology.svg"
    out = run(lab, "--svg", str(picture))
    assert out.returncode == 0, out.stderr
    assert f"wrote {picture}" in out.stdout
    root = ET.parse(picture).getroot()
    texts = "\n".join("".join(el.itertext()) for el in root.iter()
                      if el.tag.endswith("}text"))
    for name in [*VMS, *VMS.values(), NETWORK, "leaf1", "leaf2", "leaf3",
                 topology.KVM_HOST, ports[0]["mac_address"]]:
        assert name in texts, name
    assert f"\u2192 {network['provider:segmentation_id']}" in texts


def test_stopped_leaf_is_unreachable_not_empty(lab_state):
    lab, _, ports = lab_state
    settled(lab, ports)
    lab.stop_leaf("leaf3")
    try:
        out = run(lab, "--json")
    finally:
        lab.start_leaf("leaf3")
    assert out.returncode == 2
    found = json.loads(out.stdout)
    leaf3 = next(leaf for leaf in found["leaves"] if leaf["name"] == "leaf3")
    assert leaf3["reachable"] is False
    assert all(p["bindings"] is None for p in leaf3["ports"])
    assert any("leaf3" in what for what in found["unreachable"])
