"""``dvs-fabric bench secgroups``: how fast security group changes reach vCenter's filters.

One lab on MariaDB (default drivers, 3 leaves): ``--groups`` groups, ``--ports`` ports
over them on a few networks (every third port in two groups: a group's rules live in
several port groups, one per (network, set)), a remote group R of ``--members`` and a
group W (one port per network) admitting TCP from R.  Ports are bound to a cluster's
compute host; no VM is needed (filters live on port groups; no port changes set).

(a) rule add: from the API's answer until every port group of a set holding the group,
    read back from vCenter (``vim_spec.policy_from_setting``), accepts that TCP port.
(b) member join: from the answer to a port create in R until every W port group's
    accept for R's port covers the new member's address.
(c) ``ReconfigureDVPortgroup`` tasks per rule change, from vCenter's own task list
    (``TaskManager.recentTask``; counted a settle time after the change is enforced),
    must equal the port groups it affects.  vCenter's list is what vCenter did: a
    retried, duplicated or unlogged reconfigure counts too, unlike the worker's log.
(d) port create latency with groups vs without (port security off), alternating, on
    networks whose port groups already exist.

Pinned (``cmd/cpu_pinning.py``): the API on CPU 0, the rest of the lab on the others.
For (a)-(c) the benchmark reads back from CPU 0 (the API has answered and is idle; a
read of five filters of ~220 rules costs ~50 ms of CPU the worker and the simulator
would otherwise lose); for (d) it is a client of the API and runs on the others.
"""
from __future__ import annotations

import concurrent.futures
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import netaddr
from pyVmomi import vim, vmodl

from networking_dvs_fabric.cmd import cpu_pinning
from networking_dvs_fabric.cmd.bench import lab_dvs, summarize
from networking_dvs_fabric.cmd.bench import progress as _progress
from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.pg_settings import read_settings
from networking_dvs_fabric.lab.procs import LabError
from networking_dvs_fabric.security import model, vim_spec
from networking_dvs_fabric.vcenter.session import collect

P50_TARGET_MS, P99_TARGET_MS, RATIO_TARGET = 1000.0, 3000.0, 1.1
NETWORKS, SETUP_CLIENTS = 4, 4
REMOTE_PORT = 7000          # W admits TCP to this port from R's members
RULE_PORT = 20000           # rule add k opens TCP RULE_PORT + k
TIMEOUT = 30.0
POLL = 0.02                 # a look at vCenter's task list
RECHECK = 0.05
SETTLE = 0.5                # after a change is enforced, before its tasks are counted
QUIET = 3.0                 # no vCenter task for this long: setup is over
_FILTER_LINE = re.compile(r"Port group \S+ \(network \S+, set \S+\): filter updated")


class _Api(NeutronClient):
    def create_group(self, name: str) -> dict:
        body = {"name": name, "project_id": self.project_id}
        return self._call("POST", "security-groups", {"security_group": body})["security_group"]

    def add_rule(self, group_id: str, port: int, remote_group_id: str | None = None) -> dict:
        body = {"security_group_id": group_id, "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": port, "port_range_max": port,
                "remote_group_id": remote_group_id, "project_id": self.project_id}
        return self._call("POST", "security-group-rules",
                          {"security_group_rule": body})["security_group_rule"]

    def bound_port(self, network_id: str, host: str, groups: list[str] | None) -> dict:
        """A port in ``groups``; None: port security off and no groups."""
        body = {"network_id": network_id, "project_id": self.project_id, "binding:host_id":
                host, "device_owner": "compute:nova", "device_id": "lab-vm"}
        body.update({"security_groups": groups} if groups is not None else
                    {"port_security_enabled": False, "security_groups": []})
        port = self._call("POST", "ports", {"port": body})["port"]
        if port["binding:vif_type"] != "dvs":
            raise LabError(f"port {port['id']} bound as {port['binding:vif_type']}")
        return port


