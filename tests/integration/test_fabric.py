"""fabric_hwvtep on the lab's real Neutron (MariaDB, several API processes) and real leaves.

Ports are created through openstacksdk as Nova would; what the leaves hold is read
with ``vtep-ctl`` against each leaf's ovsdb-server.  Faults are real: a leaf's
server stopped and started, the periodic worker killed with SIGKILL in the middle
of a batch, a second worker process on the same database.
"""
from __future__ import annotations

import concurrent.futures
import shutil
import time
from typing import Iterator

import pytest

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaves import LeafSwitch
from networking_dvs_fabric.lab.procs import LabError
from tests.integration.conftest import connect, start_lab, unique

HOST_C0 = topology.compute_host("DC0_C0")
CONVERGE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def fabric_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab-fabric")
    lab = start_lab(directory, "mariadb", "fabric_hwvtep,vsphere_dvs")
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def neutron(fabric_lab: Lab):
    return connect(fabric_lab)


def leaves(lab: Lab) -> dict[str, LeafSwitch]:
    return {d["name"]: LeafSwitch.from_json(d) for d in lab.state()["services"]["leaves"]}


def snapshot(lab: Lab) -> dict[str, dict]:
    """Everything on every leaf that vtep-ctl shows: switches, VNIs, bindings, MACs."""
    out: dict[str, dict] = {}
    for name, leaf in leaves(lab).items():
        switches = {}
        for ls in leaf.vtep_ctl("list-ls").split():
            try:
                switches[ls] = {
                    "vni": leaf.vtep_ctl("get", "Logical_Switch", ls, "tunnel_key").strip(),
                    "macs": sorted(line.strip() for line in
                                   leaf.vtep_ctl("list-remote-macs", ls).splitlines()
                                   if " -> " in line)}
            except LabError:
                continue      # removed by the worker between two vtep-ctl calls
        bindings = {}
        for port in leaf.ports:
            words = leaf.vtep_ctl("list-bindings", name, port).split()
            # "0742 dvsf-..." -> ["742", "dvsf-..."]: vtep-ctl zero-pads VLANs.
            bindings[port] = [str(int(w, 10)) if w.isdigit() else w for w in words]
        rows = {table: leaf.vtep_ctl("--columns=_uuid", "list", table).count("_uuid")
                for table in ("Logical_Switch", "Ucast_Macs_Remote", "Mcast_Macs_Remote",
                              "Physical_Locator")}
        out[name] = {"switches": switches, "bindings": bindings, "rows": rows}
    return out


