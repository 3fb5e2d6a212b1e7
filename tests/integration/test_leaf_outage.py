"""A leaf down for a while holds nothing back on the leaves that answer (issue 12 item 4).

The lab (MariaDB, fabric_hwvtep + vsphere_dvs) runs with five VLANs on the DVS's
physical network, so the VLANs networks give back are handed out again at once.
leaf3's ovsdb-server is stopped; 50 networks are created, bound to ESXi hosts
behind leaf1 and leaf2 (some on both), deleted and replaced while it is down.
leaf1 and leaf2 must then hold exactly what Neutron says, with no journal entry
failed; leaf3 must be right within a minute of coming back (it had a network,
deleted during the outage).  Leaves are read with ``vtep-ctl``; ``dvs-fabric
audit --json`` is what an operator would run; the journal is read from MariaDB.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.leaves import LeafSwitch
from tests.integration.conftest import connect, unique
from tests.integration.test_faults import audit, query

VLANS = (100, 104)
NETWORKS = 50
CLIENTS = 4                     # each keeps one network: at most 4 hold a VLAN at once
UP, DOWN = ("leaf1", "leaf2"), "leaf3"
# ESXi hosts behind the leaves that stay up (one leaf port each), and one behind leaf3.
BEHIND = {a.esxi_host: (a.leaf, a.port) for a in topology.attachments()}
UP_HOSTS = sorted(h for h, (leaf, _) in BEHIND.items() if leaf in UP)
DOWN_HOST = next(h for h, (leaf, _) in sorted(BEHIND.items()) if leaf == DOWN)
CONVERGE = 120.0                # leaf1/leaf2 while leaf3 is down (each pass waits for it)
BACK = 60.0                     # leaf3 after it is back


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab-outage")
    lab = Lab(directory)
    ranges = (f"{topology.PHYSICAL_NETWORK}:{VLANS[0]}:{VLANS[1]},"
              f"{topology.KVM_PHYSICAL_NETWORK}:{topology.VLAN_RANGE[0]}:"
              f"{topology.VLAN_RANGE[1]}")
    try:
        lab.up(mechanism_drivers="fabric_hwvtep,vsphere_dvs", db="mariadb",
               extra_config={"ml2_type_vlan": {"network_vlan_ranges": ranges}})
        yield lab
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)


def leaf(lab: Lab, name: str) -> LeafSwitch:
    return lab.leaf(name)


def holding(lab: Lab, name: str) -> dict[str, object]:
    """What a leaf holds as vtep-ctl shows it: switch names and per port VLAN -> switch."""
    switch = leaf(lab, name)
    bound = {port: switch.bindings(port) for port in switch.ports}
    return {"switches": set(switch.vtep_ctl("list-ls").split()),
            "bindings": {port: vlans for port, vlans in bound.items() if vlans}}


def expected(live: dict[str, dict[str, str]], vlans: dict[str, int], name: str) -> dict:
    """What Neutron says ``name`` must hold: live networks' switches and bindings."""
    switches, bound = set(), {}
    for network_id, ports in live.items():
        for host in ports.values():
            at, port = BEHIND[host]
            if at == name:
                switches.add(f"dvsf-{network_id}")
                bound.setdefault(port, {})[vlans[network_id]] = f"dvsf-{network_id}"
    return {"switches": switches, "bindings": bound}


def failed_entries(lab: Lab) -> list[tuple]:
    return query(lab, "SELECT resource_id, last_error FROM dvs_fabric_journal "
                      "WHERE state = 'failed'")


def vlans_of(lab: Lab, network_ids: list[str]) -> dict[str, int]:
    out = {}
    for network_id in network_ids:
        rows = query(lab, "SELECT segmentation_id FROM networksegments WHERE network_id=%s "
                          "AND is_dynamic=1 AND physical_network=%s",
                     (network_id, topology.PHYSICAL_NETWORK))
        assert len(rows) == 1, (network_id, rows)
        out[network_id] = rows[0][0]
    return out


def wait_for(what: str, check, timeout: float, detail) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout:.0f} s: {detail()}")
        time.sleep(1.0)
    return time.monotonic() - started


