"""The hardware_vtep backend against real ovsdb-servers (one per leaf).

What the backend wrote is read back through a second path (``ovsdb-client
dump``), not only through the backend's own ``read``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from networking_dvs_fabric.fabric.api import (LeafRejected, LeafSpec, LeafUnreachable,
                                              NetworkOnLeaf, SslFiles)
from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
from networking_dvs_fabric.lab import leaves as lab_leaves
from networking_dvs_fabric.lab.procs import Daemon, free_port, pid_alive, port_open

pytestmark = pytest.mark.skipif(
    not (shutil.which("ovsdb-server") or shutil.which("/usr/sbin/ovsdb-server"))
    or not shutil.which("vtep-ctl") or not lab_leaves.VTEP_SCHEMA.exists(),
    reason="needs ovsdb-server, vtep-ctl and vtep.ovsschema "
           "(apt-get install openvswitch-switch openvswitch-vtep)")

IP_A, IP_B, IP_C = "192.0.2.1", "192.0.2.2", "192.0.2.3"
MAC1, MAC2 = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"


# -- reading a leaf with ovsdb-client -----------------------------------------
def _atoms(value: Any) -> list:
    """An OVSDB JSON set or atom as a list of plain values (uuids as strings)."""
    if isinstance(value, list) and value and value[0] == "set":
        return [v for item in value[1] for v in _atoms(item)]
    if isinstance(value, list) and value and value[0] in ("uuid", "named-uuid"):
        return [value[1]]
    return [value]


def _map(value: Any) -> dict:
    return {k: _atoms(v)[0] for k, v in value[1]}


def _dump(leaf: lab_leaves.LeafSwitch) -> dict[str, dict[str, dict]]:
    """Every table of the leaf: {table: {uuid: row}}."""
    out = subprocess.run(["ovsdb-client", "--timeout=10", "-f", "json", "dump", leaf.ovsdb,
                          "hardware_vtep"], capture_output=True, text=True, check=True).stdout
    tables = {}
    for line in out.splitlines():
        data = json.loads(line)
        rows = [dict(zip(data["headings"], row)) for row in data["data"]]
        tables[data["caption"].split()[0]] = {r["_uuid"][1]: r for r in rows}
    return tables


def fabric_state(leaf: lab_leaves.LeafSwitch) -> dict[str, dict]:
    """What the leaf holds per logical switch name, resolved through its rows."""
    db = _dump(leaf)
    locator = {u: r["dst_ip"] for u, r in db["Physical_Locator"].items()}
    state: dict[str, dict] = {}
    for uuid_, ls in db["Logical_Switch"].items():
        state[ls["name"]] = {"uuid": uuid_, "vni": (_atoms(ls["tunnel_key"]) or [None])[0],
                             "other_config": _map(ls["other_config"]),
                             "bindings": set(), "macs": set(), "flood": set()}
    by_uuid = {s["uuid"]: s for s in state.values()}
    for port in db["Physical_Port"].values():
        for vlan, ls_uuid in _map(port["vlan_bindings"]).items():
            by_uuid[ls_uuid]["bindings"].add((port["name"], vlan))
    for mac in db["Ucast_Macs_Remote"].values():
        by_uuid[_atoms(mac["logical_switch"])[0]]["macs"].add(
            (mac["MAC"], locator[_atoms(mac["locator"])[0]]))
    for mac in db["Mcast_Macs_Remote"].values():
        lset = db["Physical_Locator_Set"][_atoms(mac["locator_set"])[0]]
        by_uuid[_atoms(mac["logical_switch"])[0]]["flood"].add(
            (mac["MAC"], frozenset(locator[u] for u in _atoms(lset["locators"]))))
    return state


def _memory(leaf: lab_leaves.LeafSwitch) -> str:
    """The server's own memory/session counters (ovs-appctl memory/show)."""
    return subprocess.run(["ovs-appctl", "-t", str(leaf.ctl_path), "memory/show"],
                          capture_output=True, text=True, check=True).stdout


