"""The topology view as text (``dvs-fabric topology``) and JSON (``--json``)."""
from __future__ import annotations

import json
from typing import Any


def to_json(view: dict[str, Any]) -> str:
    return json.dumps(view, indent=2)


def network_label(network_id: str | None, name: str | None) -> str:
    """A network as people say it: its name, else the start of its id."""
    if name:
        return name
    return network_id[:8] if network_id else "-"


def _binding(b: dict[str, Any]) -> str:
    name = network_label(b["network_id"], b["network_name"])
    return f"VLAN {b['vlan']} -> VNI {b['vni']} ({name})"


def _leaves(view: dict[str, Any]) -> list[str]:
    names = {net["id"]: net["name"] for net in view["networks"]}
    lines = []
    for leaf in view["leaves"]:
        if not leaf["reachable"]:
            lines.append(f"leaf {leaf['name']}  tunnel {leaf['tunnel_ip']}  "
                         f"UNREACHABLE: {leaf['error']}")
        else:
            lines.append(f"leaf {leaf['name']}  tunnel {leaf['tunnel_ip']}")
        for port in leaf["ports"]:
            behind = ", ".join(port["hosts"]) or "(not cabled in the topology file)"
            if port["bindings"] is None:
                bound = ["bindings unknown"]
            else:
                bound = [_binding(b) for b in port["bindings"]] or ["no VLAN bindings"]
            lines.append(f"  {port['name']:8} {behind:28} {bound[0]}")
            lines.extend(f"  {'':8} {'':28} {more}" for more in bound[1:])
        for mac in leaf["remote_macs"] or ():
            where = mac["leaf"] or mac["tunnel_ip"]
            lines.append(f"  remote MAC {mac['mac']} -> {where} ({mac['tunnel_ip']}) "
                         f"{network_label(mac['network_id'], names.get(mac['network_id']))}")
    return lines


def _nic(nic: dict[str, Any]) -> str:
    if nic["network_id"]:
        net = (f"{network_label(nic['network_id'], nic['network_name'])} "
               f"VLAN {nic['vlan']}")
    else:
        net = f"port group {nic['port_group'] or nic['port_group_key'] or '-'} (not ours)"
    port = f"  port {nic['port_id']}" if nic["port_id"] else ""
    return f"{nic['mac'] or '-':17}  {net}{port}"


def _host(host: dict[str, Any]) -> list[str]:
    cabled = ", ".join(f"{a['leaf']}/{a['port']}" for a in host["attachments"]) \
        or "not in the topology file"
    if host["kind"] != "esxi":
        what = f"other host, {host['physical_network']}"
    elif host["in_vcenter"] is None:
        what = "DVS unknown"
    else:
        what = ", ".join(host["dvs"]) or "on no DVS"
    lines = [f"  {host['name']:14} {cabled:24} {what}"]
    if host["vms"] is None:
        lines.append("      VMs unknown: vCenter unreachable" if host["kind"] == "esxi"
                     else "      (not a vSphere host: its VMs are not known here)")
    elif not host["vms"]:
        lines.append("      no VMs")
    for vm in host["vms"] or ():
        state = "" if vm["powered_on"] else "  (powered off)"
        lines.append(f"      VM {vm['name']}{state}")
        lines.extend(f"         {_nic(nic)}" for nic in vm["nics"])
    return lines


def _hosts(view: dict[str, Any]) -> list[str]:
    lines = []
    grouped = {name for cluster in view["clusters"] for name in cluster["hosts"]}
    by_name = {h["name"]: h for h in view["hosts"]}
    for cluster in view["clusters"]:
        members = [by_name[name] for name in cluster["hosts"] if name in by_name]
        nova = ", ".join(cluster["binding_hosts"]) or "no Nova compute host mapped"
        lines.append(f"cluster {cluster['name']}  ({nova})")
        for host in members:
            lines.extend(_host(host))
    rest = [h for h in view["hosts"] if h["name"] not in grouped]
    if rest:
        lines.append("hosts outside a cluster" if view["vcenter"]["reachable"] is not False
                     else "hosts (clusters unknown: vCenter not read)")
        for host in rest:
            lines.extend(_host(host))
    return lines


def _networks(view: dict[str, Any]) -> list[str]:
    lines = ["networks"]
    for net in view["networks"]:
        vni = net["vni"] if net["vni"] is not None else "-"
        lines.append(f"  {network_label(net['id'], net['name']):20} VNI {vni:<6} {net['id']}")
        if net["neutron_vni"] is not None and net["neutron_vni"] != net["vni"]:
            lines.append(f"      Neutron's VNI is {net['neutron_vni']}")
        for pg in net["port_groups"]:
            lines.append(f"      port group {pg['dvs']}/{pg['name']}  VLAN {pg['vlan']}")
        if net["leaf_ports"]:
            lines.append("      leaf ports: " + ", ".join(
                f"{p['leaf']}/{p['port']} VLAN {p['vlan']}" for p in net["leaf_ports"]))
        if net["vms"]:
            lines.append("      VMs: " + ", ".join(net["vms"]))
    if not view["networks"]:
        lines.append("  none on the leaves or the DVS")
    return lines


def format_text(view: dict[str, Any]) -> str:
    sections = [_leaves(view), _hosts(view), _networks(view)]
    if view["unreachable"]:
        sections.append([f"UNREACHABLE  {what}" for what in view["unreachable"]])
    return "\n\n".join("\n".join(lines) for lines in sections if lines)