def leaf_drifts(report: dict, leaves: tuple[str, ...]) -> list[dict]:
    return [d for d in report.get("drifts", []) if d["where"] in {f"leaf {n}" for n in leaves}]


def test_leaf_down_for_long_holds_nothing_back_on_the_leaves_that_answer(lab):
    neutron = connect(lab)
    # leaf3 has a network (also on leaf1), deleted while leaf3 is down.
    doomed = neutron.network.create_network(name=unique("doomed"))
    doomed_ports = [neutron.network.create_port(network_id=doomed.id, binding_host_id=host)
                    for host in (DOWN_HOST, UP_HOSTS[0])]
    wait_for("the first network on leaf3", lambda: f"dvsf-{doomed.id}" in holding(
        lab, DOWN)["switches"], 30, lambda: holding(lab, DOWN))

    lab.stop_leaf(DOWN)
    for port in doomed_ports:
        neutron.network.delete_port(port)
    neutron.network.delete_network(doomed)

    live: dict[str, dict[str, str]] = {}         # network id -> {port id: ESXi host}
    lock = threading.Lock()
    created = iter(range(NETWORKS))
    errors: list[str] = []

    def client(index: int) -> None:
        conn = connect(lab)
        mine: deque[str] = deque()
        while True:
            with lock:
                i = next(created, None)
            if i is None:
                return
            try:
                if mine:                               # give a VLAN back first
                    gone = mine.popleft()
                    with lock:
                        ports = live.pop(gone)
                    for port_id in ports:
                        conn.network.delete_port(port_id)
                    conn.network.delete_network(gone)
                net = conn.network.create_network(name=unique(f"outage{i}"))
                hosts = [UP_HOSTS[i % len(UP_HOSTS)]]
                if i % 3 == 0:                          # on leaf1 and leaf2 at once
                    hosts.append(next(h for h in UP_HOSTS if BEHIND[h][0] != BEHIND[
                        hosts[0]][0]))
                ports = {}
                for host in hosts:
                    port = conn.network.create_port(network_id=net.id, binding_host_id=host)
                    assert port.binding_vif_type == "dvs", (i, host, port.binding_vif_type)
                    ports[port.id] = host
                mine.append(net.id)
                with lock:
                    live[net.id] = ports
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(f"network {i}: {type(exc).__name__}: {str(exc)[:300]}")
                return

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    churn = time.monotonic() - started
    assert errors == []
    vlans = vlans_of(lab, sorted(live))
    print(f"{NETWORKS} networks through {VLANS[1] - VLANS[0] + 1} VLANs in {churn:.0f} s; "
          f"live {len(live)} on VLANs {sorted(vlans.values())}")

    def up_right() -> bool:
        return all(holding(lab, name) == expected(live, vlans, name) for name in UP)
    took = wait_for("leaf1 and leaf2 as Neutron says while leaf3 is down", up_right,
                    CONVERGE, lambda: {n: (holding(lab, n), expected(live, vlans, n))
                                       for n in UP} | {"failed": failed_entries(lab)})
    code, report = audit(lab)
    assert code == 2 and report["unreachable"], report        # leaf3, and only that
    assert all(DOWN in text for text in report["unreachable"]), report
    assert leaf_drifts(report, UP) == [], json.dumps(report)[:3000]
    assert failed_entries(lab) == []
    print(f"leaf1 and leaf2 right {took:.0f} s after the last API call")

    lab.start_leaf(DOWN)

    def all_right() -> bool:
        return all(holding(lab, name) == expected(live, vlans, name) for name in UP + (DOWN,))
    took = wait_for("every leaf as Neutron says after leaf3 came back", all_right, BACK,
                    lambda: {n: (holding(lab, n), expected(live, vlans, n))
                             for n in UP + (DOWN,)})
    print(f"leaf3 right {took:.0f} s after it came back")
    # VNIs, remote MACs and flooding lists too, as the operator's audit sees them.
    code, report = audit(lab)
    assert not report["unreachable"] and leaf_drifts(report, UP + (DOWN,)) == [], \
        json.dumps(report)[:3000]
    assert failed_entries(lab) == []
