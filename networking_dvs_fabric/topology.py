"""Where things are: leaves, the hosts behind their ports, and each host's physical network.

One place answers "which physical network and which leaf ports serve this binding
host?".  The operator writes the leaves and the cabling in a YAML file; which ESXi
hosts make up a cluster, and which DVS (so which physical network) an ESXi host is
on, comes from vCenter through a :class:`HostDirectory`.

The file::

    leaves:
      - name: leaf1
        ovsdb: tcp:192.0.2.11:6640          # or ssl:HOST:PORT, unix:/path
        tunnel_ip: 10.0.0.1
        ssl: {private_key: /etc/..., certificate: /etc/..., ca_cert: /etc/...}  # ssl: only
    hosts:
      - name: esx-01.example.com             # an ESXi host: physical network from vCenter
        attachments:
          - {leaf: leaf1, port: swp1}
          - {leaf: leaf2, port: swp1, dvs: DVS-A}   # dvs: when the host is on several DVSs
      - name: kvm-07                         # any other host names its physical network
        physical_network: physnet-kvm
        attachments: [{leaf: leaf2, port: swp7}]

Everything is checked when the file is loaded; an error names the entry.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

import yaml


class TopologyError(ValueError):
    """The topology file is wrong; the message names the file and the entry."""


@dataclasses.dataclass(frozen=True)
class SslFiles:
    private_key: str
    certificate: str
    ca_cert: str


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One leaf as the topology names it."""

    name: str
    ovsdb: str                  # tcp:HOST:PORT, ssl:HOST:PORT or unix:PATH
    tunnel_ip: str
    ssl: SslFiles | None = None


@dataclasses.dataclass(frozen=True, order=True)
class LeafPort:
    leaf: str
    port: str


@dataclasses.dataclass(frozen=True)
class Attachment:
    leaf_port: LeafPort
    dvs: str | None = None       # only for ESXi hosts on several DVSs


@dataclasses.dataclass(frozen=True)
class HostEntry:
    name: str
    physical_network: str | None          # None: an ESXi host, asked of vCenter
    attachments: tuple[Attachment, ...]


@dataclasses.dataclass(frozen=True)
class Placement:
    """The answer for one binding host.

    ``leaf_ports``: the ports that must carry the network's VLAN for this host (for a
    cluster: every port of every ESXi host of the cluster, pre-provisioned).
    ``location``: the leaf behind which the host's ports live, when the binding host is
    the machine itself (an ESXi or KVM host); None for a cluster, where the VM's host
    is only known from vCenter.
    """

    binding_host: str
    physical_network: str
    leaf_ports: frozenset[LeafPort]
    location: str | None


class HostDirectory(Protocol):
    """What vCenter tells the topology (see ``vcenter/hosts.py``)."""

    def esxi_hosts(self, binding_host: str) -> list[str] | None:
        """ESXi host names behind a binding host (a mapped cluster, or an ESXi host)."""

    def physical_networks(self, esxi_host: str) -> dict[str, str]:
        """physical_network -> DVS name for every mapped DVS the ESXi host is on."""

    def mapped_physical_networks(self) -> frozenset[str]:
        """Every physical network mapped to a DVS (configuration only, no vCenter call)."""


_ENDPOINT_KINDS = ("tcp", "ssl", "unix")


def _check_endpoint(where: str, endpoint: Any) -> str:
    if not isinstance(endpoint, str) or ":" not in endpoint:
        raise TopologyError(f"{where}: ovsdb must be tcp:HOST:PORT, ssl:HOST:PORT or "
                            f"unix:PATH, got {endpoint!r}")
    kind, _, rest = endpoint.partition(":")
    if kind not in _ENDPOINT_KINDS:
        raise TopologyError(f"{where}: ovsdb {endpoint!r}: unknown kind {kind!r} "
                            f"(use {', '.join(_ENDPOINT_KINDS)})")
    if kind == "unix":
        if not rest:
            raise TopologyError(f"{where}: ovsdb {endpoint!r}: empty socket path")
        return endpoint
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TopologyError(f"{where}: ovsdb {endpoint!r}: expected {kind}:HOST:PORT "
                            "with a port between 1 and 65535")
    return endpoint