def net(network_id: str, vni: int, bindings=(), macs=(), flood=()) -> NetworkOnLeaf:
    return NetworkOnLeaf(network_id, vni, frozenset(bindings), frozenset(macs),
                         frozenset(flood))


# -- fixtures -----------------------------------------------------------------
@pytest.fixture
def make_leaf(tmp_path: Path) -> Iterator:
    started: list[lab_leaves.LeafSwitch] = []

    def make(name: str, tunnel_ip: str, ports: list[str], port: int = 0,
             workdir: Path | None = None) -> lab_leaves.LeafSwitch:
        leaf = lab_leaves.LeafSwitch(name, tunnel_ip, workdir or tmp_path / name, ports,
                                     port=port)
        started.append(leaf)
        return leaf.start()

    yield make
    for leaf in started:
        leaf.stop()
    assert not any(leaf.pid and pid_alive(leaf.pid) for leaf in started)


@pytest.fixture
def make_backend() -> Iterator:
    made: list[HwvtepBackend] = []
    threads_before = set(threading.enumerate())

    def make(*leaves: lab_leaves.LeafSwitch, connect_timeout: float = 5.0) -> HwvtepBackend:
        backend = HwvtepBackend([LeafSpec(leaf.name, leaf.ovsdb, leaf.tunnel_ip)
                                 for leaf in leaves], connect_timeout=connect_timeout,
                                txn_timeout=20.0)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
    # close() stopped every connection thread this test started.
    assert set(threading.enumerate()) - threads_before == set()


@pytest.fixture
def leaf_a(make_leaf):
    return make_leaf("leaf-a", IP_A, ["eth1", "eth2", "eth3"])


@pytest.fixture
def backend_a(make_backend, leaf_a) -> HwvtepBackend:
    return make_backend(leaf_a)


# -- tests --------------------------------------------------------------------
def test_create_on_two_leaves_with_vnis_and_bindings(make_leaf, make_backend):
    a = make_leaf("leaf-a", IP_A, ["eth1", "eth2"])
    b = make_leaf("leaf-b", IP_B, ["swp1"])
    backend = make_backend(a, b)
    res_a = backend.converge("leaf-a", {"n1": net("n1", 5001, [("eth1", 101), ("eth2", 101)]),
                                        "n2": net("n2", 5002, [("eth1", 102)])})
    res_b = backend.converge("leaf-b", {"n1": net("n1", 5001, [("swp1", 201)])})
    assert (res_a.transactions, res_b.transactions) == (1, 1)
    state_a, state_b = fabric_state(a), fabric_state(b)
    assert state_a["dvsf-n1"]["vni"] == 5001 and state_a["dvsf-n2"]["vni"] == 5002
    assert state_a["dvsf-n1"]["bindings"] == {("eth1", 101), ("eth2", 101)}
    assert state_a["dvsf-n2"]["bindings"] == {("eth1", 102)}
    assert state_a["dvsf-n1"]["other_config"] == {"managed-by": "networking-dvs-fabric",
                                                  "network-id": "n1"}
    assert set(state_b) == {"dvsf-n1"}
    assert state_b["dvsf-n1"]["bindings"] == {("swp1", 201)}
    assert b.vtep_ctl("list-bindings", "leaf-b", "swp1").split() == ["0201", "dvsf-n1"]
    assert backend.read("leaf-b") == {"n1": net("n1", 5001, [("swp1", 201)])}


def test_two_leaves_in_one_process_use_two_servers(make_leaf, make_backend):
    a = make_leaf("leaf-a", IP_A, ["eth1"])
    b = make_leaf("leaf-b", IP_B, ["swp1", "swp2"])
    backend = make_backend(a, b)
    # ovsdbapp keeps one connection per API class: the second leaf must not reuse it.
    assert backend.ports("leaf-a") == {"eth1"}
    assert backend.ports("leaf-b") == {"swp1", "swp2"}
    backend.converge("leaf-a", {"na": net("na", 1, [("eth1", 10)])})
    backend.converge("leaf-b", {"nb": net("nb", 2, [("swp2", 20)])})
    assert set(fabric_state(a)) == {"dvsf-na"}
    assert set(fabric_state(b)) == {"dvsf-nb"}
    assert set(backend.read("leaf-a")) == {"na"} and set(backend.read("leaf-b")) == {"nb"}
    # Each server has exactly one client session: the backend's own for that leaf.
    for leaf in (a, b):
        assert "sessions:1" in _memory(leaf).split()
    b.stop()
    with pytest.raises(LeafUnreachable):
        backend.read("leaf-b")
    assert set(backend.read("leaf-a")) == {"na"}


