"""The benchmarks' observer of the leaves (``lab/leaf_watch.py``) against a real
ovsdb-server: it must tell when each binding and remote MAC came and went, from the
rows each update changed, and start over when its connection does."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from networking_dvs_fabric.fabric.api import LeafSpec, NetworkOnLeaf
from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
from networking_dvs_fabric.lab import leaves as lab_leaves
from networking_dvs_fabric.lab.leaf_watch import LeafWatch

pytestmark = pytest.mark.skipif(
    not (shutil.which("ovsdb-server") or shutil.which("/usr/sbin/ovsdb-server"))
    or not shutil.which("vtep-ctl") or not lab_leaves.VTEP_SCHEMA.exists(),
    reason="needs ovsdb-server, vtep-ctl and vtep.ovsschema "
           "(apt-get install openvswitch-switch openvswitch-vtep)")

IP_A, IP_B, IP_C = "192.0.2.1", "192.0.2.2", "192.0.2.3"
PORTS = ["eth1", "eth2"]
MAC = "fa:16:3e:00:00:01"


def _until(check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.02)
    return value


def net(name: str, vni: int, bindings: set, macs: set) -> NetworkOnLeaf:
    return NetworkOnLeaf(name, vni, frozenset(bindings), frozenset(macs),
                         frozenset({IP_B, IP_C}))


@pytest.fixture
def leaf(tmp_path: Path) -> Iterator[lab_leaves.LeafSwitch]:
    switch = lab_leaves.LeafSwitch("leaf-a", IP_A, tmp_path / "leaf-a", PORTS).start()
    yield switch
    switch.stop()


def test_bindings_and_macs_as_they_come_and_go(leaf):
    backend = HwvtepBackend([LeafSpec(leaf.name, leaf.ovsdb, leaf.tunnel_ip)],
                            connect_timeout=5.0, txn_timeout=30.0)
    watch = LeafWatch({"leaf-a": leaf.ovsdb}).start()
    try:
        one = ("leaf-a", "eth1", "dvsf-net-1")
        two = ("leaf-a", "eth2", "dvsf-net-1")
        other = ("leaf-a", "eth1", "dvsf-net-2")
        backend.converge("leaf-a", {
            "net-1": net("net-1", 5001, {("eth1", 101), ("eth2", 101)}, {(MAC, IP_B)}),
            "net-2": net("net-2", 5002, {("eth1", 102)}, set())})
        first = _until(lambda: watch.all_present_since([one, two, other]))
        assert watch.mac("leaf-a", "dvsf-net-1", MAC)[0] == IP_B
        # The MAC moves behind another leaf; eth2 leaves net-1: only those change.
        backend.converge("leaf-a", {
            "net-1": net("net-1", 5001, {("eth1", 101)}, {(MAC, IP_C)})})
        _until(lambda: not watch.present(two))
        assert watch.vanished_at(two) is not None and watch.present(one)
        assert watch.appeared_at(one) == watch.appeared_at(other) <= first
        assert _until(lambda: watch.mac("leaf-a", "dvsf-net-1", MAC)[0] == IP_C)
        # Back on eth2, on another VLAN: it appears again, later.
        backend.converge("leaf-a", {
            "net-1": net("net-1", 5001, {("eth1", 101), ("eth2", 201)}, {(MAC, IP_C)})})
        _until(lambda: watch.present(two))
        assert watch.appeared_at(two) > first
        # net-2 removed: its binding goes; its MACs (none) too.
        backend.converge("leaf-a", {"net-2": None})
        _until(lambda: not watch.present(other))
        assert watch.all_gone([other]) and watch.present(one)
        # The switch replaced by an empty one: the observer reconnects and sees nothing
        # held any more, then the bindings again once programmed.
        leaf.stop()
        leaf.start(fresh=True)
        _until(lambda: watch.all_gone([one, two]), timeout=20)
        assert watch.mac("leaf-a", "dvsf-net-1", MAC) is None
        backend.converge("leaf-a", {
            "net-1": net("net-1", 5001, {("eth1", 101)}, {(MAC, IP_B)})})
        _until(lambda: watch.present(one), timeout=20)
        assert not watch.present(two)
        assert _until(lambda: (watch.mac("leaf-a", "dvsf-net-1", MAC) or ("",))[0] == IP_B)
    finally:
        watch.stop()
        backend.close()


def test_an_update_costs_the_observer_what_it_changed(leaf, monkeypatch):
    """In pinned benchmarks the observer shares a CPU with the worker: one network
    bound must cost it as many row reads with 300 networks on the leaf as with 30 (it
    used to look at every binding and MAC the leaf holds on every update)."""
    import threading

    from ovs.db import idl as ovs_idl
    reads = {"n": 0}
    original = ovs_idl.Row.__getattr__

    def counted(row, name):
        if threading.current_thread().name == "leaf-watch-leaf-a":
            reads["n"] += 1
        return original(row, name)
    monkeypatch.setattr(ovs_idl.Row, "__getattr__", counted)
    backend = HwvtepBackend([LeafSpec(leaf.name, leaf.ovsdb, leaf.tunnel_ip)],
                            connect_timeout=5.0, txn_timeout=30.0)
    watch = LeafWatch({"leaf-a": leaf.ovsdb}).start()

    def one_more(i: int) -> int:
        key = ("leaf-a", "eth1", f"dvsf-probe-{i}")
        reads["n"] = 0
        backend.converge("leaf-a", {f"probe-{i}": net(
            f"probe-{i}", 9000 + i, {("eth1", 3000 + i)},
            {(f"fa:16:3e:01:00:{i:02x}", IP_B)})})
        _until(lambda: watch.present(key))
        time.sleep(0.3)             # any later update of the same change counted too
        return reads["n"]

    def fill(start: int, end: int) -> None:
        backend.converge("leaf-a", {f"net-{i}": net(
            f"net-{i}", 10000 + i, {(PORTS[i % 2], 1 + i)},
            {(f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}", IP_B)})
            for i in range(start, end)})
    def settled(last: int) -> None:
        # The observer has applied the fill (its last network) and what followed it:
        # a count started earlier would include the fill's own updates.
        _until(lambda: watch.present(("leaf-a", PORTS[last % 2], f"dvsf-net-{last}")))
        time.sleep(0.3)

    try:
        fill(0, 30)
        settled(29)
        small = one_more(1)
        fill(30, 300)
        settled(299)
        large = one_more(2)
        assert 0 < small and large == small, (small, large)
    finally:
        watch.stop()
        backend.close()