def wait_converged(lab: Lab, check, timeout: float = CONVERGE_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = snapshot(lab)
        if check(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"leaves did not converge in {timeout} s: {state}")
        time.sleep(0.2)


def cluster_ports(cluster: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for att in topology.attachments():
        if att.esxi_host.startswith(cluster + "_"):
            out.setdefault(att.leaf, set()).add(att.port)
    return out


def has_network(network_id: str, vlan_ports: dict[str, set[str]]):
    ls = f"dvsf-{network_id}"

    def check(state: dict) -> bool:
        for leaf, view in state.items():
            wanted = vlan_ports.get(leaf, set())
            if bool(wanted) != (ls in view["switches"]):
                return False
            for port, binding in view["bindings"].items():
                if (port in wanted) != (ls in binding):
                    return False
        return True
    return check


def nothing_of(network_id: str):
    ls = f"dvsf-{network_id}"
    return lambda state: all(ls not in view["switches"] for view in state.values())


def dynamic_vlans(lab: Lab, network_id: str) -> list[int]:
    """The network's dynamic VLAN segments, from Neutron's database (the API hides them)."""
    import pymysql
    import sqlalchemy.engine
    url = sqlalchemy.engine.make_url(lab.state()["services"]["mariadb"]["url"])
    conn = pymysql.connect(host=url.host, port=url.port, user=url.username,
                           password=url.password, database=url.database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT segmentation_id FROM networksegments WHERE network_id=%s "
                        "AND is_dynamic=1 AND network_type='vlan'", (network_id,))
            return sorted(row[0] for row in cur.fetchall())
    finally:
        conn.close()


def dynamic_vlan(lab: Lab, network_id: str) -> int:
    vlans = dynamic_vlans(lab, network_id)
    assert len(vlans) == 1, vlans
    return vlans[0]


def test_cluster_port_programs_exactly_the_clusters_leaf_ports(fabric_lab, neutron):
    net = neutron.network.create_network(name=unique("fab"))
    assert net.provider_network_type == "vxlan"
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    assert port.binding_vif_type == "dvs"
    assert port.binding_vif_details["bound_drivers"] == {"0": "fabric_hwvtep",
                                                          "1": "vsphere_dvs"}
    state = wait_converged(fabric_lab, has_network(net.id, cluster_ports("DC0_C0")))
    vlan = dynamic_vlan(fabric_lab, net.id)
    ls = f"dvsf-{net.id}"
    for leaf, ports in cluster_ports("DC0_C0").items():
        assert state[leaf]["switches"][ls]["vni"] == str(net.provider_segmentation_id)
        for port_name in ports:
            assert state[leaf]["bindings"][port_name] == [str(vlan), ls]
    neutron.network.delete_port(port)
    wait_converged(fabric_lab, nothing_of(net.id))
    assert dynamic_vlans(fabric_lab, net.id) == []


def wait_status(neutron, port_id: str, status: str, timeout: float = CONVERGE_TIMEOUT) -> None:
    """Until the API shows the port in ``status``."""
    started = time.monotonic()
    while True:
        port = neutron.network.get_port(port_id)
        if port.status == status:
            return
        if time.monotonic() - started > timeout:
            raise AssertionError(f"port {port_id} not {status} in {timeout} s: {port.status}")
        time.sleep(0.05)


def test_a_port_is_active_once_the_leaves_carry_it(fabric_lab, neutron):
    """ACTIVE comes from neutron-periodic-workers (the fabric worker) once every leaf port
    of the cluster holds the network; never before.  A second port of the network,
    already carried, becomes ACTIVE too."""
    net = neutron.network.create_network(name=unique("status"))
    wanted = cluster_ports("DC0_C0")
    ports = []
    for _ in range(2):
        port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
        assert port.binding_vif_type == "dvs"
        wait_status(neutron, port.id, "ACTIVE")
        assert has_network(net.id, wanted)(snapshot(fabric_lab))
        ports.append(port)
    for port in ports:
        neutron.network.delete_port(port)
    neutron.network.delete_network(net)
    wait_converged(fabric_lab, nothing_of(net.id))


def test_ports_on_esxi_hosts_announce_their_macs(fabric_lab, neutron):
    a, b = topology.attachments()[0], topology.attachments()[1]
    assert a.leaf != b.leaf
    net = neutron.network.create_network(name=unique("macs"))
    pa = neutron.network.create_port(network_id=net.id, binding_host_id=a.esxi_host)
    pb = neutron.network.create_port(network_id=net.id, binding_host_id=b.esxi_host)
    ips = {leaf.name: leaf.tunnel_ip for leaf in topology.leaves()}
    ls = f"dvsf-{net.id}"

    def macs_in_place(state):
        try:
            on_a = state[a.leaf]["switches"][ls]["macs"]
            on_b = state[b.leaf]["switches"][ls]["macs"]
        except KeyError:
            return False
        return (f"{pb.mac_address} -> vxlan_over_ipv4/{ips[b.leaf]}" in on_a
                and f"{pa.mac_address} -> vxlan_over_ipv4/{ips[a.leaf]}" in on_b
                and f"unknown-dst -> vxlan_over_ipv4/{ips[b.leaf]}" in on_a)
    wait_converged(fabric_lab, macs_in_place)
    for port in (pa, pb):
        neutron.network.delete_port(port)
    neutron.network.delete_network(net)
    wait_converged(fabric_lab, nothing_of(net.id))


def test_two_ports_leaving_at_once_release_the_dynamic_segment(fabric_lab, neutron):
    net = neutron.network.create_network(name=unique("pair"))
    ports = [neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
             for _ in range(2)]
    dynamic_vlan(fabric_lab, net.id)

    def delete(port):
        connect(fabric_lab).network.delete_port(port)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(delete, ports))
    assert dynamic_vlans(fabric_lab, net.id) == []
    wait_converged(fabric_lab, nothing_of(net.id))


def test_leaf_down_for_30_s_then_back_converges(fabric_lab, neutron):
    net = neutron.network.create_network(name=unique("down"))
    ls = f"dvsf-{net.id}"
    fabric_lab.stop_leaf("leaf1")
    try:
        started = time.monotonic()
        neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
        # The leaves that answer are programmed meanwhile; leaf1 is retried.
        others = [leaf for leaf in cluster_ports("DC0_C0") if leaf != "leaf1"]

        def others_done(state):
            return all(ls in state[leaf]["switches"] for leaf in others)
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while True:
            view = {name: leaf for name, leaf in leaves(fabric_lab).items() if name != "leaf1"}
            done = all(ls in view[leaf].vtep_ctl("list-ls").split() for leaf in others)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done, "the leaves that answer were not programmed while leaf1 was down"
        time.sleep(max(0.0, 30 - (time.monotonic() - started)))
    finally:
        fabric_lab.start_leaf("leaf1")
    wait_converged(fabric_lab, has_network(net.id, cluster_ports("DC0_C0")))


def test_worker_killed_mid_batch_converges_without_duplicates(fabric_lab, neutron):
    nets = [neutron.network.create_network(name=unique("kill")) for _ in range(30)]
    conns = [connect(fabric_lab) for _ in range(4)]

    def bind(i):
        return conns[i % 4].network.create_port(network_id=nets[i].id,
                                                binding_host_id=HOST_C0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(bind, i) for i in range(len(nets))]
        time.sleep(1.0)
        killed = fabric_lab.kill_periodic_workers()
        results = [f.result() for f in futures]
    assert killed
    assert all(p.binding_vif_type == "dvs" for p in results)
    fabric_lab.start_periodic_worker()
    wanted = cluster_ports("DC0_C0")
    state = wait_converged(fabric_lab, lambda s: all(
        has_network(n.id, wanted)(s) for n in nets), timeout=60)
    # No duplicate rows: one logical switch per network and leaf, one locator per IP.
    for leaf, view in state.items():
        names = [ls for ls in view["switches"] if ls.startswith("dvsf-")]
        assert len(names) == len(set(names))
        assert view["rows"]["Logical_Switch"] == len(view["switches"])
        assert view["rows"]["Physical_Locator"] <= len(topology.leaves())


def test_two_worker_processes_reach_the_same_end_state(fabric_lab, neutron):
    fabric_lab.start_periodic_worker()
    nets = [neutron.network.create_network(name=unique("two")) for _ in range(20)]
    ports = []
    for i, net in enumerate(nets):
        ports.append(neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0))
    wanted = cluster_ports("DC0_C0")
    wait_converged(fabric_lab, lambda s: all(has_network(n.id, wanted)(s) for n in nets),
                   timeout=60)
    for port in ports[::2]:
        neutron.network.delete_port(port)
    gone = [n for i, n in enumerate(nets) if i % 2 == 0]
    kept = [n for i, n in enumerate(nets) if i % 2 == 1]
    state = wait_converged(fabric_lab, lambda s: all(nothing_of(n.id)(s) for n in gone)
                           and all(has_network(n.id, wanted)(s) for n in kept), timeout=60)
    for view in state.values():
        assert view["rows"]["Logical_Switch"] == len(view["switches"])


def test_a_leaf_refusing_is_failed_for_good_and_shown_by_dvs_fabric_journal(fabric_lab, neutron):
    """A foreign logical switch already holds our name on leaf1: never overwritten; the
    network's entry is marked failed and `dvs-fabric journal` shows why."""
    import json
    import subprocess
    import sys

    net = neutron.network.create_network(name=unique("clash"))
    leaf1 = leaves(fabric_lab)["leaf1"]
    leaf1.vtep_ctl("add-ls", f"dvsf-{net.id}")          # no ownership marker
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    command = [sys.executable, "-m", "networking_dvs_fabric.cmd.main", "--lab-dir",
               str(fabric_lab.dir), "journal", "--state", "failed", "--json"]
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    while True:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        failed = [r for r in json.loads(out.stdout) if r["resource_id"] == net.id]
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert failed, "the refused network never showed up as failed"
    assert "leaf1" in failed[0]["last_error"]
    assert neutron.network.get_port(port.id).status == "DOWN"      # not carried
    # The foreign switch is untouched (no marker added, no binding to it).
    assert leaf1.vtep_ctl("get", "Logical_Switch", f"dvsf-{net.id}",
                          "other_config").strip() == "{}"
