"""``dvs-fabric topology``: the view assembled from a hand-built state, as text, JSON, SVG.

The state is the lab's (3 leaves, 6 ESXi hosts in 2 clusters, the KVM host) with two
networks, three VMs and one of the simulator's own VMs; what is asserted is what a
user would look for: every leaf, host, VM and VLAN -> VNI label, and an unreadable
leaf or vCenter shown as unknown, never as empty.
"""
from __future__ import annotations

import json
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from networking_dvs_fabric.cmd.main import main
from networking_dvs_fabric.fabric.api import LeafUnreachable, NetworkOnLeaf
from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.topology import Topology
from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.portgroups import PortGroup
from networking_dvs_fabric.vcenter.vm_state import Nic, VmState
from networking_dvs_fabric.view import gather, svg, text

NET_A, NET_B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
DVS_UUID = "50 1a 2b 3c"
ESXI = [h for c in lab_topology.CLUSTERS for h in lab_topology.esxi_hosts(c)]
C0_PORTS = {(a.leaf, a.port) for a in lab_topology.attachments()
            if a.esxi_host.startswith("DC0_C0_")}


def lab_topology_file() -> Topology:
    endpoints = {name: f"tcp:127.0.0.1:{6640 + i}" for i, name in
                 enumerate(lab_topology.LEAF_NAMES)}
    return Topology.from_dict(lab_topology.fabric_topology(endpoints), "lab.yaml")


def leaf_reads(down: str | None = None) -> dict[str, gather.LeafRead]:
    """net-a (VNI 5001, VLAN 101) pre-provisioned on cluster DC0_C0; net-b (VNI 5002,
    VLAN 102) on DC0_C1_H0's port only; remote MACs for the VMs on other leaves."""
    ips = {leaf.name: leaf.tunnel_ip for leaf in lab_topology.leaves()}
    c1_h0 = next(a for a in lab_topology.attachments() if a.esxi_host == "DC0_C1_H0")
    reads = {}
    for leaf in lab_topology.LEAF_NAMES:
        if leaf == down:
            reads[leaf] = gather.LeafRead(None, "leaf leaf3 at tcp:127.0.0.1:6642: refused")
            continue
        nets = {NET_A: NetworkOnLeaf(
            NET_A, 5001, frozenset((p, 101) for lf, p in C0_PORTS if lf == leaf),
            frozenset({("fa:16:3e:00:00:01", ips["leaf1"])} if leaf != "leaf1" else ()),
            frozenset(ip for name, ip in ips.items() if name != leaf))}
        if leaf == c1_h0.leaf:
            nets[NET_B] = NetworkOnLeaf(NET_B, 5002, frozenset({(c1_h0.port, 102)}))
        reads[leaf] = gather.LeafRead(nets)
    return reads


def vcenter_read() -> gather.VCenterRead:
    pgs = {(DVS_UUID, "dvportgroup-11"): ("DVS0", PortGroup("dvportgroup-11", f"net-a-{NET_A}",
                                                             "dvportgroup-11", 101, NET_A)),
           (DVS_UUID, "dvportgroup-12"): ("DVS0", PortGroup("dvportgroup-12", f"net-b-{NET_B}",
                                                             "dvportgroup-12", 102, NET_B)),
           (DVS_UUID, "dvportgroup-9"): ("DVS0", PortGroup("dvportgroup-9", "DC0_DVPG0",
                                                            "dvportgroup-9", 0, None))}
    vms = [VmState("vm-101", "web-1", "DC0_C0_H0", True,
                   (Nic("fa:16:3e:00:00:01", "dvportgroup-11", DVS_UUID, "port-1"),)),
           VmState("vm-102", "web-2", "DC0_C0_H1", True,
                   (Nic("fa:16:3e:00:00:02", "dvportgroup-11", DVS_UUID, "port-2"),
                    Nic("fa:16:3e:00:00:03", "dvportgroup-12", DVS_UUID, "port-3"))),
           VmState("vm-103", "db-1", "DC0_C1_H0", False,
                   (Nic("fa:16:3e:00:00:04", "dvportgroup-12", DVS_UUID, "port-4"),)),
           VmState("vm-42", "DC0_C0_RP0_VM0", "DC0_C0_H2", True,
                   (Nic("00:50:56:aa:bb:cc", "dvportgroup-9", DVS_UUID, None),))]
    return gather.VCenterRead(
        clusters={c: lab_topology.esxi_hosts(c) for c in lab_topology.CLUSTERS},
        hosts=ESXI + ["DC0_H0"], host_dvs={h: ["DVS0"] for h in ESXI},
        dvs_names={DVS_UUID: "DVS0"}, port_groups=pgs, vms=vms)


