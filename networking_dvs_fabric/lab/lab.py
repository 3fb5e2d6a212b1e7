"""The lab: every real component on loopback, started together, described in one JSON.

``Lab.up()`` starts the vCenter simulator, one ovsdb-server per leaf, the
database (SQLite file, or MariaDB), Neutron's API under uWSGI and the periodic
workers, writes the configs and a ``state.json`` with every pid it started.
``Lab.down()`` stops exactly those pids.  ``up()`` on a running lab first takes
it down, so running it again restarts cleanly.

``up(share=<other lab's directory>)`` starts a second deployment: its own database
and Neutron, using the other lab's vCenter simulator and leaves (not started, and
not stopped by this lab's ``down``) - two clouds on one vCenter and one fabric.

``up(second_dvs=True)`` moves cluster DC0_C1 to a second DVS, DVS1, on physical
network ``physnet-dvs2`` with the same VLAN numbers (``lab/second_dvs.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from networking_dvs_fabric.lab import netns, neutron, topology
from networking_dvs_fabric.lab.agent_hosts import (AGENT_DOWN_TIME, AGENTS_BY_HOST,
                                                   lab_agent_hosts, wait_agents_alive)
from networking_dvs_fabric.lab.dataplane import Dataplane, lab_tag
from networking_dvs_fabric.lab.lab_controls import LabControls
from networking_dvs_fabric.lab.leaves import LeafSwitch, start_lab_leaves
from networking_dvs_fabric.lab.mariadb import MariaDB
from networking_dvs_fabric.lab.procs import Daemon, LabError, wait_until, write_json_atomic
from networking_dvs_fabric.lab.rabbitmq import RabbitMQ
from networking_dvs_fabric.lab.second_dvs import apply as add_second_dvs
from networking_dvs_fabric.lab.vcsim import VCenterSimulator

DEFAULT_DRIVERS = "fabric_hwvtep,vsphere_dvs"
MODES = ("pre_provision", "on_demand")
DATABASES = ("sqlite", "mariadb")
# Neutron's message bus: oslo.messaging's in-process fake (no agents can listen), or a
# private RabbitMQ node (``lab/rabbitmq.py``) that agents on other "hosts" reach.
MESSAGE_BUSES = ("fake", "rabbitmq")
CLOUD_NAME = "dvs-fabric-lab"
AGENT_START_TIMEOUT = 120.0


def default_lab_dir() -> Path:
    env = os.environ.get("DVS_FABRIC_LAB_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "networking-dvs-fabric" / "lab"


def _progress(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


class Lab(LabControls):
    def __init__(self, lab_dir: Path | None = None) -> None:
        self.dir = Path(lab_dir) if lab_dir else default_lab_dir()
        self.state_file = self.dir / "state.json"

    # -- state ----------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise LabError(f"lab state {self.state_file} is unreadable ({exc}); stop leftover "
                           "processes by the pids in its logs and delete it") from exc

    def _save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.state_file, state)
        self.state_file.chmod(0o600)

    def status(self) -> dict[str, Any]:
        state = self.state()
        if state is None or "status" not in state:
            raise LabError(f"no lab is running (no {self.state_file}); run 'dvs-fabric lab up'")
        return state["status"]

    def running(self) -> dict[str, bool]:
        state = self.state() or {}
        running = {d["name"]: Daemon.from_json(d).running() for d in state.get("daemons", [])}
        plane = state.get("services", {}).get("dataplane")
        if plane:
            running.update(Dataplane.from_json(plane).running())
        return running

    # -- up / down --------------------------------------------------------------
    def up(self, mechanism_drivers: str = DEFAULT_DRIVERS, mode: str = "pre_provision",
           db: str = "sqlite", extra_config: dict[str, dict[str, str]] | None = None,
           dataplane: bool | None = False, share: Path | None = None,
           bus: str = "fake", agents: bool = False,
           second_dvs: bool = False) -> dict[str, Any]:
        """Start the lab.  ``dataplane``: True = required, None = where namespaces work.

        ``share``: the directory of a running lab whose vCenter and leaves to use.
        ``bus``: Neutron's message bus (``MESSAGE_BUSES``).
        ``agents``: the agent hosts (``lab/agent_hosts.py``) with Neutron's OVS, DHCP
        and L3 agents; needs the dataplane and RabbitMQ, and adds ``openvswitch`` to
        the drivers and the router service.
        ``second_dvs``: DC0_C1's hosts on DVS1 (``physnet-dvs2``), C0's on DVS0.
        """
        if mode not in MODES:
            raise LabError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
        if db not in DATABASES:
            raise LabError(f"--db {db!r}: choose one of {', '.join(DATABASES)}")
        if bus not in MESSAGE_BUSES:
            raise LabError(f"--message-bus {bus!r}: choose one of {', '.join(MESSAGE_BUSES)}")
        drivers = ",".join(d.strip() for d in mechanism_drivers.split(",") if d.strip())
        if not drivers:
            raise LabError("--ml2-mechanism-drivers: name at least one driver")
        if agents:
            if share is not None:
                raise LabError("--agents: a lab sharing another's leaves has no dataplane "
                               "to cable agent hosts to")
            if bus == "fake":
                bus = "rabbitmq"            # agents on other hosts need a real bus
            dataplane = True
            if "openvswitch" not in drivers.split(","):
                drivers += ",openvswitch"
            extra = dict(extra_config or {})
            extra["DEFAULT"] = {"service_plugins": "router",
                                "agent_down_time": str(AGENT_DOWN_TIME),
                                "dhcp_agents_per_network": "1",
                                **extra.get("DEFAULT", {})}
            extra_config = extra
        shared = None
        if share is not None:
            if Path(share).resolve() == self.dir.resolve():
                raise LabError("--share: name another lab's directory, not this one")
            shared = Lab(Path(share)).status()       # raises: no lab running there
            if shared["vcenter"]["dvs"] != topology.dvs_mappings(second_dvs):
                raise LabError(f"--share: the lab in {share} maps {shared['vcenter']['dvs']}, "
                               f"this one would map {topology.dvs_mappings(second_dvs)}: "
                               "give both labs --second-dvs, or neither")
            if dataplane:
                raise LabError("--dataplane: a lab sharing another's leaves has none")
            dataplane = False
        dataplane_off = None
        if dataplane is not False:
            dataplane_off = netns.unavailable()
            if dataplane_off and dataplane:
                raise LabError(f"{'--agents' if agents else '--dataplane'}: "
                               f"{dataplane_off}")
            if dataplane_off:
                _progress(f"no dataplane: {dataplane_off}; the lab runs without one")
        if self.state() is not None:
            _progress("a lab is already up here; taking it down first")
            self.down()
        self.dir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"daemons": [], "services": {}}
        self._save(state)      # from here on, 'down' can stop whatever was started
        try:
            self._start_all(state, drivers, mode, db, extra_config or {},
                            dataplane is not False and not dataplane_off, shared, share, bus,
                            agents, second_dvs)
        except BaseException:
            _progress("start failed; stopping what was started")
            self.down()
            raise
        return state["status"]

    def _record(self, state: dict[str, Any], name: str, obj: Any) -> None:
        state["services"][name] = obj.to_json()
        self._save(state)

    def _start_all(self, state: dict[str, Any], drivers: str, mode: str, db: str,
                   extra: dict[str, dict[str, str]], dataplane: bool,
                   shared: dict[str, Any] | None = None, share: Path | None = None,
                   bus: str = "fake", agents: bool = False,
                   second_dvs: bool = False) -> None:
        if shared is not None:
            _progress(f"using the vCenter simulator and leaves of the lab in {share}")
            vcenter = {k: shared["vcenter"][k] for k in ("url", "username", "password",
                                                         "ca_file")}
            leaves = [dict(leaf) for leaf in shared["leaves"]]
            state["shared_from"] = str(Path(share).resolve())
        else:
            _progress("starting the vCenter simulator")
            vcsim = VCenterSimulator(self.dir / "vcsim")
            self._record(state, "vcsim", vcsim)
            vcsim.start()
            self._record(state, "vcsim", vcsim)
            vcenter = {"url": vcsim.url, "username": vcsim.username,
                       "password": vcsim.password, "ca_file": str(vcsim.ca_file)}
            if second_dvs:
                _progress("vCenter: DVS1 for cluster DC0_C1 (off DVS0)")
                add_second_dvs(**vcenter)
                state["second_dvs"] = True      # restart_vcenter applies it again

            _progress("starting 3 leaf switches (ovsdb-server, hardware_vtep)")
            switches = start_lab_leaves(self.dir, dataplane)
            state["services"]["leaves"] = [leaf.to_json() for leaf in switches]
            self._save(state)
            leaves = [{"name": leaf.name, "ovsdb": leaf.ovsdb, "tunnel_ip": leaf.tunnel_ip}
                      for leaf in switches]

        if db == "mariadb":
            _progress("starting/using MariaDB")
            # Own database and user per lab dir: two labs may share the system server.
            tag = hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:8]
            mariadb = MariaDB(self.dir / "mariadb", database=f"dvs_fabric_lab_{tag}",
                              user=f"dvsf_lab_{tag}")
            self._record(state, "mariadb", mariadb)
            mariadb.start(fresh=True)
            self._record(state, "mariadb", mariadb)
            db_url = mariadb.url
        else:
            db_file = self.dir / "neutron.sqlite"
            db_file.unlink(missing_ok=True)
            db_url = f"sqlite:///{db_file}"

        bus_status: dict[str, Any] = {"kind": bus}
        if bus == "rabbitmq":
            _progress("starting RabbitMQ (a private node on loopback)")
            rabbit = RabbitMQ(self.dir / "rabbitmq", node=f"lab{lab_tag(self.dir)}")
            self._record(state, "rabbitmq", rabbit)
            rabbit.start(fresh=True)
            self._record(state, "rabbitmq", rabbit)
            bus_status["transport_url"] = rabbit.transport_url
            extra = {**extra, "DEFAULT": {**extra.get("DEFAULT", {}),
                                          "transport_url": rabbit.transport_url}}

        access = neutron.VCenterAccess(vcenter["url"], vcenter["username"],
                                       vcenter["password"], vcenter["ca_file"])
        configs = neutron.write_configs(self.dir / "neutron", db_url, access, drivers, mode,
                                        {leaf["name"]: leaf["ovsdb"] for leaf in leaves},
                                        extra, second_dvs)
        _progress(f"creating Neutron's schema ({db})")
        neutron.prepare_database(db_url, configs, self.dir / "logs" / "db-manage.log")

        _progress(f"starting Neutron (uWSGI API + periodic workers; drivers {drivers})")
        names = drivers.split(",")
        daemons, url = neutron.start_neutron(
            self.dir, configs, api_processes=1 if db == "sqlite" else 4,
            journal_workers=sum(d in names for d in ("fabric_hwvtep", "vsphere_dvs")),
            transport_url=bus_status.get("transport_url"))
        state["daemons"] = [daemon.to_json() for daemon in daemons]
        state["status"] = self._status_doc(url, vcenter, leaves, mode, second_dvs)
        state["status"]["dataplane"] = dataplane
        state["status"]["message_bus"] = bus_status
        state["status"]["agent_hosts"] = (
            {name: list(AGENTS_BY_HOST[name]) for name in topology.AGENT_HOSTS}
            if agents else {})
        state["config_files"] = [str(p) for p in configs]
        state["db"] = db
        state["mechanism_drivers"] = drivers
        self._save(state)
        self._write_clouds_yaml(url)
        if dataplane:
            self._start_dataplane(state, switches, agents)
        if agents:
            self._start_agents(state, rabbit, url)

    def _start_dataplane(self, state: dict[str, Any], leaves: list[LeafSwitch],
                         agents: bool = False) -> None:
        tag = lab_tag(self.dir)
        plane = Dataplane(self.dir / "dataplane", tag,
                          [leaf.to_json() for leaf in leaves],
                          [{"esxi_host": a.esxi_host, "leaf": a.leaf, "port": a.port}
                           for a in topology.attachments()],
                          lab_agent_hosts(self.dir / "agent-hosts", tag) if agents else ())
        try:
            plane.start(_progress)
        finally:
            state["services"]["dataplane"] = plane.to_json()
            self._save(state)
        agent = Daemon("dataplane-agent", [sys.executable, "-m",
                                           "networking_dvs_fabric.lab.dataplane_agent",
                                           str(self.dir)],
                       log_path=self.dir / "logs" / "dataplane-agent.log")
        agent.start()
        state["daemons"].append(agent.to_json())
        self._save(state)
        wait_until(lambda: "following vCenter" in agent.log_tail(50), 60,
                   "the dataplane agent", alive=agent)
        _progress("dataplane: up (agent following vCenter)")

    def _start_agents(self, state: dict[str, Any], rabbit: RabbitMQ, url: str) -> None:
        plane = Dataplane.from_json(state["services"]["dataplane"])
        try:
            for host in plane.agent_hosts:
                host.start_agents(rabbit.transport_url, rabbit.port, _progress)
        finally:
            state["services"]["dataplane"] = plane.to_json()
            self._save(state)
        expected = {(host, agent) for host, agents in state["status"]["agent_hosts"].items()
                    for agent in agents}
        _progress(f"waiting for {len(expected)} agents to report to Neutron")
        wait_agents_alive(url, expected, AGENT_START_TIMEOUT, plane.agent_hosts)
        _progress("agents: all alive")

    def dataplane(self) -> Dataplane:
        data = (self.state() or {}).get("services", {}).get("dataplane")
        if not data:
            raise LabError("this lab runs without a dataplane ('dvs-fabric lab up "
                           "--dataplane')")
        return Dataplane.from_json(data)

    def _status_doc(self, url: str, vcenter: dict[str, str], leaves: list[dict[str, Any]],
                    mode: str, second_dvs: bool = False) -> dict[str, Any]:
        return {
            "neutron": {"url": url},
            "vcenter": {**vcenter, "datacenter": topology.DATACENTER,
                        "dvs": topology.dvs_mappings(second_dvs)},
            "compute_hosts": topology.compute_hosts(),
            "leaves": leaves,
            "attachments": [{"esxi_host": a.esxi_host, "dvs": a.dvs, "leaf": a.leaf,
                             "port": a.port} for a in topology.attachments(second_dvs)],
            "mode": mode,
        }

    def _write_clouds_yaml(self, url: str) -> None:
        text = (f"clouds:\n  {CLOUD_NAME}:\n    auth_type: none\n    auth:\n"
                f"      endpoint: {url}\n    network_endpoint_override: {url}\n")
        (self.dir / "clouds.yaml").write_text(text)

    def down(self) -> list[str]:
        """Stop every process this lab started, by pid; returns what was stopped."""
        state = self.state()
        if state is None:
            return []
        stopped: list[str] = []
        for data in reversed(state.get("daemons", [])):
            daemon = Daemon.from_json(data)
            if daemon.running():
                daemon.stop()
                stopped.append(daemon.name)
        services = state.get("services", {})
        if services.get("dataplane"):
            plane = Dataplane.from_json(services["dataplane"])
            stopped += [name for name, up in plane.running().items() if up]
            plane.stop()
        if services.get("rabbitmq"):
            rabbit = RabbitMQ.from_json(services["rabbitmq"])
            if rabbit.running():
                stopped.append("rabbitmq")
            rabbit.stop()
        if services.get("mariadb"):
            mariadb = MariaDB.from_json(services["mariadb"])
            if mariadb.pid is not None and mariadb.running():
                stopped.append("mariadb")
            mariadb.drop()
            mariadb.stop()
        for data in services.get("leaves", []):
            leaf = LeafSwitch.from_json(data)
            if leaf.running():
                stopped.append(leaf.name)
            leaf.stop()
        if services.get("vcsim"):
            sim = VCenterSimulator.from_json(services["vcsim"])
            if sim.running():
                stopped.append("vcsim")
            sim.stop()
        self.state_file.unlink(missing_ok=True)
        return stopped

    def how_to_reach(self) -> str:
        status = self.status()
        url = status["neutron"]["url"]
        dvs = status["vcenter"]["dvs"]
        return "\n".join([
            f"Neutron API:   {url}  (noauth)",
            f"vCenter:       {status['vcenter']['url']}  user {status['vcenter']['username']}"
            f"  CA {status['vcenter']['ca_file']}",
            *([f"DVSs:          {', '.join(f'{p} -> {d}' for p, d in dvs.items())}"]
              if len(dvs) > 1 else []),
            f"clouds.yaml:   {self.dir / 'clouds.yaml'}  (cloud '{CLOUD_NAME}')",
            "openstack CLI:",
            f"  export OS_CLIENT_CONFIG_FILE={self.dir / 'clouds.yaml'} OS_CLOUD={CLOUD_NAME}",
            f"  # or: export OS_AUTH_TYPE=none OS_ENDPOINT={url}",
            f"Logs:          {self.dir / 'logs'}",
            "Stop it:       dvs-fabric lab down",
        ])
