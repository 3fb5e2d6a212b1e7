"""The lab's fault controls: restart or stop its parts while it runs (tests, benchmarks).

A mixin of :class:`~networking_dvs_fabric.lab.lab.Lab`: every control records the
new pids in the lab's state, so ``lab down`` still stops what it started.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

from networking_dvs_fabric.lab import neutron, topology
from networking_dvs_fabric.lab.agent_hosts import AgentHost
from networking_dvs_fabric.lab.leaves import LeafSwitch
from networking_dvs_fabric.lab.procs import Daemon, LabError
from networking_dvs_fabric.lab.rabbitmq import RabbitMQ
from networking_dvs_fabric.lab.second_dvs import apply as add_second_dvs
from networking_dvs_fabric.lab.vcsim import VCenterSimulator


class LabControls:
    """Needs ``dir``, ``state()``, ``_save()`` and ``_record()`` (Lab has them)."""

    dir: Path

    def state(self) -> dict[str, Any] | None:  # pragma: no cover - Lab's
        raise NotImplementedError

    def _save(self, state: dict[str, Any]) -> None:  # pragma: no cover - Lab's
        raise NotImplementedError

    def _record(self, state: dict[str, Any], name: str, obj: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def restart_vcenter(self, **changes: Any) -> VCenterSimulator:
        """Restart the simulator on its port with changed password/cert (fault tests).

        The new pid is recorded, so ``down`` still stops it.  The simulator keeps its
        inventory in memory only: a second-DVS lab's DVS1 is set up again.
        """
        state = self.state()
        if state is None or not state.get("services", {}).get("vcsim"):
            raise LabError("no lab vCenter to restart")
        sim = VCenterSimulator.from_json(state["services"]["vcsim"])
        sim.restart_with(**changes)
        self._record(state, "vcsim", sim)
        if state.get("second_dvs"):
            add_second_dvs(sim.url, sim.username, sim.password, str(sim.ca_file))
        return sim

    def stop_vcenter(self) -> None:
        """Stop only the simulator (vCenter unreachable); ``restart_vcenter`` brings it back."""
        state = self.state() or {}
        data = state.get("services", {}).get("vcsim")
        if data:
            VCenterSimulator.from_json(data).stop()

    def restart_rabbitmq(self, while_down: Callable[[], Any] | None = None) -> RabbitMQ:
        """Stop the message bus and start it again on its ports and data (fault tests);
        ``while_down`` runs in between.  The new pids are recorded, so ``down`` still
        stops them."""
        state = self.state()
        if state is None or not state.get("services", {}).get("rabbitmq"):
            raise LabError("no lab RabbitMQ to restart (lab up --message-bus rabbitmq)")
        node = RabbitMQ.from_json(state["services"]["rabbitmq"])
        node.stop()
        try:
            if while_down is not None:
                while_down()
        finally:
            try:
                node.start()
            finally:
                self._record(state, "rabbitmq", node)
        return node

    # -- fault controls (tests, benchmarks) ---------------------------------------
    def periodic_workers(self) -> list[Daemon]:
        state = self.state() or {}
        return [Daemon.from_json(d) for d in state.get("daemons", [])
                if d["name"].startswith("neutron-periodic-workers")]

    def kill_periodic_workers(self) -> list[int]:
        """SIGKILL every periodic-workers process group of the lab, as a crash would."""
        killed = []
        for daemon in self.periodic_workers():
            if daemon.running() and daemon.pid is not None:
                try:
                    os.killpg(daemon.pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(daemon.pid)
                daemon.stop()          # reaps; nothing left to terminate
        return killed

    def start_periodic_worker(self) -> Daemon:
        """Start one more neutron-periodic-workers process (recorded, so ``down`` stops it)."""
        state = self.state()
        if state is None or "config_files" not in state:
            raise LabError("no lab is running")
        configs = [Path(p) for p in state["config_files"]]
        index = len(self.periodic_workers())
        daemon = neutron.periodic_daemon(self.dir, configs, suffix=f"-{index}" if index else "")
        daemon.start()
        state["daemons"].append(daemon.to_json())
        self._save(state)
        return daemon

    def leaf(self, name: str) -> LeafSwitch:
        state = self.state() or {}
        for data in state.get("services", {}).get("leaves", []):
            if data["name"] == name:
                return LeafSwitch.from_json(data)
        if state.get("shared_from"):
            raise LabError(f"leaf {name!r} belongs to the lab in {state['shared_from']}, "
                           "which this lab shares; control it there")
        raise LabError(f"no leaf named {name!r} in this lab")

    def stop_leaf(self, name: str) -> None:
        self.leaf(name).stop()

    def start_leaf(self, name: str, empty: bool = False) -> LeafSwitch:
        """Start a stopped leaf again on its port; ``empty`` starts it with a new database."""
        leaf = self.leaf(name)
        leaf.stop()
        if empty:
            leaf.db_path.unlink(missing_ok=True)
        leaf.start()
        state = self.state() or {}
        state["services"]["leaves"] = [leaf.to_json() if d["name"] == name else d
                                       for d in state["services"]["leaves"]]
        self._save(state)
        return leaf

    # -- agent hosts (lab up --agents) ----------------------------------------------
    def agent_host(self, name: str) -> AgentHost:
        plane = (self.state() or {}).get("services", {}).get("dataplane") or {}
        for data in plane.get("agent_hosts", []):
            if data["name"] == name:
                return AgentHost.from_json(data)
        raise LabError(f"no agent host named {name!r} in this lab (lab up --agents)")

    def _record_agent_host(self, host: AgentHost) -> None:
        state = self.state() or {}
        plane = state["services"]["dataplane"]
        plane["agent_hosts"] = [host.to_json() if d["name"] == host.name else d
                                for d in plane["agent_hosts"]]
        self._save(state)

    def stop_agent(self, host: str, agent: str) -> None:
        """Stop one Neutron agent (``ovs``, ``dhcp``, ``l3``) on an agent host."""
        self.agent_host(host).stop_agent(agent)

    def start_agent(self, host: str, agent: str) -> Daemon:
        """Start it again; the new pid is recorded."""
        agent_host = self.agent_host(host)
        daemon = agent_host.start_agent(agent)
        self._record_agent_host(agent_host)
        return daemon

    def plug_kvm_vm(self, port: dict[str, Any], host: str | None = None) -> str:
        """Plug a port bound to the KVM compute into its br-int as Nova/os-vif would;
        returns the guest's namespace (its ``eth0`` has no address: ask DHCP)."""
        return self.agent_host(host or topology.KVM_HOST).plug_vm(port)

    def unplug_kvm_vm(self, port_id: str, host: str | None = None) -> None:
        self.agent_host(host or topology.KVM_HOST).unplug_vm(port_id)

