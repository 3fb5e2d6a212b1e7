"""The topology file: what an operator writes, what a mistake in it says, what it answers.

Placement of vSphere hosts is asked of the real vCenter simulator (cluster
membership and DVS membership come from vCenter, not from the file).
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from networking_dvs_fabric.topology import LeafPort, Topology, TopologyError

GOOD = {
    "leaves": [
        {"name": "leaf1", "ovsdb": "tcp:127.0.0.1:6640", "tunnel_ip": "192.0.2.1"},
        {"name": "leaf2", "ovsdb": "unix:/run/leaf2.sock", "tunnel_ip": "192.0.2.2"},
    ],
    "hosts": [
        {"name": "DC0_C0_H0", "attachments": [{"leaf": "leaf1", "port": "swp1"}]},
        {"name": "DC0_C0_H1", "attachments": [{"leaf": "leaf2", "port": "swp1", "dvs": "DVS0"}]},
        {"name": "kvm-1", "physical_network": "physnet-kvm",
         "attachments": [{"leaf": "leaf1", "port": "swp9"}, {"leaf": "leaf2", "port": "swp9"}]},
    ],
}


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_good_file_loads_and_round_trips(tmp_path: Path) -> None:
    topo = Topology.load(_write(tmp_path, GOOD))
    assert sorted(topo.leaves) == ["leaf1", "leaf2"]
    assert topo.leaf_ports("leaf2") == {"swp1", "swp9"}
    again = Topology.from_dict(topo.to_dict())
    assert again.to_dict() == topo.to_dict()


def _broken(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


BAD = [
    ("unknown leaf", lambda d: d["hosts"][0]["attachments"][0].update(leaf="leaf9"),
     "hosts[0] (DC0_C0_H0): attachments[0]: unknown leaf 'leaf9'"),
    ("port cabled twice", lambda d: d["hosts"][1]["attachments"][0].update(leaf="leaf1"),
     "hosts[1] (DC0_C0_H1): attachments[0]: leaf1 port swp1 is already attached to DC0_C0_H0"),
    ("bad endpoint", lambda d: d["leaves"][1].update(ovsdb="http://x"),
     "leaves[1] (leaf2): ovsdb 'http://x': unknown kind 'http'"),
    ("bad port number", lambda d: d["leaves"][0].update(ovsdb="tcp:127.0.0.1:99999"),
     "leaves[0] (leaf1): ovsdb 'tcp:127.0.0.1:99999': expected tcp:HOST:PORT"),
    ("bad tunnel ip", lambda d: d["leaves"][0].update(tunnel_ip="300.1.1.1"),
     "leaves[0] (leaf1): tunnel_ip '300.1.1.1' is not an IP address"),
    ("duplicate leaf", lambda d: d["leaves"][1].update(name="leaf1"),
     "leaves[1]: leaf name 'leaf1' used twice"),
    ("duplicate tunnel ip", lambda d: d["leaves"][1].update(tunnel_ip="192.0.2.1"),
     "leaves[1] (leaf2): tunnel_ip 192.0.2.1 already used by leaf1"),
    ("typo in key", lambda d: d["hosts"][2].update(physical_netwrk="x"),
     "hosts[2]: unknown key(s) physical_netwrk"),
    ("no attachments", lambda d: d["hosts"][2].update(attachments=[]),
     "hosts[2] (kvm-1): attachments must be a non-empty list"),
    ("ssl without files", lambda d: d["leaves"][0].update(ovsdb="ssl:127.0.0.1:6640"),
     "leaves[0] (leaf1): an ssl: endpoint needs ssl:"),
    ("unreadable ssl file", lambda d: d["leaves"][0].update(
        ssl={"private_key": "/nonexistent.key", "certificate": "/x", "ca_cert": "/y"}),
     "leaves[0] (leaf1): ssl private_key '/nonexistent.key' is not a readable file"),
    ("dvs on a kvm host", lambda d: d["hosts"][2]["attachments"][0].update(dvs="DVS0"),
     "hosts[2] (kvm-1): attachments[0]: dvs is for ESXi hosts"),
    ("missing leaves", lambda d: d.pop("leaves"), ": leaves is required"),
]


@pytest.mark.parametrize("change,expected", [(c, e) for _, c, e in BAD],
                         ids=[name for name, _, _ in BAD])
def test_a_mistake_is_named(tmp_path: Path, change, expected: str) -> None:
    path = _write(tmp_path, _broken(change))
    with pytest.raises(TopologyError) as info:
        Topology.load(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_and_invalid_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read it"):
        Topology.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("leaves: [unclosed\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        Topology.load(bad)


def test_non_vsphere_host_placed_from_the_file() -> None:
    topo = Topology.from_dict(GOOD)
    where = topo.placement("kvm-1", None)
    assert where is not None
    assert where.physical_network == "physnet-kvm"
    assert where.leaf_ports == {LeafPort("leaf1", "swp9"), LeafPort("leaf2", "swp9")}
    assert where.location == "leaf1"
    assert topo.placement("kvm-1", None, physical_network="physnet-dvs") is None
    assert topo.placement("unknown-host", None) is None
    # Without vCenter, ESXi hosts cannot be placed: not ours, rather than a guess.
    assert topo.placement("DC0_C0_H0", None) is None