def test_vlan_reused_on_two_ports_for_different_networks(leaf_a, backend_a):
    backend_a.converge("leaf-a", {"n1": net("n1", 7001, [("eth1", 100)]),
                                  "n2": net("n2", 7002, [("eth2", 100)])})
    state = fabric_state(leaf_a)
    assert state["dvsf-n1"]["bindings"] == {("eth1", 100)}
    assert state["dvsf-n2"]["bindings"] == {("eth2", 100)}
    # Moving VLAN 100 on eth1 from n1 to n2 in one call is allowed.
    res = backend_a.converge("leaf-a", {"n1": net("n1", 7001),
                                        "n2": net("n2", 7002, [("eth1", 100), ("eth2", 100)])})
    assert res.transactions == 1
    state = fabric_state(leaf_a)
    assert state["dvsf-n1"]["bindings"] == set()
    assert state["dvsf-n2"]["bindings"] == {("eth1", 100), ("eth2", 100)}


def test_remote_macs_and_flood_list_change_and_go(leaf_a, backend_a):
    n1 = net("n1", 5000, [("eth1", 100)], macs=[(MAC1, IP_B), (MAC2, IP_C)],
             flood=[IP_B, IP_C])
    backend_a.converge("leaf-a", {"n1": n1})
    state = fabric_state(leaf_a)["dvsf-n1"]
    assert state["macs"] == {(MAC1, IP_B), (MAC2, IP_C)}
    assert state["flood"] == {("unknown-dst", frozenset({IP_B, IP_C}))}
    assert backend_a.read("leaf-a") == {"n1": n1}

    # MAC1 moves behind leaf C, MAC2 leaves, B leaves the flood list.
    n1b = net("n1", 5000, [("eth1", 100)], macs=[(MAC1, IP_C)], flood=[IP_C])
    res = backend_a.converge("leaf-a", {"n1": n1b})
    assert res.transactions == 1 and res.changes == 3
    state = fabric_state(leaf_a)["dvsf-n1"]
    assert state["macs"] == {(MAC1, IP_C)}
    assert state["flood"] == {("unknown-dst", frozenset({IP_C}))}
    # Locators are reused, one per tunnel IP (they are indexed: duplicates are refused).
    dst_ips = [r["dst_ip"] for r in _dump(leaf_a)["Physical_Locator"].values()]
    assert sorted(dst_ips) == [IP_C]

    backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)])})
    state = fabric_state(leaf_a)["dvsf-n1"]
    assert state["macs"] == set() and state["flood"] == set()
    assert state["bindings"] == {("eth1", 100)}
    db = _dump(leaf_a)
    assert not db["Ucast_Macs_Remote"] and not db["Mcast_Macs_Remote"]


def test_second_converge_sends_nothing(leaf_a, backend_a):
    desired = {"n1": net("n1", 5000, [("eth1", 100)], [(MAC1, IP_B)], [IP_B]),
               "n2": net("n2", 5001, [("eth2", 100), ("eth3", 300)], flood=[IP_B, IP_C])}
    first = backend_a.converge("leaf-a", desired)
    before = _dump(leaf_a)
    second = backend_a.converge("leaf-a", desired)
    assert (first.transactions, second.transactions) == (1, 0)
    assert second.changes == 0
    assert _dump(leaf_a) == before
    gone = {"n1": None, "n2": None}
    assert backend_a.converge("leaf-a", gone).transactions == 1
    assert backend_a.converge("leaf-a", gone).transactions == 0