class _VCenter:
    """Port groups, their filters read back and the task list, on the lab's vCenter."""

    def __init__(self, vcenter: dict[str, Any]) -> None:
        self.session, self.manager = lab_dvs(vcenter)
        self.polls: list[float] = []

    def port_groups(self, network_ids: set[str]) -> dict[tuple[str, str], str]:
        """(network, set key) -> moid of the networks' port groups."""
        return {(pg.network_id, pg.set_key): pg.moid for pg in self.manager.list()
                if pg.network_id in network_ids}

    def tasks(self) -> set[str]:
        return self.session.invoke(lambda si: {t._moId for t in
                                               si.content.taskManager.recentTask or []},
                                   "read recent tasks")

    def reconfigures(self, since: set[str]) -> int:
        """ReconfigureDVPortgroup tasks in vCenter's list that were not in ``since``."""
        new = sorted(self.tasks() - since)

        def read(si: Any) -> list[tuple[Any, dict[str, Any]]]:
            pcq = vmodl.query.PropertyCollector
            return collect(si.content.propertyCollector, [pcq.FilterSpec(
                objectSet=[pcq.ObjectSpec(obj=vim.Task(m, si._stub)) for m in new],
                propSet=[pcq.PropertySpec(type=vim.Task, pathSet=["info"])])])
        found = self.session.invoke(read, "read tasks") if new else []
        return sum(1 for _, props in found
                   if "reconfigure" in (props["info"].descriptionId or "").lower()
                   and isinstance(props["info"].entity, vim.dvs.DistributedVirtualPortgroup))

    def quiet(self, limit: float = 600.0) -> None:
        """Wait until vCenter has run no task for ``QUIET`` seconds (the workers are done)."""
        deadline, seen, since = time.monotonic() + limit, self.tasks(), time.monotonic()
        while time.monotonic() - since < QUIET:
            if time.monotonic() > deadline:
                raise LabError(f"vCenter still busy after {limit:.0f} s")
            time.sleep(0.5)
            if (now := self.tasks()) != seen:
                seen, since = now, time.monotonic()

    def wait_for(self, moids: list[str], wanted: Callable[[model.PortGroupPolicy], bool],
                 timeout: float = TIMEOUT) -> float | None:
        """``time.monotonic()`` of the read that found ``wanted`` true on the last of them.

        Read when vCenter's task list changes (every write is a task), ``RECHECK`` s
        later (the read may overtake the task) and every second: a look at the list
        costs ~2 ms of CPU, four filters of ~450 rules ~250 ms, CPU the worker and
        the simulator share with the benchmark."""
        remaining = set(moids)
        deadline = time.monotonic() + timeout
        tasks, read_at, recheck = None, 0.0, False
        while True:
            current, now = self.tasks(), time.monotonic()
            if current != tasks or (recheck and now - read_at >= RECHECK) or \
                    now - read_at >= 1.0:
                recheck, tasks, read_at = current != tasks, current, now
                settings = read_settings(self.session, remaining)
                now = time.monotonic()
                self.polls.append(now - read_at)
                remaining -= {moid for moid, setting in settings.items() if setting is not None
                              and wanted(vim_spec.policy_from_setting(setting))}
                if not remaining:
                    return now
            if now > deadline:
                return None
            time.sleep(POLL)

    def close(self) -> None:
        self.session.close()


def _accepts(port: int, address: str | None = None
             ) -> Callable[[model.PortGroupPolicy], bool]:
    """Does the filter accept TCP to ``port`` delivered to the VM (from ``address``)?"""
    ports = model.PortRange(port, port)

    def check(policy: model.PortGroupPolicy) -> bool:
        return any(r.direction == model.OUTGOING and r.action == model.ACCEPT and
                   r.protocol == 6 and r.destination_ports == ports and
                   (address is None or (r.source is not None and netaddr.IPAddress(address)
                                        in netaddr.IPNetwork(r.source)))
                   for r in policy.rules)
    return check


def _ms(values: list[float | None]) -> dict[str, Any]:
    """Summary of samples; None is a change never seen enforced (``missed``)."""
    seen = [v for v in values if v is not None]
    summary = summarize(seen, "median", "p99", "max")
    return {"n": summary.pop("n"), "missed": len(values) - len(seen), **summary}


