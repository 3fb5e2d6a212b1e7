"""The lab's agent hosts: a network node and a KVM compute running Neutron's own agents.

Each host (``topology.AGENT_HOSTS``: ``net-1``, ``kvm-1``) is a network namespace
``dvsf-<tag>-<host>`` holding what a physical Open vSwitch host has:

- its own Open vSwitch: an ``ovsdb-server`` (its unix socket in the host's
  directory) and an ``ovs-vswitchd`` in the namespace, userspace datapath
  (``datapath_type = netdev``) as the leaves use;
- bridge ``br-phys``, the KVM physical network's bridge, whose port ``to-<leaf>``
  is a veth whose other end is the leaf's port ``swpN`` (a trunk, cabled by the
  dataplane like an ESXi host's).  A host with two links (``kvm-1``'s leaf pair)
  has only its first one cabled: a leaf pair needs MLAG, which the software VTEP
  does not do, and two plain links would loop;
- ``neutron-openvswitch-agent`` and, on the network node, ``neutron-dhcp-agent``
  and ``neutron-l3-agent``, run in the namespace, reaching the message bus through
  ``ns_forward`` (the host's management network).

The DHCP and L3 agents plug their ports with veth pairs (``ovs_use_veth``): an OVS
internal port of the userspace datapath is a tap device served by ovs-vswitchd in
its own namespace, and cannot be moved into a ``qdhcp-``/``qrouter-`` namespace.
Agents run commands as root already, so their root helper is ``env``.

Agents enter the host's network namespace with ``nsenter --net``, not ``ip netns
exec``: the latter also gives the process a mount namespace of its own, and the
``qdhcp-``/``qrouter-`` namespaces the agents then make are mounted there only -
invisible (and not removable) from outside.  dnsmasq runs as root here
(``user=root`` in its config file): it drops to ``nobody`` by default, which cannot
read its hosts file when the lab directory sits under a private directory (pytest's
are 0700) - it then answers every DISCOVER with "no address available".  Its log
(``--log-dhcp``) is in ``<host>/dnsmasq/``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Sequence

from networking_dvs_fabric.lab import netns, neutron, topology
from networking_dvs_fabric.lab.leaves import VSWITCH_SCHEMA, ovs_env
from networking_dvs_fabric.lab.procs import Daemon, LabError, find_program, wait_until

BIN = Path(sys.executable).parent
PHYS_BRIDGE = "br-phys"
INT_BRIDGE = "br-int"
# The agents report every REPORT_INTERVAL s; Neutron declares one dead after
# AGENT_DOWN_TIME s without a report (its defaults, 30 and 75, make tests slow).
REPORT_INTERVAL = 5
VM_MTU = 1450                # a VXLAN network's: 50 bytes of the underlay's 1500
AGENT_DOWN_TIME = 15
AGENTS_BY_HOST = {topology.NETWORK_NODE: ("ovs", "dhcp", "l3"), topology.KVM_HOST: ("ovs",)}
AGENT_PROGRAMS = {"ovs": "neutron-openvswitch-agent", "dhcp": "neutron-dhcp-agent",
                  "l3": "neutron-l3-agent"}
# Neutron's agent_type of each.
AGENT_TYPES = {"ovs": "Open vSwitch agent", "dhcp": "DHCP agent", "l3": "L3 agent"}
# What Neutron's agents run (their Debian packages; ``make setup`` installs them): the
# DHCP agent's dnsmasq and dhcp_release, the L3 agent's iptables and arping, the OVS
# agent firewall's conntrack.
AGENT_TOOLS = {"dnsmasq": "dnsmasq-base", "dhcp_release": "dnsmasq-utils",
               "iptables-restore": "iptables", "arping": "iputils-arping",
               "conntrack": "conntrack"}
# Namespaces Neutron's agents make; one is this host's when a link in it has its peer here.
AGENT_NAMESPACE_PREFIXES = ("qdhcp-", "qrouter-", "snat-", "fip-")


class AgentHost:
    """One agent host; see the module docstring."""

    def __init__(self, name: str, workdir: Path, tag: str,
                 links: Sequence[Sequence[str]]) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.tag = tag
        self.links = [tuple(link) for link in links]
        self.daemons: list[Daemon] = []

    # -- names -----------------------------------------------------------------
    @property
    def ns(self) -> str:
        return f"dvsf-{self.tag}-{re.sub(r'[^A-Za-z0-9-]', '', self.name)}"

    @property
    def dir(self) -> Path:
        return self.workdir / self.name

    @property
    def db(self) -> str:
        return f"unix:{self.dir / 'db.sock'}"

    @property
    def cabled(self) -> list[tuple[str, str]]:
        """The links cabled in the dataplane: the first only (module docstring)."""
        return self.links[:1]

    @staticmethod
    def uplink(leaf: str) -> str:
        return f"to-{leaf}"[:15]

    def agent_log(self, agent: str) -> Path:
        return self.dir / "logs" / f"{AGENT_PROGRAMS[agent]}.log"

    # -- OVS ---------------------------------------------------------------------
    def vsctl(self, *args: str, wait: bool = True) -> str:
        argv = [netns.tool("ovs-vsctl"), f"--db={self.db}", "--timeout=20"]
        if not wait:
            argv.append("--no-wait")
        return netns.run(argv + list(args), f"ovs-vsctl {' '.join(args[:3])} ({self.name})",
                         timeout=30)

    def _daemon(self, name: str, argv: list[str], env: dict[str, str] | None = None,
                log: Path | None = None) -> Daemon:
        daemon = Daemon(name=f"{self.name}-{name}", argv=argv,
                        log_path=log or self.dir / "logs" / f"{name}.log",
                        env=env or ovs_env(self.dir), cwd=self.dir)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def start_switch(self) -> None:
        """The namespace, its Open vSwitch and ``br-phys`` (before the leaves cable it)."""
        if self.ns in netns.list_ns():
            netns.del_ns(self.ns)           # left over by a crashed run of this very lab
        netns.add_ns(self.ns)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "conf.db"
        conf.unlink(missing_ok=True)
        (self.dir / "db.sock").unlink(missing_ok=True)     # a killed server's: not ready
        netns.run([netns.tool("ovsdb-tool"), "create", str(conf), str(VSWITCH_SCHEMA)],
                  f"ovsdb-tool create ({self.name})")
        server = self._daemon("ovsdb-server", [
            netns.tool("ovsdb-server"), f"--remote=p{self.db}",
            f"--unixctl={self.dir / 'ovsdb-server.ctl'}", "--no-chdir",
            "-vconsole:warn", "-vsyslog:off", "-vfile:off", str(conf)])
        wait_until(lambda: (self.dir / "db.sock").exists(), 15,
                   f"{self.name}'s ovsdb-server", alive=server)
        self.vsctl("init", wait=False)
        self._daemon("ovs-vswitchd", netns.in_ns(
            self.ns, netns.tool("ovs-vswitchd"), self.db, "--no-chdir",
            f"--unixctl={self.dir / 'ovs-vswitchd.ctl'}",
            "-vconsole:warn", "-vsyslog:off", "-vfile:off"))
        self.vsctl("add-br", PHYS_BRIDGE, "--", "set", "Bridge", PHYS_BRIDGE,
                   "datapath_type=netdev")

    def cable(self, leaf: str, port: str, leaf_ns: str) -> None:
        """The link from the leaf's ``port`` (in ``leaf_ns``) to this host's br-phys."""
        end = self.uplink(leaf)
        netns.veth(port, leaf_ns, end, self.ns)
        self.vsctl("add-port", PHYS_BRIDGE, end)

    # -- Neutron's agents ----------------------------------------------------------
    def write_agent_configs(self, transport_url: str) -> dict[str, list[Path]]:
        """Config files per agent (``AGENTS_BY_HOST``): a common one and the agent's."""
        state = self.dir / "state"
        for sub in ("state", "locks"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        common = self.dir / "agent.conf"
        neutron.write_ini(common, {
            # graceful_shutdown_timeout: the lab stops agents by SIGTERM; oslo.service
            # would wait up to 60 s for their workers, then the lab kills them.
            "DEFAULT": {"host": self.name, "transport_url": transport_url,
                        "state_path": str(state), "debug": "false",
                        "graceful_shutdown_timeout": "5"},
            "agent": {"root_helper": "env", "report_interval": str(REPORT_INTERVAL)},
            "oslo_concurrency": {"lock_path": str(self.dir / "locks")},
        })
        ovs = {"integration_bridge": INT_BRIDGE, "ovsdb_connection": self.db}
        plug = {"interface_driver": "openvswitch", "ovs_use_veth": "true"}
        files = {
            "ovs": ("openvswitch_agent.ini", {
                "ovs": {**ovs, "datapath_type": "netdev",
                        "bridge_mappings": f"{topology.KVM_PHYSICAL_NETWORK}:{PHYS_BRIDGE}"},
                "agent": {"tunnel_types": ""},
                "securitygroup": {"firewall_driver": "openvswitch"}}),
            "dhcp": ("dhcp_agent.ini", {
                "DEFAULT": {**plug, "enable_isolated_metadata": "false",
                            "dnsmasq_config_file": str(self._dnsmasq_conf()),
                            "dnsmasq_base_log_dir": str(self.dir / "dnsmasq")},
                "ovs": ovs}),
            "l3": ("l3_agent.ini", {
                "DEFAULT": {**plug, "enable_metadata_proxy": "false"}, "ovs": ovs}),
        }
        configs = {}
        for agent in AGENTS_BY_HOST.get(self.name, ("ovs",)):
            filename, sections = files[agent]
            neutron.write_ini(self.dir / filename, sections)
            configs[agent] = [common, self.dir / filename]
        return configs

    def _dnsmasq_conf(self) -> Path:
        path = self.dir / "dnsmasq.conf"
        path.write_text("# Written by the networking-dvs-fabric lab (see agent_hosts.py).\n"
                        "user=root\n")
        return path

    def start_agents(self, transport_url: str, bus_port: int,
                     progress: Callable[[str], None] = lambda text: None) -> None:
        """The forwarder to the bus, then each agent; waits until each has reported."""
        for program, package in AGENT_TOOLS.items():
            find_program(program, package)       # a clear error now, not a dead router later
        (self.dir / "logs" / "bus-forward.log").unlink(missing_ok=True)   # readiness below
        self._daemon("bus-forward", [sys.executable, "-m",
                                     "networking_dvs_fabric.lab.ns_forward", self.ns,
                                     str(bus_port)], env=dict(os.environ))
        wait_until(lambda: "forwarding" in self.daemons[-1].log_tail(5), 15,
                   f"{self.name}'s forwarder to the message bus", alive=self.daemons[-1])
        for agent, files in self.write_agent_configs(transport_url).items():
            progress(f"{self.name}: starting {AGENT_PROGRAMS[agent]}")
            argv = [netns.tool("nsenter"), f"--net=/run/netns/{self.ns}",
                    str(BIN / AGENT_PROGRAMS[agent]),
                    *[arg for f in files for arg in ("--config-file", str(f))],
                    "--log-file", str(self.agent_log(agent))]
            self._daemon(agent + "-agent", argv, env=self._agent_env(),
                         log=self.dir / "logs" / f"{AGENT_PROGRAMS[agent]}.out")

    def _agent_env(self) -> dict[str, str]:
        # privsep-helper is found on PATH (root helper ``env``).
        return {**ovs_env(self.dir), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def stop_agent(self, agent: str) -> None:
        """Stop one agent, as a crash or an operator would (its namespaces stay)."""
        self.agent_daemon(agent).stop()

    def start_agent(self, agent: str) -> Daemon:
        """Start a stopped agent again, same command line."""
        old = self.agent_daemon(agent)
        old.stop()
        new = Daemon(name=old.name, argv=list(old.argv), log_path=old.log_path,
                     env=self._agent_env(), cwd=self.dir).start()
        self.daemons[self.daemons.index(old)] = new
        return new

    def agent_daemon(self, agent: str) -> Daemon:
        for daemon in self.daemons:
            if daemon.name == f"{self.name}-{agent}-agent":
                return daemon
        raise LabError(f"{self.name} runs no {AGENT_PROGRAMS.get(agent, agent)}")

    # -- KVM VMs -------------------------------------------------------------------------
    def vm_ns(self, port_id: str) -> str:
        return f"dvsf-{self.tag}-vm-{port_id[:8]}"

    @staticmethod
    def vm_tap(port_id: str) -> str:
        return f"tap{port_id[:11]}"          # Nova's name for a port's tap device

    def plug_vm(self, port: dict[str, Any], mtu: int = VM_MTU) -> str:
        """A VM's NIC plugged into this host's br-int as Nova's libvirt driver does with
        os-vif: a port ``tap<port id>`` whose ``external_ids`` name the Neutron port
        (iface-id), its MAC (attached-mac), the instance (vm-uuid) and iface-status
        active; the OVS agent wires it from there.  The guest is a namespace whose
        ``eth0`` (the port's MAC, the network's MTU) is the tap's other end."""
        ns, tap, mac = self.vm_ns(port["id"]), self.vm_tap(port["id"]), port["mac_address"]
        self.unplug_vm(port["id"])
        netns.add_ns(ns)
        netns.veth("eth0", ns, tap, self.ns, mtu=mtu)
        netns.ip("link", "set", "eth0", "down", ns=ns)
        netns.ip("link", "set", "eth0", "address", mac, ns=ns)
        netns.ip("link", "set", "eth0", "up", ns=ns)
        self.vsctl("--may-exist", "add-port", INT_BRIDGE, tap, "--", "set", "Interface", tap,
                   f"external_ids:iface-id={port['id']}", f"external_ids:attached-mac={mac}",
                   "external_ids:iface-status=active",
                   f"external_ids:vm-uuid={port.get('device_id') or ''}")
        return ns

    def unplug_vm(self, port_id: str) -> None:
        self.vsctl("--if-exists", "del-port", INT_BRIDGE, self.vm_tap(port_id))
        if self.vm_ns(port_id) in netns.list_ns():
            netns.kill_pids(self.vm_ns(port_id))       # its DHCP client
            netns.del_ns(self.vm_ns(port_id))

    # -- stop ----------------------------------------------------------------------
    def owned_namespaces(self) -> list[str]:
        """The agents' ``qdhcp-``/``qrouter-`` namespaces whose links lead to this host."""
        owned = []
        for ns in netns.list_ns():
            if not ns.startswith(AGENT_NAMESPACE_PREFIXES):
                continue
            links = netns.ip("-o", "link", "show", ns=ns, check=False)
            if f"link-netns {self.ns} " in links or links.rstrip().endswith(
                    f"link-netns {self.ns}"):
                owned.append(ns)
        return owned

    def stop(self) -> None:
        """Agents first (so nothing respawns), then what they started in their
        namespaces (dnsmasq daemonizes out of the agent's process group: stopped by
        the pids ``ip netns pids`` gives), those namespaces, the switch, the host."""
        agents = [d for d in self.daemons if d.name.endswith("-agent")]
        for daemon in agents:              # all at once: each may take seconds to exit
            if daemon.pid is not None and daemon.running():
                try:
                    os.killpg(daemon.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for daemon in agents:
            daemon.stop()
        if self.ns in netns.list_ns():
            for ns in self.owned_namespaces():
                netns.kill_pids(ns)
                netns.del_ns(ns)
        for daemon in reversed(self.daemons):
            daemon.stop()
        netns.del_ns(self.ns)

    def running(self) -> dict[str, bool]:
        return {d.name: d.running() for d in self.daemons}

    # -- state file ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "workdir": str(self.workdir), "tag": self.tag,
                "links": [list(link) for link in self.links],
                "daemons": [d.to_json() for d in self.daemons]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AgentHost":
        host = cls(data["name"], Path(data["workdir"]), data["tag"], data["links"])
        host.daemons = [Daemon.from_json(d) for d in data.get("daemons", [])]
        return host


def lab_agent_hosts(workdir: Path, tag: str) -> list[AgentHost]:
    return [AgentHost(name, workdir, tag, links)
            for name, links in topology.AGENT_HOSTS.items()]


def alive_agents(neutron_url: str) -> set[tuple[str, str]]:
    """(host, kind) of every agent Neutron's API lists as alive (kind: ``AGENT_TYPES``)."""
    kinds = {agent_type: kind for kind, agent_type in AGENT_TYPES.items()}
    with urllib.request.urlopen(f"{neutron_url}/v2.0/agents", timeout=10) as resp:
        agents = json.load(resp)["agents"]
    return {(a["host"], kinds[a["agent_type"]]) for a in agents
            if a["alive"] and a["agent_type"] in kinds}


def wait_agents_alive(neutron_url: str, expected: set[tuple[str, str]], timeout: float,
                      hosts: Sequence[AgentHost] = ()) -> None:
    """Until every (host, kind) in ``expected`` is alive; an agent process that exits
    meanwhile fails at once, with its log's end."""
    deadline = time.monotonic() + timeout
    missing = set(expected)
    while time.monotonic() < deadline:
        missing = expected - alive_agents(neutron_url)
        if not missing:
            return
        for host in hosts:
            for daemon in host.daemons:
                if daemon.name.endswith("-agent") and not daemon.running():
                    kind = daemon.name[len(host.name) + 1:-len("-agent")]
                    raise LabError(f"{AGENT_PROGRAMS[kind]} on {host.name} exited; its log "
                                   f"{host.agent_log(kind)} ends:\n"
                                   f"{_tail(host.agent_log(kind))}")
        time.sleep(1)
    raise LabError("agents not alive in Neutron after "
                   f"{timeout:.0f} s: {', '.join(f'{AGENT_PROGRAMS[k]} on {h}' for h, k in sorted(missing))}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