def test_switches_replicate_floods_to_every_listed_leaf(leaf_a, backend_a):
    # source_node: the leaf copies BUM frames to every tunnel IP of the flooding list;
    # the schema's default (service_node) would send one copy to the first IP only.
    backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)],
                                            flood=[IP_B, IP_C])})
    mode = leaf_a.vtep_ctl("get", "Logical_Switch", "dvsf-n1", "replication_mode").strip()
    assert mode == "source_node"
    # A switch of ours left without it (an older release) gets it on the next converge.
    leaf_a.vtep_ctl("clear", "Logical_Switch", "dvsf-n1", "replication_mode")
    # The backend plans on its replica of the leaf's database, which hears of the
    # change a moment later (seen to lag on a loaded machine): wait for it.
    api = backend_a._connection("leaf-a").api()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            list(ls.replication_mode) for ls in api.tables["Logical_Switch"].rows.values()
            if ls.name == "dvsf-n1"):
        time.sleep(0.02)
    res = backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)],
                                                  flood=[IP_B, IP_C])})
    assert res.changes == 1
    assert leaf_a.vtep_ctl("get", "Logical_Switch", "dvsf-n1",
                           "replication_mode").strip() == "source_node"


def test_vni_change_updates_tunnel_key(leaf_a, backend_a):
    backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)])})
    uuid_before = fabric_state(leaf_a)["dvsf-n1"]["uuid"]
    res = backend_a.converge("leaf-a", {"n1": net("n1", 6000, [("eth1", 100)])})
    assert (res.transactions, res.changes) == (1, 1)
    state = fabric_state(leaf_a)["dvsf-n1"]
    assert state["vni"] == 6000 and state["uuid"] == uuid_before


def test_removal_leaves_foreign_rows_alone(leaf_a, backend_a):
    leaf_a.vtep_ctl("add-ls", "foreign", "--", "set", "Logical_Switch", "foreign",
                    "tunnel_key=9000")
    leaf_a.vtep_ctl("bind-ls", "leaf-a", "eth2", "100", "foreign")
    leaf_a.vtep_ctl("add-ucast-remote", "foreign", MAC2, IP_C)
    backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)], [(MAC1, IP_B)],
                                            [IP_B])})
    # A network the call does not name stays too.
    backend_a.converge("leaf-a", {"n2": net("n2", 5002, [("eth3", 100)])})
    res = backend_a.converge("leaf-a", {"n1": None})
    assert res.transactions == 1 and res.switch_removal_pending == set()
    state = fabric_state(leaf_a)
    assert set(state) == {"foreign", "dvsf-n2"}
    assert state["foreign"]["bindings"] == {("eth2", 100)}
    assert state["foreign"]["macs"] == {(MAC2, IP_C)} and state["foreign"]["vni"] == 9000
    assert state["dvsf-n2"]["bindings"] == {("eth3", 100)}
    assert set(backend_a.read("leaf-a")) == {"n2"}


def test_foreign_binding_conflict_is_rejected_and_nothing_written(leaf_a, backend_a):
    leaf_a.vtep_ctl("add-ls", "foreign")
    leaf_a.vtep_ctl("bind-ls", "leaf-a", "eth1", "100", "foreign")
    before = _dump(leaf_a)
    with pytest.raises(LeafRejected) as err:
        backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth2", 100), ("eth1", 100)],
                                                flood=[IP_B]),
                                      "n2": net("n2", 5001, [("eth3", 200)])})
    assert "leaf-a" in str(err.value) and "eth1" in str(err.value) and "100" in str(err.value)
    assert _dump(leaf_a) == before
    assert fabric_state(leaf_a)["foreign"]["bindings"] == {("eth1", 100)}


def test_unknown_port_is_rejected(leaf_a, backend_a):
    with pytest.raises(LeafRejected, match="leaf-a.*eth9"):
        backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth9", 100)])})
    assert "dvsf-n1" not in fabric_state(leaf_a)


