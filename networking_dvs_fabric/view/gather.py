"""Read the live state behind ``dvs-fabric topology`` into one plain, JSON-able dict.

Sources, each read once and read-only:

- the topology file: leaves (name, tunnel IP) and the cabling (host -> leaf ports);
- vCenter: clusters, ESXi hosts, every VM of the datacenter with its NICs (one
  ``VmWatch.resync()``), the port groups of every mapped DVS with VLAN and owner;
- every leaf: ``FabricBackend.read`` (VLAN -> VNI bindings, remote MACs, flooding);
- Neutron's database: network names and VXLAN segmentation ids.

A source that cannot be read is named in ``unreachable`` and its part of the view is
``null`` ("not known"), never empty: an unreachable leaf has ``reachable: false`` and
``bindings: null`` on its ports; with vCenter unreachable an ESXi host's ``vms`` is
null.  A non-vSphere host's ``vms`` is null too (nothing here knows them).

The document (``dvs-fabric topology --json``), version 1::

  version      1
  topology_file  path of the topology file read (null: none configured)
  leaves       [{name, tunnel_ip, reachable, error,
                 ports: [{name, hosts: [host], bindings: [{vlan, vni, network_id,
                                                           network_name}] | null}],
                 logical_switches: [{network_id, network_name, vni, flood_to: [leaf]}] | null,
                 remote_macs: [{mac, network_id, tunnel_ip, leaf}] | null}]
  clusters     [{name, binding_hosts: [Nova compute host], hosts: [host]}]
  hosts        [{name, kind: "esxi" | "other", cluster, physical_network, dvs: [name],
                 in_topology, in_vcenter, attachments: [{leaf, port}],
                 vms: [{name, moid, powered_on, nics: [{mac, port_group, port_group_key,
                        dvs, vlan, network_id, network_name, port_id}]}] | null}]
  networks     [{id, name, vni, neutron_vni, port_groups: [{dvs, name, key, vlan}],
                 leaf_ports: [{leaf, port, vlan}], vms: [VM name]}]
  vcenter      {configured, reachable, datacenter, error}
  unreachable  [what could not be read, and why]

``vni`` is what the leaves hold (Neutron's VXLAN segmentation id when no leaf holds
the network); ``neutron_vni`` is Neutron's.  ``port_id`` is the Neutron port the NIC
carries: one Nova named in the VM (``nvp.iface-id.N``) whose MAC, network and device
the NIC and VM match (``vm_state.place``, as the watcher checks); ``network_id`` is
the owner of the NIC's port group (null: not a port group of ours).  Lists are in a stable order.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

from networking_dvs_fabric.fabric.api import FabricError, NetworkOnLeaf
from networking_dvs_fabric.topology import Topology
from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.portgroups import PortGroup, PortGroupManager
from networking_dvs_fabric.vcenter.vm_state import VmState, place
from networking_dvs_fabric.vcenter.vm_watch import VmWatch

SCHEMA_VERSION = 1
NameOf = Callable[[str | None], str | None]


def natural_key(text: str) -> list[Any]:
    """swp2 before swp10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


@dataclasses.dataclass(frozen=True)
class LeafRead:
    networks: Mapping[str, NetworkOnLeaf] | None      # None: could not be read
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class VCenterRead:
    clusters: Mapping[str, list[str]]                 # cluster -> ESXi host names
    hosts: list[str]                                  # every ESXi host of the datacenter
    host_dvs: Mapping[str, list[str]]                 # ESXi host -> DVSs it is a member of
    dvs_names: Mapping[str, str]                      # DVS uuid -> name
    # (DVS uuid, port group key) -> (DVS name, port group), for the mapped DVSs
    port_groups: Mapping[tuple[str, str], tuple[str, PortGroup]]
    vms: list[VmState]


@dataclasses.dataclass
class Sources:
    """Everything read; ``assemble`` turns it into the document."""

    topology: Topology | None
    leaves: dict[str, LeafRead]
    vcenter: VCenterRead | None
    networks: dict[str, tuple[str | None, int | None]]  # Neutron: id -> (name, VXLAN VNI)
    unreachable: list[str]
    datacenter: str | None = None                     # None: vCenter not configured
    vcenter_error: str | None = None
    host_mappings: Mapping[str, str] = dataclasses.field(default_factory=dict)


