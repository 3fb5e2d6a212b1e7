"""Two Neutron deployments on one vCenter and one set of leaves (issue 12, item 1).

Lab A starts the vCenter simulator and the leaves; lab B (``Lab.up(share=...)``)
is a second cloud with its own database and Neutron on A's vCenter and leaves,
VLANs from a disjoint range, as two clouds sharing a DVS must have.  Both create,
bind and delete networks while each one's sweeper, workers and full sync run;
then each runs ``dvs-fabric sync`` as an operator would.  At the end neither has
lost an object, nothing is left of deleted networks, and each one's audit is
clean and names the other's objects as foreign.

Before deployments had ids, A's sweeper deleted B's port groups (a network A does
not know looks unused) and A's sync deleted B's logical switches as orphans.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Iterator

import pytest

from networking_dvs_fabric.fabric.api import DEPLOYMENT_KEY, NETWORK_ID_KEY
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.probe import VCenterProbe
from networking_dvs_fabric.vcenter import naming

HOSTS = (topology.compute_host("DC0_C0"), topology.compute_host("DC0_C1"))
RANGES = {"a": (100, 199), "b": (200, 299)}
ROUNDS = 4
SWEEP_INTERVAL = 5          # the lab's [ml2_vsphere] cleanup_interval


def _vlans(low: int, high: int) -> dict[str, dict[str, str]]:
    return {"ml2_type_vlan": {"network_vlan_ranges": topology.vlan_ranges(low, high)}}


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Lab]]:
    first = Lab(tmp_path_factory.mktemp("lab-deployment-a"))
    first.up(extra_config=_vlans(*RANGES["a"]))
    try:
        second = Lab(tmp_path_factory.mktemp("lab-deployment-b"))
        second.up(extra_config=_vlans(*RANGES["b"]), share=first.dir)
        try:
            yield {"a": first, "b": second}
        finally:
            second.down()
            shutil.rmtree(second.dir, ignore_errors=True)
    finally:
        first.down()
        shutil.rmtree(first.dir, ignore_errors=True)


def run(lab: Lab, *args: str) -> tuple[int, str, str]:
    out = subprocess.run([sys.executable, "-m", "networking_dvs_fabric.cmd.main",
                          "--lab-dir", str(lab.dir), *args],
                         capture_output=True, text=True, timeout=300)
    return out.returncode, out.stdout, out.stderr


def audit(lab: Lab) -> tuple[int, dict]:
    code, out, err = run(lab, "audit", "--json")
    assert out, err
    return code, json.loads(out)


def _switches(lab: Lab) -> dict[str, list[dict[str, str]]]:
    """Per leaf: the other_config of every logical switch (read with vtep-ctl)."""
    found: dict[str, list[dict[str, str]]] = {}
    for leaf in topology.LEAF_NAMES:
        switch = lab.leaf(leaf)
        names = switch.vtep_ctl("list-ls").split()
        found[leaf] = []
        for name in names:
            text = switch.vtep_ctl("get", "Logical_Switch", name, "other_config")
            pairs = text.strip().strip("{}")
            config = dict(p.split("=", 1) for p in pairs.split(", ") if "=" in p)
            found[leaf].append({k.strip('"'): v.strip('"') for k, v in config.items()})
    return found


def test_two_deployments_never_touch_each_others_objects(labs):
    clients = {name: NeutronClient(lab.status()["neutron"]["url"])
               for name, lab in labs.items()}
    live: dict[str, list[dict]] = {"a": [], "b": []}
    deleted: dict[str, list[str]] = {"a": [], "b": []}
    for round_ in range(ROUNDS):
        for name, client in clients.items():
            for i in range(2):
                net = client.create_network(f"dep-{name}-{round_}-{i}")
                client.create_port(net["id"], host=HOSTS[i])
                live[name].append(net)
            if round_:
                old = live[name].pop(0)
                for port in client.list_ports(old["id"]):
                    client.delete_port(port["id"])
                client.delete_network(old["id"])
                deleted[name].append(old["id"])
        time.sleep(1)

    # Both audits clean: each one's objects right, the other's not taken for drift.
    deadline = time.monotonic() + 90
    reports = {}
    for name, lab in labs.items():
        while True:
            code, reports[name] = audit(lab)
            if code == 0:
                break
            assert time.monotonic() < deadline, (name, reports[name])
            time.sleep(1)
    # Give both sweepers two full passes (a port group must look unused twice).
    time.sleep(2 * SWEEP_INTERVAL + 2)
    for name, lab in labs.items():
        code, out, err = run(lab, "sync")
        assert code == 0, (name, out, err)

    ids = {name: reports[name]["deployment"] for name in labs}
    assert ids["a"] and ids["b"] and ids["a"] != ids["b"]
    with VCenterProbe(labs["a"].status()["vcenter"]) as probe:
        pgs = probe.port_groups(topology.DVS_NAME)
    marked = {naming.parse_marker(pg.description): pg for pg in pgs
              if naming.parse_marker(pg.description)}
    switches = _switches(labs["a"])
    for name, nets in live.items():
        low, high = RANGES[name]
        for net in nets:
            pg = marked.get((net["id"], ids[name]))
            assert pg is not None, f"{name}'s port group of {net['id']} lost"
            assert low <= (pg.vlan or 0) <= high
            for configs in switches.values():
                for config in configs:
                    if config.get(NETWORK_ID_KEY) == net["id"]:
                        assert config.get(DEPLOYMENT_KEY) == ids[name]
        for network_id in deleted[name]:
            assert not [k for k in marked if k[0] == network_id], \
                f"{name}'s deleted network {network_id} kept a port group"
            assert not [leaf for leaf, configs in switches.items()
                        for c in configs if c.get(NETWORK_ID_KEY) == network_id], \
                f"{name}'s deleted network {network_id} kept a logical switch"
    # Every live network of each deployment has its logical switch somewhere.
    for name, nets in live.items():
        on_leaves = {c.get(NETWORK_ID_KEY) for configs in switches.values() for c in configs
                     if c.get(DEPLOYMENT_KEY) == ids[name]}
        assert {n["id"] for n in nets} <= on_leaves, f"{name} lost logical switches"

    for name, lab in labs.items():
        other = "b" if name == "a" else "a"
        code, report = audit(lab)
        assert code == 0, report
        foreign = "\n".join(report["foreign"])
        for net in live[other]:
            assert net["id"] in foreign, (name, net["id"], foreign)
        for net in live[name]:
            assert net["id"] not in foreign
