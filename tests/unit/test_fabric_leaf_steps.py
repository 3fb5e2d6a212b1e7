"""The fabric worker writes a batch's leaves side by side, except leaves that share
one OVSDB database (logical switches and locators are the database's): those one
after another.  Plain threads and events, no lab."""
from __future__ import annotations

import threading

from networking_dvs_fabric.fabric import worker

WAIT = 10.0


def test_leaves_of_different_databases_run_together_shared_ones_in_turn():
    leaf1_running = threading.Event()
    leaf3_done = threading.Event()
    in_shared = []
    overlap = []
    lock = threading.Lock()

    def shared(name):
        def step():
            with lock:
                in_shared.append(name)
                overlap.append(len(in_shared))
            if name == "leaf1":
                leaf1_running.set()
                # leaf3 (another database) must run while leaf1 is under way.
                assert leaf3_done.wait(WAIT), "leaf3 did not run beside leaf1"
            with lock:
                in_shared.remove(name)
            return {f"net-{name}": RuntimeError(name)}
        return step

    def leaf3():
        assert leaf1_running.wait(WAIT)
        leaf3_done.set()
        return {}

    databases = {"leaf1": "tcp:db-a", "leaf2": "tcp:db-a", "leaf3": "tcp:db-b"}
    result = worker._on_leaves({"leaf1": shared("leaf1"), "leaf2": shared("leaf2"),
                                "leaf3": leaf3}, databases.__getitem__)
    assert set(result) == {"leaf1", "leaf2", "leaf3"}
    assert [str(e) for e in result["leaf2"].values()] == ["leaf2"]
    assert result["leaf3"] == {}
    assert max(overlap) == 1          # leaf1 and leaf2 never at once


def test_a_failing_step_is_raised_to_the_caller():
    def boom():
        raise ValueError("leaf gone mad")
    try:
        worker._on_leaves({"a": boom, "b": dict}, str)
    except ValueError as exc:
        assert "mad" in str(exc)
    else:
        raise AssertionError("the failure was swallowed")


def _runtime():
    from oslo_config import cfg

    from networking_dvs_fabric import opts, runtime
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([])
    return runtime.Runtime(conf)


def test_other_workers_start_after_the_leaves_first_repair_where_a_fabric_worker_runs():
    """At a worker process's start the fabric worker's first full sync of the leaves
    comes before the other workers' first passes (they share one interpreter)."""
    alone = _runtime()
    stop = threading.Event()
    alone.wait_for_leaves(stop)          # no fabric worker here: no wait at all

    shared = _runtime()
    shared.expect_leaves()
    started = threading.Event()
    waiter = threading.Thread(target=lambda: (shared.wait_for_leaves(stop), started.set()))
    waiter.start()
    try:
        assert not started.wait(1.5), "a worker started before the leaves were repaired"
        shared.leaves_repaired()
        assert started.wait(WAIT), "the leaves were repaired but the worker did not start"
    finally:
        stop.set()
        waiter.join(WAIT)

