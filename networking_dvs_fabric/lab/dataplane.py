"""The lab's dataplane: real frames, VLAN -> VXLAN -> VLAN, through software VTEPs.

Layout (every name carries the lab's tag, so two labs never meet):

- per leaf, a network namespace ``dvsf-<tag>-<leaf>`` running ``ovs-vswitchd``
  (userspace datapath, ``datapath_type=netdev``: there is no kernel openvswitch
  module here) and ``ovs-vtep``.  The vswitchd's database is the leaf's own
  ``ovsdb-server`` (it serves both the leaf's ``hardware_vtep`` database, which the
  project programs over TCP, and ``Open_vSwitch``, on a unix socket), so ``ovs-vtep``
  obeys exactly the database the project writes.  Bridge ``<leaf>`` holds the leaf's
  physical ports (``swpN``); bridge ``br-ul`` holds the uplink to the spine and the
  tunnel IP on its internal port.
- one namespace ``dvsf-<tag>-hosts`` with its own ``ovsdb-server`` and
  ``ovs-vswitchd``: bridge ``spine`` (the underlay: every leaf's uplink), and per
  ESXi host a bridge ``esx-<host>`` whose uplink is a veth to the leaf port the
  topology names.  A VM's link is an access port of its host's bridge with the port
  group's VLAN as tag: the host tags, the leaf port is a trunk.
- per VM, a namespace ``dvsf-<tag>-<vm moid>`` with ``eth0`` (the NIC's MAC, the
  port's fixed IP, MTU 1450: VXLAN takes 50 bytes of the underlay's 1500).

- with agent hosts (``lab up --agents``), per host a namespace with its own Open
  vSwitch and Neutron's agents, its first link cabled to its leaf port
  (``lab/agent_hosts.py``).

Ports of a leaf without a host in the lab (without agent hosts, the KVM host's and
the network node's) are internal ports, so ``ovs-vtep`` keeps them in the database.  Frames are tagged in OVS: there are no
802.1Q links here.  Everything started is a :class:`Daemon` stopped by pid; the
namespaces are deleted by name on ``stop()`` (they are the lab's own).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Sequence

from networking_dvs_fabric.lab import netns
from networking_dvs_fabric.lab.agent_hosts import AgentHost
from networking_dvs_fabric.lab.leaves import VSWITCH_SCHEMA, LeafSwitch, ovs_env
from networking_dvs_fabric.lab.procs import Daemon, LabError, wait_until

UNDERLAY_PREFIX = 24
VM_MTU = 1450
OVS_TIMEOUT = 20


def lab_tag(lab_dir: Path) -> str:
    return hashlib.sha1(str(Path(lab_dir).resolve()).encode()).hexdigest()[:6]


def host_bridge(esxi_host: str) -> str:
    """OVS bridge name of an ESXi host (interface names are at most 15 characters)."""
    short = re.sub(r"[^a-z0-9]", "", esxi_host.lower())
    return f"esx-{short}"[:15]


def _ofport_request(link: str, ofport: int | None) -> list[str]:
    return [] if ofport is None else ["--", "set", "Interface", link,
                                      f"ofport_request={int(ofport)}"]


def host_uplink(esxi_host: str) -> str:
    """The host bridge's port towards its leaf (a veth in the hosts namespace)."""
    return f"up-{host_bridge(esxi_host)[4:]}"[:15]


