"""The lab's leaf switches: hardware_vtep ovsdb-servers owned by pid."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from networking_dvs_fabric.lab import leaves as lab_leaves
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.procs import pid_alive

pytestmark = pytest.mark.skipif(
    not (shutil.which("ovsdb-server") or shutil.which("/usr/sbin/ovsdb-server"))
    or not shutil.which("vtep-ctl") or not lab_leaves.VTEP_SCHEMA.exists(),
    reason="needs ovsdb-server, vtep-ctl and vtep.ovsschema "
           "(apt-get install openvswitch-switch openvswitch-vtep)")


def _dump(ovsdb: str) -> dict:
    """Global, Physical_Switch and Physical_Port as read by ovsdb-client."""
    tables = {}
    for table in ("Global", "Physical_Switch", "Physical_Port"):
        out = subprocess.run(
            ["ovsdb-client", "--timeout=5", "-f", "json", "dump", ovsdb,
             "hardware_vtep", table],
            capture_output=True, text=True, check=True).stdout
        data = json.loads(out)
        tables[table] = [dict(zip(data["headings"], row)) for row in data["data"]]
    return tables


def _set(value) -> list:
    """Decode an OVSDB JSON set/atom into a plain list."""
    if isinstance(value, list) and value and value[0] == "set":
        return [_set(v)[0] for v in value[1]]
    if isinstance(value, list) and value and value[0] == "uuid":
        return [value[1]]
    return [value]


@pytest.fixture
def leaves(tmp_path):
    started = lab_leaves.start_lab_leaves(tmp_path)
    yield started
    for leaf in started:
        leaf.stop()


def _expected_ports() -> dict[str, list[str]]:
    """The ESXi hosts' ports from the attachments, plus the agent hosts' (KVM, network
    node)."""
    ports: dict[str, list[str]] = {}
    for att in topology.attachments():
        ports.setdefault(att.leaf, []).append(att.port)
    for links in topology.AGENT_HOSTS.values():
        for leaf, port in links:
            ports.setdefault(leaf, []).append(port)
    return ports


def _check_leaf(leaf, tunnel_ip: str, ports: list[str]) -> None:
    tables = _dump(leaf.ovsdb)
    switches = tables["Physical_Switch"]
    assert [s["name"] for s in switches] == [leaf.name]
    switch = switches[0]
    assert _set(switch["tunnel_ips"]) == [tunnel_ip]
    port_uuids = set(_set(switch["ports"]))
    by_uuid = {p["_uuid"][1]: p["name"] for p in tables["Physical_Port"]}
    assert sorted(by_uuid[u] for u in port_uuids) == sorted(ports)
    assert len(tables["Physical_Port"]) == len(ports)
    (glob,) = tables["Global"]
    assert _set(glob["switches"]) == [switch["_uuid"][1]]


def test_lab_leaves_have_switch_tunnel_ip_and_ports(leaves):
    expected = _expected_ports()
    tunnel_ips = {leaf.name: leaf.tunnel_ip for leaf in topology.leaves()}
    assert [leaf.name for leaf in leaves] == list(topology.LEAF_NAMES)
    assert len({leaf.ovsdb for leaf in leaves}) == 3
    for leaf in leaves:
        assert leaf.ovsdb.startswith("tcp:127.0.0.1:")
        assert pid_alive(leaf.pid)
        assert leaf.tunnel_ip == tunnel_ips[leaf.name]
        _check_leaf(leaf, tunnel_ips[leaf.name], expected[leaf.name])


def test_start_is_idempotent_and_restart_keeps_rows(leaves):
    leaf = leaves[0]
    ports = list(leaf.ports)
    # A row the lab did not create: must survive the restart.
    leaf.vtep_ctl("add-ls", "ls-test")
    pid = leaf.pid
    leaf.start()  # already running: same process, rows re-asserted, no duplicates
    assert leaf.pid == pid
    _check_leaf(leaf, leaf.tunnel_ip, ports)

    state = json.loads(json.dumps(leaf.to_json()))
    leaf.stop()
    assert not pid_alive(pid)

    again = lab_leaves.LeafSwitch.from_json(state)
    again.start()
    try:
        assert again.pid != pid and pid_alive(again.pid)
        assert again.ovsdb == state["ovsdb"]
        _check_leaf(again, leaf.tunnel_ip, ports)
        assert again.vtep_ctl("list-ls").split() == ["ls-test"]
    finally:
        again.stop()
    assert not pid_alive(again.pid)


def test_stop_leaves_no_process(tmp_path):
    # A workdir too deep for a unix socket path: control sockets go elsewhere.
    started = lab_leaves.start_lab_leaves(tmp_path / ("d" * 60) / ("e" * 60))
    pids = [leaf.pid for leaf in started]
    assert all(pid_alive(pid) for pid in pids)
    # Stopping through the state file (another process's view) works by pid.
    restored = [lab_leaves.LeafSwitch.from_json(leaf.to_json()) for leaf in started]
    for leaf in restored:
        leaf.stop()
    assert not any(pid_alive(pid) for pid in pids)
    for leaf in started:
        leaf.stop()  # second stop is a no-op
        assert not leaf.running()