def make_view(leaf_down: str | None = None, vcenter_down: bool = False) -> dict:
    unreachable = [f"leaf {leaf_down}: refused"] if leaf_down else []
    if vcenter_down:
        unreachable.append("vCenter: connection refused")
    src = gather.Sources(
        topology=lab_topology_file(), leaves=leaf_reads(leaf_down),
        vcenter=None if vcenter_down else vcenter_read(),
        networks={NET_A: ("net-a", 5001), NET_B: ("net-b", 5002)},
        unreachable=unreachable, datacenter="DC0",
        vcenter_error="connection refused" if vcenter_down else None,
        host_mappings={lab_topology.compute_host(c): c for c in lab_topology.CLUSTERS})
    return gather.assemble(src)


def host(view: dict, name: str) -> dict:
    return next(h for h in view["hosts"] if h["name"] == name)


# -- the document ------------------------------------------------------------------------
def test_vms_sit_under_their_hosts_with_network_and_vlan():
    view = make_view()
    assert [vm["name"] for vm in host(view, "DC0_C0_H0")["vms"]] == ["web-1"]
    web2 = host(view, "DC0_C0_H1")["vms"][0]
    assert [(n["network_name"], n["vlan"], n["port_id"]) for n in web2["nics"]] == [
        ("net-a", 101, "port-2"), ("net-b", 102, "port-3")]
    sim_vm = host(view, "DC0_C0_H2")["vms"][0]
    assert sim_vm["nics"][0]["network_id"] is None             # not a port group of ours
    assert host(view, "DC0_C1_H0")["vms"][0]["powered_on"] is False
    assert host(view, "DC0_C0_H0")["cluster"] == "DC0_C0"
    kvm = host(view, lab_topology.KVM_HOST)
    assert (kvm["kind"], kvm["vms"], kvm["physical_network"]) == ("other", None, "physnet-kvm")
    standalone = host(view, "DC0_H0")                     # in vCenter, not in the file
    assert (standalone["in_topology"], standalone["attachments"]) == (False, [])
    assert view["clusters"][0] == {"name": "DC0_C0", "binding_hosts": ["compute-dc0-c0"],
                                   "hosts": lab_topology.esxi_hosts("DC0_C0")}


def test_leaf_ports_carry_vlan_to_vni_and_networks_list_them():
    view = make_view()
    bound = {(leaf["name"], p["name"]): p["bindings"] for leaf in view["leaves"]
             for p in leaf["ports"]}
    for where in C0_PORTS:
        assert {(b["vlan"], b["vni"], b["network_name"]) for b in bound[where]} >= {
            (101, 5001, "net-a")}
    assert bound[("leaf2", "swp9")] == []                 # the KVM host: nothing bound
    net_a = view["networks"][0]
    assert (net_a["name"], net_a["vni"], net_a["neutron_vni"]) == ("net-a", 5001, 5001)
    assert {(p["leaf"], p["port"]) for p in net_a["leaf_ports"]} == C0_PORTS
    assert net_a["vms"] == ["web-1", "web-2"]
    assert net_a["port_groups"] == [{"dvs": "DVS0", "name": f"net-a-{NET_A}",
                                     "key": "dvportgroup-11", "vlan": 101}]
    leaf2 = next(leaf for leaf in view["leaves"] if leaf["name"] == "leaf2")
    assert {"mac": "fa:16:3e:00:00:01", "network_id": NET_A, "tunnel_ip": "192.0.2.1",
            "leaf": "leaf1"} in leaf2["remote_macs"]
    assert json.loads(text.to_json(view)) == view


def test_unreachable_leaf_is_unknown_not_empty():
    view = make_view(leaf_down="leaf3")
    leaf3 = next(leaf for leaf in view["leaves"] if leaf["name"] == "leaf3")
    assert leaf3["reachable"] is False and "refused" in leaf3["error"]
    assert leaf3["ports"] and all(p["bindings"] is None for p in leaf3["ports"])
    assert leaf3["remote_macs"] is None and leaf3["logical_switches"] is None
    assert view["unreachable"] == ["leaf leaf3: refused"]


# -- text ----------------------------------------------------------------------------------
def test_text_names_every_leaf_host_vm_and_binding():
    out = text.format_text(make_view(leaf_down="leaf3"))
    for name in [*lab_topology.LEAF_NAMES, *ESXI, lab_topology.KVM_HOST, "web-1", "web-2",
                 "db-1", "DC0_C0_RP0_VM0", "fa:16:3e:00:00:03"]:
        assert name in out, name
    assert "VLAN 101 -> VNI 5001 (net-a)" in out
    assert "cluster DC0_C0  (compute-dc0-c0)" in out
    assert "leaf leaf3  tunnel 192.0.2.3  UNREACHABLE" in out
    assert "bindings unknown" in out
    assert "db-1  (powered off)" in out


