"""Two worker processes on one leaf: a rebind racing a removal ends right.

Two ``HwvtepBackend`` instances are two processes' OVSDB connections, each with its
own replica, on one real ovsdb-server.  Worker A removes network "old"; worker B
rebinds old's (port, VLAN) to "new" and takes old away (B found old holding a VLAN
Neutron gave to new).  The interleaving that matters - B commits after A planned
but before A's transaction reaches the server - cannot be forced from outside, so
A's planning step is wrapped to run B's whole converge right after it (said here:
the only thing injected is the timing).  OVSDB deletes a map key whatever its value,
so without a check A's stale "unbind VLAN 100" would unbind new.
"""
from __future__ import annotations

from unittest import mock

from test_fabric_hwvtep import fabric_state, make_backend, make_leaf, net  # noqa: F401

from networking_dvs_fabric.fabric import hwvtep

IP_A = "192.0.2.1"


def test_a_removal_planned_before_a_rebind_does_not_unbind_the_new_network(
        make_leaf, make_backend):  # noqa: F811 - the fixtures imported above
    leaf = make_leaf("leaf-a", IP_A, ["eth1", "eth2"])
    worker_a, worker_b = make_backend(leaf), make_backend(leaf)
    old = net("old", 5001, [("eth1", 100), ("eth2", 200)])
    worker_a.converge("leaf-a", {"old": old})
    assert set(worker_b.read("leaf-a")) == {"old"}        # B's replica has it too

    plan_and_write = hwvtep._ConvergeCommand.run_idl
    raced: list[str] = []

    def run_idl(command, txn):
        plan_and_write(command, txn)
        if command.leaf == "leaf-a" and "old" in command.desired and not raced:
            # A has planned against its replica; B commits before A's transaction.
            raced.append("b")
            worker_b.converge("leaf-a", {"new": net("new", 5002, [("eth1", 100)]),
                                         "old": None})
    with mock.patch.object(hwvtep._ConvergeCommand, "run_idl", run_idl):
        worker_a.converge("leaf-a", {"old": None})
    assert raced == ["b"]
    state = fabric_state(leaf)
    assert set(state) == {"dvsf-new"}
    assert state["dvsf-new"]["bindings"] == {("eth1", 100)}
    assert leaf.bindings("eth1") == {100: "dvsf-new"} and leaf.bindings("eth2") == {}


def test_a_rebind_planned_before_a_removal_still_binds(make_leaf, make_backend):  # noqa: F811
    leaf = make_leaf("leaf-a", IP_A, ["eth1"])
    worker_a, worker_b = make_backend(leaf), make_backend(leaf)
    worker_a.converge("leaf-a", {"old": net("old", 5001, [("eth1", 100)])})
    assert set(worker_b.read("leaf-a")) == {"old"}

    plan_and_write = hwvtep._ConvergeCommand.run_idl
    raced: list[str] = []

    def run_idl(command, txn):
        plan_and_write(command, txn)
        if "new" in command.desired and not raced:
            raced.append("a")                  # A's removal lands after B planned
            worker_a.converge("leaf-a", {"old": None})
    with mock.patch.object(hwvtep._ConvergeCommand, "run_idl", run_idl):
        worker_b.converge("leaf-a", {"new": net("new", 5002, [("eth1", 100)]),
                                     "old": None})
    assert raced == ["a"]
    assert set(fabric_state(leaf)) == {"dvsf-new"}
    assert leaf.bindings("eth1") == {100: "dvsf-new"}
