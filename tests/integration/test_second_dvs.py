"""Beyond one DVS (issue 15): two DVSs on their own physical networks reuse VLAN numbers.

One lab for the module in the second-DVS mode (``Lab.up(second_dvs=True)``, SQLite,
fabric_hwvtep + vsphere_dvs): cluster DC0_C0 on DVS0 (``physnet-dvs``), DC0_C1 on
DVS1 (``physnet-dvs2``), each physical network with the same two VLANs only.  Two
networks bound on each cluster then use both VLANs on both DVSs, every leaf maps
them on each port to its own network's VNI, a third network on DC0_C0 finds the
pool used up, and ``dvs-fabric audit`` finds nothing wrong.  vCenter is read with
plain pyVmomi (``lab/probe.py``), the leaves with ``vtep-ctl``, the dynamic
segments from the lab's SQLite file.  Where network namespaces work the lab has its
dataplane: VMs of two networks with the same VLAN and the same subnet, one per DVS,
ping their own network's VMs across leaves and never the other's.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Iterator

import pytest
import yaml

from networking_dvs_fabric.lab import guests, netns, topology, vm_traffic
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaves import LeafSwitch
from networking_dvs_fabric.lab.nova import FakeNova
from networking_dvs_fabric.lab.probe import VCenterProbe
from tests.integration.conftest import connect, lab_directory, unique
from tests.integration.test_faults import cli

VLANS = (100, 101)                # on each DVS's physical network: 2 networks each
C0, C1 = "DC0_C0", "DC0_C1"
HOST = {C0: topology.compute_host(C0), C1: topology.compute_host(C1)}
DVS = {C0: topology.DVS_NAME, C1: topology.SECOND_DVS_NAME}
PHYSNET = {C0: topology.PHYSICAL_NETWORK, C1: topology.SECOND_PHYSICAL_NETWORK}
CONVERGE = 60.0
DATAPLANE_OFF = netns.unavailable()
CIDR = "10.15.0.0/24"           # every network's subnet: only the fabric keeps them apart


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_directory(request, tmp_path_factory, "lab-second-dvs") as directory:
        lab = Lab(directory)
        try:
            lab.up(mechanism_drivers="fabric_hwvtep,vsphere_dvs", db="sqlite",
                   second_dvs=True, dataplane=DATAPLANE_OFF is None,
                   extra_config={"ml2_type_vlan": {
                       "network_vlan_ranges": topology.vlan_ranges(*VLANS, second_dvs=True)}})
            yield lab
        finally:
            lab.down()


@pytest.fixture(scope="module")
def networks(lab: Lab) -> dict[str, list[dict[str, Any]]]:
    """Two VXLAN networks per cluster, each with a port bound to the cluster's host."""
    neutron = connect(lab)
    out: dict[str, list[dict[str, Any]]] = {}
    for c, cluster in enumerate((C0, C1)):
        for v, _ in enumerate(VLANS):
            net = neutron.network.create_network(name=unique(f"dvs2-{cluster.lower()}"))
            first = 10 + 40 * c + 10 * v     # disjoint addresses in the one CIDR
            neutron.network.create_subnet(network_id=net.id, ip_version=4, cidr=CIDR,
                                          allocation_pools=[{"start": f"10.15.0.{first}",
                                                             "end": f"10.15.0.{first + 9}"}])
            port = neutron.network.create_port(network_id=net.id,
                                               binding_host_id=HOST[cluster])
            out.setdefault(cluster, []).append(
                {"id": net.id, "vni": net.provider_segmentation_id, "port": port})
    return out


# -- independent read-backs ------------------------------------------------------------
def dynamic_segments(lab: Lab, network_id: str) -> list[tuple[str, int]]:
    db = sqlite3.connect(f"file:{lab.dir / 'neutron.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return sorted(db.execute(
            "SELECT physical_network, segmentation_id FROM networksegments "
            "WHERE network_id = ? AND is_dynamic = 1 AND network_type = 'vlan'",
            (network_id,)).fetchall())
    finally:
        db.close()