def test_text_with_vcenter_unreachable_says_vms_unknown():
    out = text.format_text(make_view(vcenter_down=True))
    assert out.count("VMs unknown: vCenter unreachable") == len(ESXI)
    assert "no VMs" not in out
    assert "UNREACHABLE  vCenter: connection refused" in out


# -- SVG -----------------------------------------------------------------------------------
def svg_texts(document: str, tooltips: bool = True) -> str:
    root = ET.fromstring(document)                       # it parses as XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    kinds = ("}text", "}title") if tooltips else ("}text",)
    return "\n".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith(kinds))


def test_svg_draws_every_leaf_host_vm_and_network():
    document = svg.render(make_view())
    texts = svg_texts(document)
    for name in [*lab_topology.LEAF_NAMES, *ESXI, lab_topology.KVM_HOST, "web-1", "web-2",
                 "db-1 (off)", "cluster DC0_C0", "cluster DC0_C1", "swp9"]:
        assert name in texts, name
    assert "101 \u2192 5001" in texts and "102 \u2192 5002" in texts
    # The legend: network, VNI, VLAN, VMs, id.
    assert f"net-a\n5001\n101\n2\n{NET_A}" in texts
    assert f"net-b\n5002\n102\n2\n{NET_B}" in texts
    assert "fa:16:3e:00:00:01 VLAN 101" in texts
    colours = svg.colours(make_view())
    # One line per bound network in its colour, from each of cluster C0's ports.
    lines = ET.fromstring(document).iter("{http://www.w3.org/2000/svg}line")
    assert sum(1 for el in lines if el.get("stroke") == colours[NET_A]) == len(C0_PORTS)


def test_svg_marks_unreachable_leaf_and_vcenter():
    document = svg.render(make_view(leaf_down="leaf3", vcenter_down=True))
    texts = svg_texts(document)
    assert "leaf3  UNREACHABLE" in texts
    assert "NOT READ: leaf leaf3: refused" in texts
    assert texts.count("VMs unknown:\nvCenter unreachable") == len(ESXI)
    assert "DVS unknown" in texts and "? VMs" in texts
    dashed = [el for el in ET.fromstring(document).iter("{http://www.w3.org/2000/svg}line")
              if el.get("class") == "cable unknown"]
    # Every cable to leaf3: the ESXi hosts' and the KVM compute's and network node's.
    assert len(dashed) == sum(1 for a in lab_topology.attachments() if a.leaf == "leaf3") + \
        sum(1 for links in lab_topology.AGENT_HOSTS.values() for leaf, _ in links
            if leaf == "leaf3")


def test_svg_long_names_are_cut_to_fit():
    view = make_view()
    host(view, "DC0_C0_H0")["vms"][0]["name"] = "x" * 200
    document = svg.render(view)
    assert "x" * 200 not in svg_texts(document, tooltips=False)
    assert "x" * 200 in svg_texts(document)             # the whole name on hover
    assert svg.fit("abcdef", 1000) == "abcdef" and svg.fit("abcdef" * 20, 60).endswith("\u2026")


def test_svg_port_with_many_networks_stays_compact():
    view = make_view()
    port = view["leaves"][0]["ports"][0]
    port["bindings"] = [{"vlan": 200 + i, "vni": 6000 + i, "network_id": f"n{i}",
                         "network_name": None} for i in range(100)]
    document = svg.render(view)
    texts = svg_texts(document)
    assert "+93 more" in texts and "206 \u2192 6006" in texts and "207 \u2192" not in texts
    root = ET.fromstring(document)
    assert float(root.get("height")) < 800


# -- gather: unreadable parts ----------------------------------------------------------------
class _DownFabric:
    def read(self, leaf: str):
        raise LeafUnreachable(f"leaf {leaf}: connection refused")


class _DownVSphere:
    settings = types.SimpleNamespace(datacenter="DC0", host_mappings={}, dvs_mappings={})

    def inventory(self, refresh: bool = False):
        raise errors.VCenterUnreachable("vCenter at https://vc/sdk: connection refused")


def test_gather_marks_what_it_cannot_read():
    parts = types.SimpleNamespace(topology=lab_topology_file(), fabric=_DownFabric(),
                                  vsphere=_DownVSphere(), directory=None)
    view = gather.gather(None, parts)                     # nothing read: no DB query
    assert len(view["unreachable"]) == 4
    assert all(not leaf["reachable"] for leaf in view["leaves"])
    assert view["vcenter"] == {"configured": True, "reachable": False, "datacenter": "DC0",
                               "error": "vCenter at https://vc/sdk: connection refused"}
    assert all(h["vms"] is None for h in view["hosts"])
    assert view["networks"] == []


def test_cli_without_a_lab_or_config_exits_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]):
    assert main(["--lab-dir", str(tmp_path), "topology", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--config-file" in err