def _assign(ports: int, groups: int, networks: int) -> list[tuple[int, tuple[int, ...]]]:
    """(network index, group indexes) of each port: one group, every third port two."""
    out = []
    for i in range(ports):
        members = {i % groups} | ({(i + 1) % groups} if i % 3 == 2 else set())
        out.append(((i // groups) % networks, tuple(sorted(members))))
    return out


class _Bench:
    def __init__(self, lab: Lab, groups: int, ports: int, members: int) -> None:
        status = lab.status()
        self.lab = lab
        self.api = _Api(status["neutron"]["url"])
        self.vc = _VCenter(status["vcenter"])
        self.host = topology.compute_host(topology.CLUSTERS[0])
        self.networks = max(1, min(NETWORKS, ports // groups))
        self.assignment = _assign(ports, groups, self.networks)
        self.group_count, self.members = groups, members
        self.nets: list[str] = []
        self.groups: list[str] = []
        self.remote = self.watcher = ""

    def key(self, group_indexes: tuple[int, ...]) -> str:
        return model.set_key(True, [self.groups[g] for g in group_indexes])

    def setup(self) -> dict[tuple[str, str], str]:
        api = self.api
        for k in range(self.networks):
            net = api.create_network(f"sg-bench-{k}")
            api.create_subnet(net["id"], f"10.{k + 1}.0.0/20")
            self.nets.append(net["id"])
        self.groups = [api.create_group(f"sg-bench-{g}")["id"]
                       for g in range(self.group_count)]
        self.remote = api.create_group("sg-bench-remote")["id"]
        self.watcher = api.create_group("sg-bench-watcher")["id"]
        api.add_rule(self.watcher, REMOTE_PORT, remote_group_id=self.remote)
        jobs = [(self.nets[n], [self.groups[g] for g in gs]) for n, gs in self.assignment]
        jobs += [(self.nets[m % self.networks], [self.remote]) for m in range(self.members)]
        _progress(f"setup: {len(jobs)} ports on {self.networks} networks")
        with concurrent.futures.ThreadPoolExecutor(max_workers=SETUP_CLIENTS) as pool:
            list(pool.map(lambda job: api.bound_port(job[0], self.host, job[1]), jobs))
        # W last: its port groups are made with every member already in R.
        for net in self.nets:
            api.bound_port(net, self.host, [self.watcher])
            api.bound_port(net, self.host, None)      # the open port group, for (d)
        self.vc.quiet()
        found = self.vc.port_groups(set(self.nets))
        wanted = {(self.nets[n], self.key(gs)) for n, gs in self.assignment}
        wanted |= {(net, model.set_key(True, [g])) for net in self.nets
                   for g in (self.remote, self.watcher)}
        missing = wanted - set(found)
        if missing:
            raise LabError(f"port groups missing in vCenter for (network, set) {missing}")
        return found

    def _measure(self, moids: list[str], change: Callable[[], Callable]
                 ) -> tuple[float | None, int]:
        """Time ``change`` (made, it says what ``moids`` must show) and count its tasks."""
        before = self.vc.tasks()
        wanted = change()
        answered = time.monotonic()
        seen = self.vc.wait_for(moids, wanted)
        time.sleep(SETTLE)
        return (None if seen is None else seen - answered), self.vc.reconfigures(before)

    def rule_adds(self, found: dict, changes: int) -> tuple[list[float | None], list[dict]]:
        times, tasks = [], []
        for k in range(changes):
            group = k % len(self.groups)
            keys = {self.key(gs) for _, gs in self.assignment if group in gs}
            moids = [moid for (_, key), moid in found.items() if key in keys]

            def add(group: str = self.groups[group], port: int = RULE_PORT + k) -> Callable:
                self.api.add_rule(group, port)
                return _accepts(port)
            elapsed, count = self._measure(moids, add)
            times.append(elapsed)
            tasks.append({"group": group, "affected_port_groups": len(moids),
                          "reconfigure_tasks": count})
        return times, tasks

    def joins(self, found: dict, changes: int) -> tuple[list[float | None], list[int]]:
        watch_key = model.set_key(True, [self.watcher])
        moids = [moid for (_, key), moid in found.items() if key == watch_key]
        times, tasks = [], []
        for k in range(changes):
            def join(net: str = self.nets[k % self.networks]) -> Callable:
                port = self.api.bound_port(net, self.host, [self.remote])
                return _accepts(REMOTE_PORT, port["fixed_ips"][0]["ip_address"])
            elapsed, count = self._measure(moids, join)
            times.append(elapsed)
            tasks.append(count)
        return times, tasks

    def port_creates(self, pairs: int) -> tuple[list[float], list[float]]:
        with_groups, without = [], []
        for i in range(pairs):
            net, gs = self.assignment[i % len(self.assignment)]
            kinds = [([self.groups[g] for g in gs], with_groups), (None, without)]
            for groups, samples in (kinds if i % 2 == 0 else kinds[::-1]):
                start = time.perf_counter()
                self.api.bound_port(self.nets[net], self.host, groups)
                samples.append(time.perf_counter() - start)
        return with_groups, without

    def filter_lines(self) -> int:
        return sum(len(_FILTER_LINE.findall(d.log_path.read_text(errors="replace")))
                   for d in self.lab.periodic_workers())


def bench_secgroups(groups: int = 10, ports: int = 100, members: int = 200,
                    changes: int = 30, pairs: int = 100, lab_dir: Path | None = None,
                    pin: bool = True) -> dict:
    if ports < groups:
        raise LabError(f"--ports {ports}: at least one port per group (--groups {groups})")
    base = Path(lab_dir) if lab_dir else Path(tempfile.mkdtemp(prefix="dvs-fabric-bench-"))
    lab = Lab(base)
    if lab.state() is not None:
        raise LabError(f"a lab is running in {lab.dir}; the benchmark needs its own")
    pinning = bench = None
    try:
        _progress(f"starting a lab in {lab.dir}")
        lab.up(db="mariadb", extra_config={
            "ml2_vsphere": {"cleanup_interval": "3600"},
            # Neutron's defaults (10 groups, 100 rules per project) are too few here.
            "quotas": {"quota_security_group": "-1", "quota_security_group_rule": "-1"}})
        pinning = cpu_pinning.pin_labs([lab]) if pin else None
        bench = _Bench(lab, groups, ports, members)
        found = bench.setup()
        _progress(f"setup done: {len(found)} port groups; {changes} rule adds")
        lines_before = bench.filter_lines()
        with cpu_pinning.observer_on_api_cpus(pinning):
            rule_times, rule_tasks = bench.rule_adds(found, changes)
            filter_lines = bench.filter_lines() - lines_before
            _progress(f"{changes} member joins to a group of {members}")
            join_times, join_tasks = bench.joins(found, changes)
        bench.vc.quiet()
        _progress(f"{pairs} port creates of each kind")
        with_groups, without = bench.port_creates(pairs)
        watch_rules = max(len(vim_spec.policy_from_setting(s).rules) for s in read_settings(
            bench.vc.session, [m for (_, key), m in found.items()
                               if key == model.set_key(True, [bench.watcher])]).values())
        polls = bench.vc.polls
    finally:
        if bench is not None:
            bench.vc.close()
        lab.down()
        cpu_pinning.restore(pinning)
        if lab_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    result = _result((rule_times, rule_tasks, filter_lines),
                     (join_times, join_tasks, watch_rules),
                     (with_groups, without), polls)
    result.update({"groups": groups, "ports": ports, "members": members,
                   "networks": bench.networks, "port_groups": len(found),
                   "cpu_pinning": pinning})
    return result


def _latency_met(summary: dict) -> bool:
    return (summary["n"] > 0 and summary["missed"] == 0 and
            summary["median_ms"] <= P50_TARGET_MS and summary["p99_ms"] <= P99_TARGET_MS)


def _result(rules: tuple, joins: tuple, creates: tuple, polls: list[float]) -> dict:
    rule_times, rule_tasks, filter_lines = rules
    join_times, join_tasks, watch_rules = joins
    rule, join = _ms(rule_times), _ms(join_times)
    join.update({"remote_members_filter_rules": watch_rules,
                 "reconfigure_tasks_per_join": join_tasks})
    with_g, without = _ms(creates[0]), _ms(creates[1])
    ratio = with_g["median_ms"] / without["median_ms"]
    targets = {
        "rule_add_met": _latency_met(rule), "member_join_met": _latency_met(join),
        "tasks_per_rule_change_met": all(t["reconfigure_tasks"] == t["affected_port_groups"]
                                         for t in rule_tasks),
        "port_create_ratio": round(ratio, 3),
        "port_create_met": ratio <= RATIO_TARGET,
        "targets": {"rule_add": f"p50 <= {P50_TARGET_MS:.0f} ms, p99 <= "
                                f"{P99_TARGET_MS:.0f} ms, none missed",
                    "member_join": "as rule_add",
                    "tasks_per_rule_change": "ReconfigureDVPortgroup tasks == port groups "
                                             "affected, for every change",
                    "port_create_ratio": f"median with groups / without <= {RATIO_TARGET}"},
    }
    return {"benchmark": "secgroups", "changes": len(rule_tasks), "rule_add": rule,
            "member_join": join, "tasks_per_rule_change": rule_tasks,
            "worker_filter_updates_during_rule_adds": filter_lines,
            "port_create": {"with_groups": with_g, "without_groups": without},
            "readback_poll": _ms(polls), "targets": targets,
            "targets_met": all(v for k, v in targets.items() if k.endswith("_met"))}


def format_text(result: dict) -> str:
    lines = [(f"{result['groups']} groups, {result['ports']} ports, remote group of "
              f"{result['members']}, {result['networks']} networks, "
              f"{result['port_groups']} port groups")]
    for what in ("rule_add", "member_join"):
        s = result[what]
        lines.append(f"{what:11s} -> enforced: p50 {s.get('median_ms', '-')} ms  p99 "
                     f"{s.get('p99_ms', '-')} ms  (n={s['n']}, missed {s['missed']})")
    lines.append("tasks per rule change (tasks/affected): " + " ".join(
        f"{t['reconfigure_tasks']}/{t['affected_port_groups']}"
        for t in result["tasks_per_rule_change"]))
    for kind, s in result["port_create"].items():
        lines.append(f"port create {kind:14s} median {s['median_ms']:.1f} ms  "
                     f"p99 {s['p99_ms']:.1f} ms  (n={s['n']})")
    t = result["targets"]
    lines.append(" ".join(f"{k[:-4]}: {'met' if v else 'MISSED'}" for k, v in t.items()
                          if k.endswith("_met")) +
                 f" (port create ratio {t['port_create_ratio']})")
    return "\n".join(lines)