def leaf_maps(lab: Lab) -> dict[tuple[str, str], dict[int, int]]:
    """(leaf, port) -> {VLAN: VNI}: Physical_Port.vlan_bindings -> Logical_Switch
    tunnel_key, on every port of every leaf."""
    out = {}
    for data in lab.state()["services"]["leaves"]:
        leaf = LeafSwitch.from_json(data)
        vnis = {ls: int(leaf.vtep_ctl("get", "Logical_Switch", ls, "tunnel_key").strip())
                for ls in leaf.vtep_ctl("list-ls").split()}
        for port in leaf.ports:
            out[(leaf.name, port)] = {vlan: vnis.get(ls, -1)
                                      for vlan, ls in leaf.bindings(port).items()}
    return out


def audit(lab: Lab, timeout: float = CONVERGE) -> dict:
    """``dvs-fabric --lab-dir D audit --json`` until it exits 0 (the worker may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cli(lab, "audit", "--json")
        if out.returncode == 0:
            return json.loads(out.stdout)
        if time.monotonic() > deadline:
            raise AssertionError(f"audit not clean after {timeout:.0f} s (exit "
                                 f"{out.returncode}): {out.stdout[-3000:]}{out.stderr[-2000:]}")
        time.sleep(2)


def api_log(lab: Lab) -> str:
    return (lab.dir / "logs" / "neutron-api.log").read_text(errors="replace")


# -- the tests -----------------------------------------------------------------------------
def test_status_config_and_vcenter_name_both_dvs(lab: Lab):
    out = cli(lab, "lab", "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["vcenter"]["dvs"] == {"physnet-dvs": "DVS0", "physnet-dvs2": "DVS1"}
    assert {a["esxi_host"]: a["dvs"] for a in status["attachments"]} == {
        host: DVS[cluster] for cluster in (C0, C1) for host in topology.esxi_hosts(cluster)}

    ml2 = (lab.dir / "neutron" / "ml2_conf.ini").read_text()
    assert "dvs_mappings = physnet-dvs:DVS0,physnet-dvs2:DVS1" in ml2
    assert "physnet-dvs2:100:101" in ml2
    fabric = yaml.safe_load((lab.dir / "neutron" / "fabric-topology.yaml").read_text())
    pinned = {h["name"]: {a["dvs"] for a in h["attachments"]} for h in fabric["hosts"]
              if h["name"].startswith("DC0_")}
    assert pinned == {host: {DVS[cluster]} for cluster in (C0, C1)
                      for host in topology.esxi_hosts(cluster)}

    with VCenterProbe(status["vcenter"]) as probe:
        for cluster in (C0, C1):
            members = {h.name for h in probe.dvs(DVS[cluster]).summary.hostMember}
            assert members == set(topology.esxi_hosts(cluster)), (cluster, members)


def test_each_cluster_binds_on_its_own_dvs_and_physical_network(lab: Lab, networks):
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        uuids = {cluster: probe.dvs(DVS[cluster]).uuid for cluster in (C0, C1)}
        for cluster, other in ((C0, C1), (C1, C0)):
            vlans = []
            for net in networks[cluster]:
                port = net["port"]
                assert port.binding_vif_type == "dvs", port
                assert port.binding_vif_details["dvs_id"] == uuids[cluster]
                [segment] = dynamic_segments(lab, net["id"])
                assert segment[0] == PHYSNET[cluster]
                [pg] = probe.port_groups_of_network(DVS[cluster], net["id"])
                assert pg.key == port.binding_vif_details["pg_id"]
                assert pg.vlan == segment[1]
                assert probe.port_groups_of_network(DVS[other], net["id"]) == []
                vlans.append(pg.vlan)
            # The pool of each physical network is used up, by the same VLAN numbers.
            assert sorted(vlans) == list(VLANS), (cluster, vlans)


def test_each_leaf_port_maps_its_vlans_to_its_own_networks_vnis(lab: Lab, networks):
    want: dict[tuple[str, str], dict[int, int]] = {}
    cluster_of = {h: c for c in (C0, C1) for h in topology.esxi_hosts(c)}
    for att in topology.attachments(second_dvs=True):
        cluster = cluster_of[att.esxi_host]
        want[(att.leaf, att.port)] = {
            dynamic_segments(lab, net["id"])[0][1]: net["vni"] for net in networks[cluster]}
    deadline = time.monotonic() + CONVERGE
    while True:
        got = {key: maps for key, maps in leaf_maps(lab).items() if maps}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == want
    # The point: one VLAN number, two networks, on the same leaf (swp1: C0, swp2: C1).
    for leaf in topology.LEAF_NAMES:
        on_leaf = [maps for (name, _), maps in got.items() if name == leaf]
        assert len(on_leaf) == 2 and on_leaf[0].keys() == on_leaf[1].keys() == set(VLANS)
        assert not set(on_leaf[0].values()) & set(on_leaf[1].values())


def test_a_third_network_on_a_full_dvs_fails_to_bind(lab: Lab, networks):
    neutron = connect(lab)
    net = neutron.network.create_network(name=unique("dvs2-full"))
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST[C0])
    assert port.binding_vif_type == "binding_failed", port
    assert (f"no VLAN left on physical network {PHYSNET[C0]}" in api_log(lab)
            and port.id in api_log(lab))
    assert dynamic_segments(lab, net.id) == []
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        for cluster in (C0, C1):
            assert probe.port_groups_of_network(DVS[cluster], net.id) == []
    # The bound networks are untouched, and the audit (failed port included) is clean.
    report = audit(lab)
    assert report.get("drifts", []) == [], report
    assert {f"vCenter DVS {DVS[C0]}", f"vCenter DVS {DVS[C1]}"} <= set(report["checked"])


@pytest.mark.skipif(DATAPLANE_OFF is not None, reason=f"no dataplane here: {DATAPLANE_OFF}")
def test_same_vlan_same_subnet_on_two_dvs_stay_apart_on_the_wire(lab: Lab, networks):
    """VLAN v on DVS0 (network A) and on DVS1 (network B), one subnet: A's VMs behind
    leaf1 and leaf2 ping each other, B's likewise; A's never reach B's."""
    vlan = VLANS[0]
    net = {cluster: next(n for n in networks[cluster]
                         if dynamic_segments(lab, n["id"])[0][1] == vlan)
           for cluster in (C0, C1)}
    neutron = guests.neutron_of(lab)
    vms: dict[str, list[guests.Guest]] = {}
    with FakeNova(lab.status()["vcenter"]) as nova:
        try:
            for cluster in (C0, C1):
                vms[cluster] = [guests.boot_vsphere_vm(
                    lab, nova, neutron, net[cluster]["id"], unique(f"dvs2-vm-{i}"), host)
                    for i, host in enumerate(topology.esxi_hosts(cluster)[:2])]
            for vm in (v for pair in vms.values() for v in pair):
                vm_traffic.wait_for(lambda vm=vm: vm.address in netns.ip(
                    "-o", "addr", "show", "dev", "eth0", ns=vm.ns, check=False), 60,
                    f"{vm.name}'s address")
            for cluster in (C0, C1):
                a, b = vms[cluster]
                # ovs-vtep reads its database once a second: wait for a first answer.
                vm_traffic.wait_for(lambda a=a, b=b: vm_traffic.pings(a.ns, b.address, 1)[1],
                                    60, f"a first ping {a.name} -> {b.name} ({cluster})")
                sent, received = vm_traffic.pings(a.ns, b.address, 5)
                assert received == sent >= 5, (cluster, sent, received)
            for a in vms[C0]:
                for b in vms[C1]:
                    assert vm_traffic.pings(a.ns, b.address, 3)[1] == 0, (a.name, b.name)
                    assert vm_traffic.pings(b.ns, a.address, 3)[1] == 0, (b.name, a.name)
        finally:
            for vm in (v for pair in vms.values() for v in pair):
                guests.remove(lab, nova, neutron, vm)


def test_vcenter_restart_keeps_the_second_dvs(lab: Lab, networks):
    """The simulator forgets everything on restart: the lab sets DVS1 up again, and the
    worker's full sync puts the port groups back on the right DVS."""
    lab.restart_vcenter()
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        for cluster in (C0, C1):
            members = {h.name for h in probe.dvs(DVS[cluster]).summary.hostMember}
            assert members == set(topology.esxi_hosts(cluster)), (cluster, members)
    audit(lab, timeout=120.0)
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        for cluster in (C0, C1):
            for net in networks[cluster]:
                [pg] = probe.port_groups_of_network(DVS[cluster], net["id"])
                assert pg.vlan == dynamic_segments(lab, net["id"])[0][1]