# -- reading ----------------------------------------------------------------------------
def read_leaves(topology: Topology, fabric: Any) -> dict[str, LeafRead]:
    out = {}
    for name in topology.leaves:
        try:
            out[name] = LeafRead(fabric.read(name))
        except FabricError as exc:
            out[name] = LeafRead(None, str(exc))
    return out


def read_vcenter(vsphere: Any) -> VCenterRead:
    """Clusters, hosts, port groups and VMs; raises ``VCenterError`` (never half-empty)."""
    inventory = vsphere.inventory(refresh=True)
    by_moid = {moid: name for name, moid in inventory.hosts.items()}
    port_groups: dict[tuple[str, str], tuple[str, PortGroup]] = {}
    for dvs_name in sorted(set(vsphere.settings.dvs_mappings.values())):
        dvs = inventory.dvs[dvs_name]
        manager = PortGroupManager(vsphere.session, dvs, inventory.datacenter_moid)
        for pg in manager.list(full=True):
            port_groups[(dvs.uuid, pg.key)] = (dvs_name, pg)
    watch = VmWatch(vsphere.session, inventory.datacenter_moid)
    try:
        vms = watch.resync()
    finally:
        watch.close()
    return VCenterRead(
        clusters={c: sorted((by_moid[m] for m in moids if m in by_moid), key=natural_key)
                  for c, moids in inventory.clusters.items()},
        hosts=sorted(inventory.hosts, key=natural_key),
        host_dvs={name: sorted(d.name for d in inventory.dvs.values() if moid in d.host_ids)
                  for name, moid in inventory.hosts.items()},
        dvs_names={d.uuid: d.name for d in inventory.dvs.values()},
        port_groups=port_groups, vms=vms)


def read_neutron_networks(context: Any,
                          ids: set[str]) -> dict[str, tuple[str | None, int | None]]:
    """id -> (name, VNI: its first VXLAN segment's id) for the networks named."""
    if not ids:
        return {}
    from neutron.db import models_v2
    from neutron.db.models import segment as segment_models
    from neutron_lib import constants as n_const
    from neutron_lib.db import api as db_api

    from networking_dvs_fabric.fabric.intent import first_vxlan_segments
    segment = segment_models.NetworkSegment
    with db_api.CONTEXT_READER.using(context):
        session = context.session
        names = dict(session.query(models_v2.Network.id, models_v2.Network.name)
                     .filter(models_v2.Network.id.in_(ids)))
        vxlan = session.query(segment.id, segment.network_id, segment.network_type,
                              segment.segmentation_id, segment.segment_index).filter(
            segment.network_id.in_(ids), segment.network_type == n_const.TYPE_VXLAN).all()
    vnis = {nid: s.segmentation_id for nid, s in first_vxlan_segments(vxlan).items()}
    return {nid: (names[nid] or None, vnis.get(nid)) for nid in names}


def network_ids(leaves: Mapping[str, LeafRead], vcenter: VCenterRead | None) -> set[str]:
    """Every network something live holds: a leaf, or a port group of ours."""
    ids = {nid for read in leaves.values() for nid in (read.networks or {})}
    if vcenter is not None:
        ids |= {pg.network_id for _, pg in vcenter.port_groups.values() if pg.network_id}
    return ids


def gather(context: Any, parts: Any) -> dict[str, Any]:
    """The view from ``sync.audit.Parts`` and a Neutron DB context."""
    from oslo_db import exception as db_exc
    src = Sources(topology=parts.topology, leaves={}, vcenter=None, networks={},
                  unreachable=[])
    if parts.topology is not None and parts.fabric is not None:
        src.leaves = read_leaves(parts.topology, parts.fabric)
        src.unreachable += [f"leaf {name}: {read.error}"
                            for name, read in src.leaves.items() if read.networks is None]
    if parts.vsphere is not None:
        src.datacenter = parts.vsphere.settings.datacenter
        src.host_mappings = dict(parts.vsphere.settings.host_mappings)
        try:
            src.vcenter = read_vcenter(parts.vsphere)
        except errors.VCenterError as exc:
            src.vcenter_error = str(exc)
            src.unreachable.append(f"vCenter: {exc}")
    try:
        src.networks = read_neutron_networks(context, network_ids(src.leaves, src.vcenter))
        if src.vcenter is not None:
            src.vcenter = place_ports(context, src.vcenter)
    except db_exc.DBError as exc:
        src.unreachable.append(f"Neutron database (network names, ports): {exc}")
    return assemble(src)


