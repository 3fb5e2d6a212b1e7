"""Benchmarks: Neutron's API on a CPU of its own, the rest of the lab on the others.

In a deployment the benchmark's client, vCenter, the switches and the background
workers are other machines or at least other cores; on a 2-core lab machine they all
compete with the API process for CPU, and the noise they make (the simulator's
bookkeeping after a task, the worker programming leaves) lands inside the requests
being timed.  Pinning gives the API process(es) CPU 0 and everything else the lab
started - and the benchmark itself - the remaining CPUs.  Both sides of a comparison
are pinned alike.  MariaDB (the system's, or a lab's private ``mariadbd``) is left to
float: every request waits on it, so crowding it onto the other CPUs would tax the side
with more database round trips for the simulator's and the workers' work.
"""
from __future__ import annotations

import os
from pathlib import Path
import contextlib
from typing import Any, Iterator

from networking_dvs_fabric.lab.lab import Lab

API_PREFIX = "neutron-api"
UNPINNED = ("mariadbd",)


def _daemons(node: Any) -> Iterator[tuple[str, int]]:
    """(name, pid) of every daemon recorded anywhere in a lab's state."""
    if isinstance(node, dict):
        if isinstance(node.get("pid"), int) and isinstance(node.get("name"), str):
            yield node["name"], node["pid"]
        for value in node.values():
            yield from _daemons(value)
    elif isinstance(node, list):
        for value in node:
            yield from _daemons(value)


def _pin_tree(pid: int, cpus: set[int]) -> int:
    """Pin every thread of ``pid`` and of its descendants; returns threads pinned."""
    pinned = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
            pinned += 1
        except OSError:
            continue          # a thread that just ended
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            children = []
        for child in children:
            pinned += _pin_tree(int(child), cpus)
    return pinned


def pin_labs(labs: list[Lab]) -> dict[str, Any] | None:
    """Pin the labs' processes; None (nothing done) on a machine with one CPU."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return None
    api, rest = {cpus[0]}, set(cpus[1:])
    pinned: dict[str, list[int]] = {}
    for lab in labs:
        seen: set[int] = set()
        for name, pid in _daemons(lab.state() or {}):
            if pid in seen or name in UNPINNED:
                continue
            seen.add(pid)
            target = api if name.startswith(API_PREFIX) else rest
            if _pin_tree(pid, target):
                pinned[f"{lab.dir.name}/{name}"] = sorted(target)
    os.sched_setaffinity(0, rest)
    return {"api_cpus": sorted(api), "other_cpus": sorted(rest), "pinned": pinned,
            "benchmark_cpus_before": cpus}


def restore(pinning: dict[str, Any] | None) -> None:
    """Give the benchmark's own process back the CPUs it had (the labs are gone)."""
    if pinning:
        os.sched_setaffinity(0, set(pinning["benchmark_cpus_before"]))


@contextlib.contextmanager
def observer_on_api_cpus(pinning: dict[str, Any] | None) -> Iterator[None]:
    """While the benchmark only watches the background work a request set off (the API
    has answered and is idle), it watches from the API's CPU: its reads back from
    vCenter then take no CPU from the workers and the simulator it is timing."""
    if not pinning:
        yield
        return
    os.sched_setaffinity(0, set(pinning["api_cpus"]))
    try:
        yield
    finally:
        os.sched_setaffinity(0, set(pinning["other_cpus"]))