def test_local_mac_keeps_switch_until_it_is_gone(leaf_a, backend_a):
    backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)], [(MAC1, IP_B)],
                                            [IP_B])})
    # The switch itself learnt a MAC on this logical switch.
    leaf_a.vtep_ctl("add-ucast-local", "dvsf-n1", MAC2, IP_A)
    res = backend_a.converge("leaf-a", {"n1": None})
    assert res.switch_removal_pending == {"n1"} and res.transactions == 1
    state = fabric_state(leaf_a)
    assert state["dvsf-n1"]["bindings"] == set() and state["dvsf-n1"]["macs"] == set()
    assert state["dvsf-n1"]["flood"] == set()
    again = backend_a.converge("leaf-a", {"n1": None})
    assert again.switch_removal_pending == {"n1"} and again.transactions == 0

    leaf_a.vtep_ctl("del-ucast-local", "dvsf-n1", MAC2)
    res = _converge_when_seen(backend_a, "leaf-a", {"n1": None},
                              lambda r: not r.switch_removal_pending)
    assert res.transactions == 1
    assert "dvsf-n1" not in fabric_state(leaf_a)


def _converge_when_seen(backend, leaf, desired, ok, timeout: float = 5.0):
    """Converge until ``ok(result)``: the replica learns of a vtep-ctl write asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        res = backend.converge(leaf, desired)
        if ok(res) or time.monotonic() > deadline:
            return res
        time.sleep(0.05)


def test_stopped_leaf_is_unreachable_in_bounded_time(make_leaf, make_backend):
    nothing = lab_leaves.LeafSwitch("leaf-z", IP_C, Path("/nonexistent"), [],
                                    port=free_port())
    leaf = make_leaf("leaf-a", IP_A, ["eth1"])
    backend = make_backend(leaf, nothing, connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(LeafUnreachable, match=f"leaf-z.*{nothing.ovsdb}"):
        backend.read("leaf-z")
    assert time.monotonic() - started < 3.0

    backend.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)])})
    leaf.stop()
    # The connection's thread sees the server's end a moment after it: a read served
    # from the replica meanwhile is right.  Within the bound, the leaf is unreachable.
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        try:
            backend.read("leaf-a")
        except LeafUnreachable:
            break
        time.sleep(0.05)
    for call in (lambda: backend.read("leaf-a"),
                 lambda: backend.converge("leaf-a", {"n1": None}),
                 lambda: backend.ports("leaf-a")):
        started = time.monotonic()
        with pytest.raises(LeafUnreachable, match=f"leaf-a.*{leaf.ovsdb}"):
            call()
        assert time.monotonic() - started < 3.0


def test_restart_with_empty_db_recreates_everything(make_leaf, make_backend, tmp_path):
    leaf = make_leaf("leaf-a", IP_A, ["eth1", "eth2"])
    backend = make_backend(leaf)
    desired = {"n1": net("n1", 5000, [("eth1", 100)], [(MAC1, IP_B)], [IP_B]),
               "n2": net("n2", 5001, [("eth2", 200)])}
    backend.converge("leaf-a", desired)
    port = leaf.port
    leaf.stop()
    leaf.db_path.unlink()
    again = make_leaf("leaf-a", IP_A, ["eth1", "eth2"], port=port, workdir=leaf.workdir)
    assert fabric_state(again) == {}
    res = _converge_when_seen(backend, "leaf-a", desired, lambda r: r.transactions == 1)
    assert res.transactions == 1
    state = fabric_state(again)
    assert state["dvsf-n1"]["bindings"] == {("eth1", 100)}
    assert state["dvsf-n1"]["macs"] == {(MAC1, IP_B)}
    assert state["dvsf-n2"]["bindings"] == {("eth2", 200)} and state["dvsf-n2"]["vni"] == 5001
    assert backend.converge("leaf-a", desired).transactions == 0


def test_unix_socket_endpoint(make_leaf, make_backend, tmp_path):
    leaf = make_leaf("leaf-a", IP_A, ["eth1"])
    sock = tmp_path / "db.sock"
    subprocess.run(["ovs-appctl", "-t", str(leaf.ctl_path), "ovsdb-server/add-remote",
                    f"punix:{sock}"], check=True, capture_output=True)
    deadline = time.monotonic() + 5
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    backend = HwvtepBackend([LeafSpec("leaf-a", f"unix:{sock}", IP_A)], connect_timeout=5)
    try:
        backend.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)])})
        assert fabric_state(leaf)["dvsf-n1"]["bindings"] == {("eth1", 100)}
    finally:
        backend.close()


def test_thousand_networks_in_one_transaction(make_leaf, make_backend):
    leaf = make_leaf("leaf-a", IP_A, ["eth1", "eth2"])
    backend = make_backend(leaf)
    desired = {f"net-{i:04d}": net(f"net-{i:04d}", 10000 + i, [(f"eth{1 + i % 2}", 1 + i)])
               for i in range(1000)}
    started = time.monotonic()
    res = backend.converge("leaf-a", desired)
    took = time.monotonic() - started
    print(f"\n1000 networks (logical switch + binding each) on one leaf: {took:.2f} s, "
          f"{res.changes} changes, {res.transactions} transaction(s)")
    assert res.transactions == 1 and res.changes == 2000
    state = fabric_state(leaf)
    assert len(state) == 1000
    assert state["dvsf-net-0999"]["bindings"] == {("eth2", 1000)}
    assert state["dvsf-net-0999"]["vni"] == 10999
    started = time.monotonic()
    assert backend.converge("leaf-a", desired).transactions == 0
    print(f"second converge (no change): {time.monotonic() - started:.2f} s")


def test_transaction_error_becomes_leaf_rejected_with_ovsdb_text(leaf_a, backend_a):
    backend_a.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)], [(MAC1, IP_B)])})
    # Someone attached our logical switch to a router: the server refuses to delete it.
    leaf_a.vtep_ctl("--", "--id=@ls", "get", "Logical_Switch", "dvsf-n1", "_uuid",
                    "--", "create", "Logical_Router", "name=lr1",
                    'switch_binding:"10.0.0.0/24"=@ls')
    before = _dump(leaf_a)
    with pytest.raises(LeafRejected, match="leaf-a.*referential integrity violation"):
        backend_a.converge("leaf-a", {"n1": None})
    assert _dump(leaf_a) == before   # all or nothing: the MAC and binding are still there


def _self_signed_for_both_ends(directory: Path) -> SslFiles:
    """One RSA key and a self-signed CA certificate usable by server and client."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SslFiles(str(key_path), str(cert_path), str(cert_path))


