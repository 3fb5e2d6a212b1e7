"""Logical switches of two deployments on one leaf (issue 12, item 1).

Two ``HwvtepBackend``s with different deployment ids share one real ovsdb-server,
as two Neutrons sharing a fabric do; a third without an id writes what versions
before deployment ids wrote (a "legacy" marker).  What is on the leaf is read back
with ``ovsdb-client dump``, not only through the backends.
"""
from __future__ import annotations

import uuid

import pytest

from networking_dvs_fabric.fabric.api import (DEPLOYMENT_KEY, LeafRejected, LeafSpec,
                                              LeafUnreachable)
from networking_dvs_fabric.fabric.hwvtep import HwvtepBackend
from test_fabric_hwvtep import (IP_A, IP_B, fabric_state, make_leaf, net,  # noqa: F401
                                pytestmark)

A, B = "deployment-a-" + uuid.uuid4().hex[:8], "deployment-b-" + uuid.uuid4().hex[:8]


@pytest.fixture
def leaf(make_leaf):  # noqa: F811 - the fixture imported above
    return make_leaf("leaf-a", IP_A, ["eth1", "eth2"])


@pytest.fixture
def backends(leaf):
    made = {}
    for name, deployment in (("a", A), ("b", B), ("legacy", None)):
        made[name] = HwvtepBackend([LeafSpec(leaf.name, leaf.ovsdb, leaf.tunnel_ip)],
                                   connect_timeout=5, txn_timeout=20,
                                   deployment=lambda d=deployment: d)
    yield made
    for backend in made.values():
        backend.close()


def _ids() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def test_each_deployment_sees_and_removes_only_its_own_switches(leaf, backends):
    ours, theirs = _ids()
    backends["a"].converge(leaf.name, {ours: net(ours, 5001, {("eth1", 101)})})
    backends["b"].converge(leaf.name, {theirs: net(theirs, 5002, {("eth1", 201)},
                                                   flood={IP_B})})
    state = fabric_state(leaf)
    assert state[f"dvsf-{ours}"]["other_config"][DEPLOYMENT_KEY] == A
    assert state[f"dvsf-{theirs}"]["other_config"][DEPLOYMENT_KEY] == B

    assert set(backends["a"].read(leaf.name)) == {ours}
    assert backends["a"].others(leaf.name) == {theirs: B}
    # A removing a network it does not have (as a repair of an "orphan" would) is a
    # no-op for B's switch of that id.
    backends["a"].converge(leaf.name, {theirs: None})
    state = fabric_state(leaf)
    assert state[f"dvsf-{theirs}"]["bindings"] == {("eth1", 201)}
    # B's binding is never taken by A, even for a network of A's.
    with pytest.raises(LeafRejected, match="does not own|deployment"):
        backends["a"].converge(leaf.name, {ours: net(ours, 5001, {("eth1", 201)})})
    assert fabric_state(leaf)[f"dvsf-{theirs}"]["bindings"] == {("eth1", 201)}
    # Nor is its switch adopted when A names the same network id.
    with pytest.raises(LeafRejected, match=f"belongs to deployment {B}"):
        backends["a"].converge(leaf.name, {theirs: net(theirs, 5002, {("eth2", 102)})})


def test_a_legacy_switch_is_adopted_by_the_deployment_that_wants_its_network(leaf, backends):
    kept, wanted = _ids()
    backends["legacy"].converge(leaf.name, {
        kept: net(kept, 5003, {("eth1", 103)}),
        wanted: net(wanted, 5004, {("eth2", 104)})})
    assert DEPLOYMENT_KEY not in fabric_state(leaf)[f"dvsf-{kept}"]["other_config"]
    assert backends["a"].others(leaf.name) == {kept: None, wanted: None}

    # Removal of a legacy switch by a deployment is refused silently (it may be
    # another cloud's): only the wanting deployment adopts it.
    backends["a"].converge(leaf.name, {kept: None})
    assert fabric_state(leaf)[f"dvsf-{kept}"]["bindings"] == {("eth1", 103)}
    backends["a"].converge(leaf.name, {wanted: net(wanted, 5004, {("eth2", 104)})})
    state = fabric_state(leaf)
    assert state[f"dvsf-{wanted}"]["other_config"][DEPLOYMENT_KEY] == A
    assert state[f"dvsf-{wanted}"]["uuid"]          # the same row, adopted in place
    assert backends["b"].others(leaf.name) == {kept: None, wanted: A}

    # The audit's adoption (a network A has that needs nothing on this leaf).
    assert backends["a"].adopt(leaf.name, {kept}) == [kept]
    assert fabric_state(leaf)[f"dvsf-{kept}"]["other_config"][DEPLOYMENT_KEY] == A
    backends["a"].converge(leaf.name, {kept: None})
    assert f"dvsf-{kept}" not in fabric_state(leaf)


def test_one_select_reads_the_leaf_as_the_replica_does(leaf, backends):
    """The audit's read of a leaf it keeps no replica of (``leaf_snapshot``): one
    ``select`` parsed with ``json``, giving what the replica gives - ours with their
    bindings, remote MACs and flooding lists; another deployment's and legacy
    switches apart; a hand-made switch nowhere."""
    ours, mine_too, theirs, old = (str(uuid.uuid4()) for _ in range(4))
    backends["a"].converge(leaf.name, {
        ours: net(ours, 5001, {("eth1", 101), ("eth2", 101)},
                  {("fa:16:3e:00:00:01", IP_B)}, {IP_B}),
        mine_too: net(mine_too, 5003, {("eth1", 103)})})
    backends["b"].converge(leaf.name, {theirs: net(theirs, 5002, {("eth1", 201)},
                                                   flood={IP_B})})
    backends["legacy"].converge(leaf.name, {old: net(old, 5004, {("eth2", 104)})})
    leaf.vtep_ctl("add-ls", "by-hand", "--", "set", "Logical_Switch", "by-hand",
                  "tunnel_key=9000")
    replica = backends["a"].read(leaf.name), backends["a"].others(leaf.name)
    assert set(replica[0]) == {ours, mine_too}
    assert replica[1] == {theirs: B, old: None}
    fresh = HwvtepBackend([LeafSpec(leaf.name, leaf.ovsdb, leaf.tunnel_ip)],
                          connect_timeout=5, txn_timeout=20, deployment=lambda: A)
    try:
        assert fresh.read_all(leaf.name) == replica
        assert not fresh._connection(leaf.name).is_open()   # no replica was opened
    finally:
        fresh.close()
    # With a replica kept, read_all reads it (and agrees).
    assert backends["a"].read_all(leaf.name) == replica


def test_one_select_of_a_stopped_leaf_is_unreachable_in_bounded_time(leaf):
    backend = HwvtepBackend([LeafSpec(leaf.name, leaf.ovsdb, leaf.tunnel_ip)],
                            connect_timeout=2, txn_timeout=5)
    leaf.stop()
    try:
        with pytest.raises(LeafUnreachable, match=leaf.name):
            backend.read_all(leaf.name)
    finally:
        backend.close()