def _check_ip(where: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise TopologyError(f"{where}: tunnel_ip {value!r} is not an IP address") from None


def _mapping(where: str, value: Any, allowed: Iterable[str], required: Iterable[str]) -> dict:
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise TopologyError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                            f"(allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if value.get(key) in (None, ""):
            raise TopologyError(f"{where}: {key} is required")
    return value


def _leaf(where: str, raw: Any) -> LeafSpec:
    raw = _mapping(where, raw, ("name", "ovsdb", "tunnel_ip", "ssl"),
                   ("name", "ovsdb", "tunnel_ip"))
    where = f"{where} ({raw['name']})"
    endpoint = _check_endpoint(where, raw["ovsdb"])
    ssl = None
    if raw.get("ssl") is not None:
        files = _mapping(f"{where}: ssl", raw["ssl"], ("private_key", "certificate", "ca_cert"),
                         ("private_key", "certificate", "ca_cert"))
        for key in ("private_key", "certificate", "ca_cert"):
            path = files[key]
            if not os.access(str(path), os.R_OK):
                raise TopologyError(f"{where}: ssl {key} {path!r} is not a readable file")
        ssl = SslFiles(str(files["private_key"]), str(files["certificate"]),
                       str(files["ca_cert"]))
    if endpoint.startswith("ssl:") and ssl is None:
        raise TopologyError(f"{where}: an ssl: endpoint needs ssl: {{private_key, "
                            "certificate, ca_cert}}")
    return LeafSpec(name=str(raw["name"]), ovsdb=endpoint,
                    tunnel_ip=_check_ip(where, raw["tunnel_ip"]), ssl=ssl)


class Topology:
    def __init__(self, leaves: Iterable[LeafSpec], hosts: Iterable[HostEntry],
                 source: str = "<topology>") -> None:
        self.source = source
        self.leaves: dict[str, LeafSpec] = {leaf.name: leaf for leaf in leaves}
        self.hosts: dict[str, HostEntry] = {host.name: host for host in hosts}

    # -- loading ----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Topology":
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise TopologyError(f"topology file {source}: cannot read it: "
                                f"{exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise TopologyError(f"topology file {source}: not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<topology>") -> "Topology":
        top = _mapping(f"topology {source}", data if data is not None else {},
                       ("leaves", "hosts"), ("leaves",))
        raw_leaves = top["leaves"]
        if not isinstance(raw_leaves, list) or not raw_leaves:
            raise TopologyError(f"topology {source}: leaves must be a non-empty list")
        leaves: dict[str, LeafSpec] = {}
        tunnel_ips: dict[str, str] = {}
        for i, raw in enumerate(raw_leaves):
            leaf = _leaf(f"topology {source}: leaves[{i}]", raw)
            if leaf.name in leaves:
                raise TopologyError(f"topology {source}: leaves[{i}]: leaf name "
                                    f"{leaf.name!r} used twice")
            if leaf.tunnel_ip in tunnel_ips:
                raise TopologyError(f"topology {source}: leaves[{i}] ({leaf.name}): tunnel_ip "
                                    f"{leaf.tunnel_ip} already used by {tunnel_ips[leaf.tunnel_ip]}")
            leaves[leaf.name] = leaf
            tunnel_ips[leaf.tunnel_ip] = leaf.name
        raw_hosts = top.get("hosts") or []
        if not isinstance(raw_hosts, list):
            raise TopologyError(f"topology {source}: hosts must be a list")
        hosts: dict[str, HostEntry] = {}
        cabled: dict[LeafPort, str] = {}
        for i, raw in enumerate(raw_hosts):
            host = cls._host(f"topology {source}: hosts[{i}]", raw, leaves, cabled)
            if host.name in hosts:
                raise TopologyError(f"topology {source}: hosts[{i}]: host {host.name!r} "
                                    "listed twice")
            hosts[host.name] = host
        return cls(leaves.values(), hosts.values(), source)

    @staticmethod
    def _host(where: str, raw: Any, leaves: Mapping[str, LeafSpec],
              cabled: dict[LeafPort, str]) -> HostEntry:
        raw = _mapping(where, raw, ("name", "physical_network", "attachments"),
                       ("name", "attachments"))
        name = str(raw["name"])
        where = f"{where} ({name})"
        physnet = raw.get("physical_network")
        if physnet is not None and (not isinstance(physnet, str) or not physnet):
            raise TopologyError(f"{where}: physical_network must be a non-empty string")
        if not isinstance(raw["attachments"], list) or not raw["attachments"]:
            raise TopologyError(f"{where}: attachments must be a non-empty list")
        attachments = []
        for j, att in enumerate(raw["attachments"]):
            at = f"{where}: attachments[{j}]"
            att = _mapping(at, att, ("leaf", "port", "dvs"), ("leaf", "port"))
            if att["leaf"] not in leaves:
                raise TopologyError(f"{at}: unknown leaf {att['leaf']!r} (known: "
                                    f"{', '.join(sorted(leaves))})")
            if att.get("dvs") is not None and physnet is not None:
                raise TopologyError(f"{at}: dvs is for ESXi hosts; this host names its "
                                    "physical_network")
            leaf_port = LeafPort(str(att["leaf"]), str(att["port"]))
            if leaf_port in cabled:
                raise TopologyError(f"{at}: {leaf_port.leaf} port {leaf_port.port} is "
                                    f"already attached to {cabled[leaf_port]}")
            cabled[leaf_port] = name
            attachments.append(Attachment(leaf_port, att.get("dvs")))
        return HostEntry(name, physnet, tuple(attachments))

    # -- questions ------------------------------------------------------------
    def leaf_ports(self, leaf: str) -> set[str]:
        return {a.leaf_port.port for h in self.hosts.values() for a in h.attachments
                if a.leaf_port.leaf == leaf}

    def tunnel_ip(self, leaf: str) -> str:
        return self.leaves[leaf].tunnel_ip

    def physical_networks(self, vsphere: HostDirectory | None) -> frozenset[str]:
        """The physical networks the fabric's VLANs can be on: those of the hosts named
        with one here and those mapped to a DVS.  A dynamic VLAN segment on another
        physical network is not the fabric's (another top-level driver's)."""
        named = {h.physical_network for h in self.hosts.values() if h.physical_network}
        return frozenset(named) | (vsphere.mapped_physical_networks() if vsphere else
                                   frozenset())

    def placement(self, binding_host: str, vsphere: HostDirectory | None,
                  physical_network: str | None = None) -> Placement | None:
        """Physical network and leaf ports serving ``binding_host``; None: not ours.

        ``physical_network`` pins the answer to that network (used when the VLAN
        segment is already known); otherwise the host's own, or for vSphere the
        first mapped DVS all of its ESXi hosts are on.
        """
        entry = self.hosts.get(binding_host)
        if entry is not None and entry.physical_network is not None:
            if physical_network not in (None, entry.physical_network):
                return None
            ports = frozenset(a.leaf_port for a in entry.attachments)
            return Placement(binding_host, entry.physical_network, ports,
                             entry.attachments[0].leaf_port.leaf)
        if vsphere is None:
            return None
        esxi = vsphere.esxi_hosts(binding_host)
        if not esxi:
            return None
        per_host = {h: vsphere.physical_networks(h) for h in esxi}
        if physical_network is None:
            common = set.intersection(*(set(p) for p in per_host.values()))
            if not common:
                return None
            # Deterministic: the order the directory lists them in for the first host.
            physical_network = next(p for p in per_host[esxi[0]] if p in common)
        ports: set[LeafPort] = set()
        for host, physnets in per_host.items():
            dvs = physnets.get(physical_network)
            entry = self.hosts.get(host)
            if dvs is None or entry is None:
                continue
            ports.update(a.leaf_port for a in entry.attachments if a.dvs in (None, dvs))
        if not ports:
            return None
        location = None
        if esxi == [binding_host] and binding_host in self.hosts:
            location = sorted(ports)[0].leaf
        return Placement(binding_host, physical_network, frozenset(ports), location)

    def to_dict(self) -> dict[str, Any]:
        """The YAML-able form (what ``load`` reads)."""
        leaves = []
        for leaf in self.leaves.values():
            item: dict[str, Any] = {"name": leaf.name, "ovsdb": leaf.ovsdb,
                                    "tunnel_ip": leaf.tunnel_ip}
            if leaf.ssl is not None:
                item["ssl"] = dataclasses.asdict(leaf.ssl)
            leaves.append(item)
        hosts = []
        for host in self.hosts.values():
            item = {"name": host.name,
                    "attachments": [{"leaf": a.leaf_port.leaf, "port": a.leaf_port.port,
                                     **({"dvs": a.dvs} if a.dvs else {})}
                                    for a in host.attachments]}
            if host.physical_network:
                item["physical_network"] = host.physical_network
            hosts.append(item)
        return {"leaves": leaves, "hosts": hosts}