def test_ssl_endpoint(make_leaf, tmp_path):
    # The lab leaf builds the database (switch, ports); then the same database is
    # served over SSL only, and read back over TCP afterwards.
    leaf = make_leaf("leaf-a", IP_A, ["eth1"])
    leaf.stop()
    files = _self_signed_for_both_ends(tmp_path)
    port = free_port()
    server = Daemon(name="ovsdb-server-ssl", log_path=tmp_path / "ssl-server.log",
                    cwd=tmp_path, argv=[
                        shutil.which("ovsdb-server") or "/usr/sbin/ovsdb-server",
                        f"--remote=pssl:{port}:127.0.0.1", f"--private-key={files.private_key}",
                        f"--certificate={files.certificate}", f"--ca-cert={files.ca_cert}",
                        f"--unixctl={tmp_path / 'ssl.ctl'}", "--no-chdir", "-vfile:off",
                        str(leaf.db_path)]).start()
    backend = HwvtepBackend([LeafSpec("leaf-a", f"ssl:127.0.0.1:{port}", IP_A, ssl=files)],
                            connect_timeout=5)
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.05)
        res = backend.converge("leaf-a", {"n1": net("n1", 5000, [("eth1", 100)])})
        assert res.transactions == 1
        assert backend.read("leaf-a") == {"n1": net("n1", 5000, [("eth1", 100)])}
        # The audit's one-shot read (no replica) goes over SSL too.
        backend.close()
        assert backend.read_all("leaf-a") == ({"n1": net("n1", 5000, [("eth1", 100)])}, {})
    finally:
        backend.close()
        server.stop()
    assert not pid_alive(server.pid)
    again = make_leaf("leaf-a", IP_A, ["eth1"], workdir=leaf.workdir)
    assert fabric_state(again)["dvsf-n1"]["bindings"] == {("eth1", 100)}