def place_ports(context: Any, vc: VCenterRead) -> VCenterRead:
    """Each VM's NICs with the Neutron port each carries, checked as the watcher does."""
    from networking_dvs_fabric.watcher.claims import port_facts
    facts = port_facts(context, {port for vm in vc.vms for port in vm.claims})
    networks = {key: pg.network_id for (_, key), (_, pg) in vc.port_groups.items()}
    return dataclasses.replace(vc, vms=[place(vm, facts, networks.get)[0] for vm in vc.vms])


# -- the document ---------------------------------------------------------------------
def assemble(src: Sources) -> dict[str, Any]:
    def name_of(network_id: str | None) -> str | None:
        return src.networks.get(network_id or "", (None, None))[0]

    topology = src.topology
    leaf_specs = topology.leaves if topology is not None else {}
    leaf_of_ip = {spec.tunnel_ip: name for name, spec in leaf_specs.items()}
    cabling: dict[tuple[str, str], list[str]] = {}
    for host in (topology.hosts.values() if topology is not None else ()):
        for att in host.attachments:
            cabling.setdefault((att.leaf_port.leaf, att.leaf_port.port), []).append(host.name)
    leaves = [_leaf_doc(name, spec.tunnel_ip, src.leaves.get(name, LeafRead(None, "not read")),
                        cabling, name_of, leaf_of_ip) for name, spec in leaf_specs.items()]
    hosts = _host_docs(src, name_of)
    vc = src.vcenter
    clusters = [{"name": name,
                 "binding_hosts": sorted(b for b, c in src.host_mappings.items() if c == name),
                 "hosts": members}
                for name, members in sorted(vc.clusters.items())] if vc is not None else []
    return {
        "version": SCHEMA_VERSION,
        "topology_file": topology.source if topology is not None else None,
        "leaves": leaves,
        "clusters": clusters,
        "hosts": hosts,
        "networks": _network_docs(src, leaves, hosts),
        "vcenter": {"configured": src.datacenter is not None,
                    "reachable": (vc is not None) if src.datacenter is not None else None,
                    "datacenter": src.datacenter, "error": src.vcenter_error},
        "unreachable": list(src.unreachable),
    }


def _leaf_doc(name: str, tunnel_ip: str, read: LeafRead,
              cabling: Mapping[tuple[str, str], list[str]], name_of: NameOf,
              leaf_of_ip: Mapping[str, str]) -> dict[str, Any]:
    held = read.networks
    ports = {port for leaf, port in cabling if leaf == name}
    if held is not None:
        ports |= {port for net in held.values() for port, _ in net.bindings}
    port_docs = []
    for port in sorted(ports, key=natural_key):
        bindings = None
        if held is not None:
            bindings = sorted(({"vlan": vlan, "vni": net.vni, "network_id": nid,
                                "network_name": name_of(nid)}
                               for nid, net in held.items()
                               for bound_port, vlan in net.bindings if bound_port == port),
                              key=lambda b: (b["vlan"], b["network_id"]))
        port_docs.append({"name": port, "hosts": list(cabling.get((name, port), [])),
                          "bindings": bindings})
    switches = macs = None
    if held is not None:
        switches = [{"network_id": nid, "network_name": name_of(nid), "vni": net.vni,
                     "flood_to": sorted(leaf_of_ip.get(ip, ip) for ip in net.flood_tunnel_ips)}
                    for nid, net in sorted(held.items(), key=lambda i: (i[1].vni, i[0]))]
        macs = sorted(({"mac": mac, "network_id": nid, "tunnel_ip": ip,
                        "leaf": leaf_of_ip.get(ip)}
                       for nid, net in held.items() for mac, ip in net.remote_macs),
                      key=lambda m: (m["network_id"], m["mac"]))
    return {"name": name, "tunnel_ip": tunnel_ip, "reachable": held is not None,
            "error": read.error, "ports": port_docs, "logical_switches": switches,
            "remote_macs": macs}