class Dataplane:
    """Namespaces, switches and links of one lab; see the module docstring."""

    def __init__(self, workdir: Path, tag: str, leaves: Sequence[dict[str, Any]],
                 attachments: Sequence[dict[str, str]],
                 agent_hosts: Sequence[AgentHost] = ()) -> None:
        self.workdir = Path(workdir)
        self.tag = tag
        # Leaf records as LeafSwitch.to_json() gives them (name, tunnel_ip, ports, ...).
        self.leaves = [dict(leaf) for leaf in leaves]
        self.attachments = [dict(a) for a in attachments]
        self.daemons: list[Daemon] = []
        self.namespaces: list[str] = []
        # Open vSwitch hosts with Neutron's agents (lab/agent_hosts.py), cabled to leaves.
        self.agent_hosts = list(agent_hosts)

    # -- names -----------------------------------------------------------------
    @property
    def hosts_ns(self) -> str:
        return f"dvsf-{self.tag}-hosts"

    def leaf_ns(self, leaf: str) -> str:
        return f"dvsf-{self.tag}-{leaf}"

    def vm_ns(self, vm_moid: str) -> str:
        return f"dvsf-{self.tag}-{re.sub(r'[^A-Za-z0-9-]', '', vm_moid)}"

    def nic_ns(self, vm_moid: str, index: int = 0) -> str:
        """The namespace of a VM's NIC ``index`` (the first NIC's is ``vm_ns``)."""
        return self.vm_ns(vm_moid) + (f"-{index}" if index else "")

    @staticmethod
    def vm_link(vm_moid: str, index: int = 0) -> str:
        """Host-side end of a VM's link, in the hosts namespace."""
        return f"{re.sub(r'[^a-z0-9]', '', vm_moid.lower())[:11]}n{index}"[:15]

    @property
    def leases_dir(self) -> Path:
        """Where the VMs' DHCP clients write their leases (``dhcp_client``)."""
        return self.workdir / "leases"

    @property
    def hosts_dir(self) -> Path:
        return self.workdir / "hosts"

    @property
    def hosts_db(self) -> str:
        return f"unix:{self.hosts_dir / 'db.sock'}"

    # -- OVS helpers -----------------------------------------------------------
    def vsctl(self, db: str, *args: str, wait: bool = True) -> str:
        argv = [netns.tool("ovs-vsctl"), f"--db={db}", f"--timeout={OVS_TIMEOUT}"]
        if not wait:
            argv.append("--no-wait")
        return netns.run(argv + list(args), f"ovs-vsctl {' '.join(args[:3])}",
                         timeout=OVS_TIMEOUT + 10)

    def ofctl(self, command: str, bridge: str, *args: str,
              protocol: str | None = None) -> str:
        """``ovs-ofctl`` on a host bridge (its vswitchd's management socket)."""
        argv = [netns.tool("ovs-ofctl"), f"--timeout={OVS_TIMEOUT}"]
        if protocol:
            argv += ["-O", protocol]
        argv += [command, f"unix:{self.hosts_dir / f'{bridge}.mgmt'}", *args]
        return netns.run(argv, f"ovs-ofctl {command} {bridge}", timeout=OVS_TIMEOUT + 10)

    def _daemon(self, name: str, argv: list[str], rundir: Path) -> Daemon:
        daemon = Daemon(name=name, argv=argv, log_path=self.workdir / "logs" / f"{name}.log",
                        env=ovs_env(rundir), cwd=rundir)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def _vswitchd(self, name: str, ns: str, db: str, rundir: Path) -> Daemon:
        return self._daemon(name, netns.in_ns(
            ns, netns.tool("ovs-vswitchd"), db, "--no-chdir",
            f"--unixctl={rundir / 'ovs-vswitchd.ctl'}",
            "-vconsole:warn", "-vsyslog:off", "-vfile:off"), rundir)

    # -- lifecycle ---------------------------------------------------------------
    def start(self, progress=lambda text: None) -> None:
        """Build it all; the caller has checked ``netns.unavailable()`` (``Lab.up``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            progress("dataplane: the hosts' namespace, spine and ESXi host bridges")
            self._start_hosts()
            for host in self.agent_hosts:
                progress(f"dataplane: agent host {host.name} (namespace, Open vSwitch, "
                         f"{', '.join(f'{leaf}/{port}' for leaf, port in host.cabled)})")
                host.start_switch()
            for leaf in self.leaves:
                progress(f"dataplane: {leaf['name']} (ovs-vswitchd + ovs-vtep in its "
                         "namespace)")
                self._start_leaf(leaf)
        except BaseException:
            self.stop()
            raise

    def _add_ns(self, name: str) -> None:
        if name in netns.list_ns():
            netns.del_ns(name)          # left over by a crashed run of this very lab
        self.namespaces.append(name)
        netns.add_ns(name)

    def _start_hosts(self) -> None:
        self._add_ns(self.hosts_ns)
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        conf = self.hosts_dir / "conf.db"
        conf.unlink(missing_ok=True)
        netns.run([netns.tool("ovsdb-tool"), "create", str(conf), str(VSWITCH_SCHEMA)],
                  "ovsdb-tool create (hosts)")
        server = self._daemon("dataplane-hosts-ovsdb", [
            netns.tool("ovsdb-server"), f"--remote=p{self.hosts_db}",
            f"--unixctl={self.hosts_dir / 'ovsdb-server.ctl'}", "--no-chdir",
            "-vconsole:warn", "-vsyslog:off", "-vfile:off", str(conf)], self.hosts_dir)
        wait_until(lambda: (self.hosts_dir / "db.sock").exists(), 15,
                   "the dataplane hosts' ovsdb-server", alive=server)
        self.vsctl(self.hosts_db, "init", wait=False)
        self._vswitchd("dataplane-hosts-vswitchd", self.hosts_ns, self.hosts_db,
                       self.hosts_dir)
        self.vsctl(self.hosts_db, "add-br", "spine", "--", "set", "Bridge", "spine",
                   "datapath_type=netdev")
        for att in self.attachments:
            bridge = host_bridge(att["esxi_host"])
            self.vsctl(self.hosts_db, "add-br", bridge, "--", "set", "Bridge", bridge,
                       "datapath_type=netdev")

    def _start_leaf(self, leaf: dict[str, Any]) -> None:
        name = leaf["name"]
        ns = self.leaf_ns(name)
        switch = LeafSwitch.from_json(leaf)
        if not switch.dataplane:
            raise LabError(f"leaf {name} was started without its Open_vSwitch database")
        db, rundir = switch.db_socket, switch.rundir
        self._add_ns(ns)
        self.vsctl(db, "init", wait=False)
        # The leaf's database outlives a lab (like its hardware_vtep one): start clean.
        for bridge in self.vsctl(db, "list-br", wait=False).split():
            self.vsctl(db, "--if-exists", "del-br", bridge, wait=False)
        self._vswitchd(f"dataplane-{name}-vswitchd", ns, db, rundir)
        self.vsctl(db, "add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev")
        attached = {a["port"]: a for a in self.attachments if a["leaf"] == name}
        agent_links = {port: host for host in self.agent_hosts
                       for leaf_name, port in host.cabled if leaf_name == name}
        for port in leaf["ports"]:
            att = attached.get(port)
            if port in agent_links:
                agent_links[port].cable(name, port, ns)
                self.vsctl(db, "add-port", name, port)
                continue
            if att is None:
                self.vsctl(db, "add-port", name, port, "--", "set", "Interface", port,
                           "type=internal")
                continue
            uplink = host_uplink(att["esxi_host"])
            netns.veth(port, ns, uplink, self.hosts_ns)
            self.vsctl(db, "add-port", name, port)
            self.vsctl(self.hosts_db, "add-port", host_bridge(att["esxi_host"]), uplink)
        # Underlay: leaf <-> spine, the tunnel IP on br-ul's internal port.
        spine_end = f"sp-{name}"[:15]
        netns.veth("ul", ns, spine_end, self.hosts_ns)
        self.vsctl(self.hosts_db, "add-port", "spine", spine_end)
        self.vsctl(db, "add-br", "br-ul", "--", "set", "Bridge", "br-ul",
                   "datapath_type=netdev", "--", "add-port", "br-ul", "ul")
        netns.ip("addr", "add", f"{leaf['tunnel_ip']}/{UNDERLAY_PREFIX}", "dev", "br-ul",
                 ns=ns)
        netns.ip("link", "set", "br-ul", "up", ns=ns)
        self._daemon(f"dataplane-{name}-ovs-vtep", netns.in_ns(
            ns, str(netns.SYSTEM_PYTHON), str(netns.OVS_VTEP),
            f"--log-file={self.workdir / 'logs' / f'ovs-vtep-{name}.log'}",
            "-vconsole:off", name), rundir)

    def stop(self) -> None:
        for host in self.agent_hosts:
            host.stop()
        for daemon in reversed(self.daemons):
            daemon.stop()
        for name in set(self.namespaces) | set(self._vm_namespaces()):
            # A VM's DHCP client (its starter may be gone) would keep a deleted
            # namespace alive: the namespace is the lab's, so are its processes.
            netns.kill_pids(name)
            netns.del_ns(name)

    def _vm_namespaces(self) -> list[str]:
        prefix = f"dvsf-{self.tag}-"
        return [ns for ns in netns.list_ns() if ns.startswith(prefix)]

    def running(self) -> dict[str, bool]:
        running = {d.name: d.running() for d in self.daemons}
        for host in self.agent_hosts:
            running.update(host.running())
        return running

    # -- VMs ---------------------------------------------------------------------
    def attach_vm(self, vm_moid: str, index: int, mac: str, address: str | None,
                  esxi_host: str, vlan: int, ofport: int | None = None) -> str:
        """A namespace for the VM's NIC on its host's bridge, tagged ``vlan``; ``ofport``:
        the OpenFlow port number to ask for (flows naming it may be in place already)."""
        ns = self.nic_ns(vm_moid, index)
        link = self.vm_link(vm_moid, index)
        self.detach_vm(vm_moid, index)
        netns.add_ns(ns)
        netns.veth("eth0", ns, link, self.hosts_ns, mtu=VM_MTU)
        netns.ip("link", "set", "eth0", "down", ns=ns)
        netns.ip("link", "set", "eth0", "address", mac, ns=ns)
        netns.ip("link", "set", "eth0", "up", ns=ns)
        if address:
            netns.ip("addr", "add", address, "dev", "eth0", ns=ns)
        self.vsctl(self.hosts_db, "add-port", host_bridge(esxi_host), link,
                   f"tag={int(vlan)}", *_ofport_request(link, ofport))
        return ns

    def move_vm(self, vm_moid: str, index: int, esxi_host: str, vlan: int,
                ofport: int | None = None) -> None:
        """The switchover of a vMotion: the VM's link leaves one host for another.

        One OVSDB transaction, so the link is never on two bridges.
        """
        link = self.vm_link(vm_moid, index)
        self.vsctl(self.hosts_db, "--if-exists", "del-port", link, "--",
                   "add-port", host_bridge(esxi_host), link, f"tag={int(vlan)}",
                   *_ofport_request(link, ofport))

    def link_ofport(self, vm_moid: str, index: int = 0) -> int:
        """The OpenFlow port number the VM's link has on its bridge."""
        return int(self.vsctl(self.hosts_db, "get", "Interface",
                              self.vm_link(vm_moid, index), "ofport").strip())

    def detach_vm(self, vm_moid: str, index: int = 0) -> None:
        link = self.vm_link(vm_moid, index)
        self.vsctl(self.hosts_db, "--if-exists", "del-port", link)
        netns.del_ns(self.nic_ns(vm_moid, index))

    # -- state file ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "tag": self.tag, "leaves": self.leaves,
                "attachments": self.attachments, "namespaces": self.namespaces,
                "hosts_db": self.hosts_db,
                "daemons": [d.to_json() for d in self.daemons],
                "agent_hosts": [host.to_json() for host in self.agent_hosts]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Dataplane":
        plane = cls(Path(data["workdir"]), data["tag"], data["leaves"], data["attachments"],
                    [AgentHost.from_json(h) for h in data.get("agent_hosts", [])])
        plane.namespaces = list(data.get("namespaces", []))
        plane.daemons = [Daemon.from_json(d) for d in data.get("daemons", [])]
        return plane