def _host_docs(src: Sources, name_of: NameOf) -> list[dict[str, Any]]:
    vc = src.vcenter
    entries = dict(src.topology.hosts) if src.topology is not None else {}
    in_vcenter = set(vc.hosts) if vc is not None else set()
    names = list(entries) + [h for h in (vc.hosts if vc else []) if h not in entries]
    cluster_of = {h: c for c, members in (vc.clusters.items() if vc else ()) for h in members}
    vms_by_host: dict[str, list[VmState]] = {}
    for vm in (vc.vms if vc is not None else ()):
        vms_by_host.setdefault(vm.host or "", []).append(vm)
    docs = []
    for name in names:
        entry = entries.get(name)
        esxi = name in in_vcenter or (entry is not None and entry.physical_network is None)
        vms = None
        if esxi and vc is not None:
            vms = [_vm_doc(vm, vc, name_of)
                   for vm in sorted(vms_by_host.get(name, []), key=lambda v: natural_key(v.name))]
        docs.append({
            "name": name, "kind": "esxi" if esxi else "other",
            "cluster": cluster_of.get(name),
            "physical_network": entry.physical_network if entry is not None else None,
            "dvs": list(vc.host_dvs.get(name, [])) if vc is not None else [],
            "in_topology": entry is not None,
            "in_vcenter": (name in in_vcenter) if vc is not None else None,
            "attachments": [{"leaf": a.leaf_port.leaf, "port": a.leaf_port.port}
                            for a in (entry.attachments if entry is not None else ())],
            "vms": vms})
    return docs


def _vm_doc(vm: VmState, vc: VCenterRead, name_of: NameOf) -> dict[str, Any]:
    nics = []
    for nic in vm.nics:
        dvs, pg = vc.port_groups.get((nic.dvs_uuid or "", nic.port_group_key or ""),
                                     (vc.dvs_names.get(nic.dvs_uuid or ""), None))
        nics.append({"mac": nic.mac, "port_group": pg.name if pg else None,
                     "port_group_key": nic.port_group_key, "dvs": dvs,
                     "vlan": pg.vlan if pg else None,
                     "network_id": pg.network_id if pg else None,
                     "network_name": name_of(pg.network_id) if pg else None,
                     "port_id": nic.iface_id})
    return {"name": vm.name, "moid": vm.moid, "powered_on": vm.powered_on, "nics": nics}


def _network_docs(src: Sources, leaves: list[dict[str, Any]],
                  hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    vc = src.vcenter
    docs = []
    for nid in network_ids(src.leaves, vc):
        name, neutron_vni = src.networks.get(nid, (None, None))
        on_leaves = [read.networks[nid] for read in src.leaves.values()
                     if read.networks is not None and nid in read.networks]
        leaf_vnis = sorted({net.vni for net in on_leaves})
        docs.append({
            "id": nid, "name": name,
            "vni": leaf_vnis[0] if leaf_vnis else neutron_vni,
            "neutron_vni": neutron_vni,
            "port_groups": sorted(({"dvs": dvs, "name": pg.name, "key": pg.key, "vlan": pg.vlan}
                                   for dvs, pg in (vc.port_groups.values() if vc else ())
                                   if pg.network_id == nid),
                                  key=lambda p: (p["dvs"], p["name"])),
            "leaf_ports": [{"leaf": leaf["name"], "port": port["name"], "vlan": b["vlan"]}
                           for leaf in leaves for port in leaf["ports"]
                           for b in port["bindings"] or () if b["network_id"] == nid],
            "vms": sorted({vm["name"] for host in hosts for vm in host["vms"] or ()
                           for nic in vm["nics"] if nic["network_id"] == nid},
                          key=natural_key)})
    docs.sort(key=lambda d: (d["vni"] is None, d["vni"] or 0, d["name"] or "", d["id"]))
    return docs
