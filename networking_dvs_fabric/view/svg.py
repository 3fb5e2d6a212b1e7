"""The topology view (``view/gather.py``'s document) drawn as an SVG picture.

Leaves in a row at the top, their ports along their bottom edge with each port's
VLAN -> VNI bindings above it; hosts in a row below, ESXi hosts grouped by cluster,
VMs as boxes inside their host (name, then per NIC its MAC and VLAN); a line from
every leaf port to the host behind it, one line per network bound on that port in
the network's colour (grey: no binding; red dashed: the leaf could not be read; one
thick dark line: more than ``MOST_PER_PORT`` networks, whose labels end in "+N more").
A legend gives each colour's network name, VNI and VLANs.  Plain ElementTree, no
text measurement: widths are estimated from character counts, long names cut.
"""
from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from typing import Any

from networking_dvs_fabric.view.text import network_label

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#393b79", "#637939", "#8c6d31", "#7b4173")
GREY = "#9a9a9a"
RED = "#c0392b"
MARGIN = 20
LEAF_HEAD, LEAF_MIN_W = 42, 180
PORT_W, PORT_H, PORT_GAP = 104, 22, 10
LABEL_H = 14
MOST_PER_PORT = 8        # labels and coloured lines per port; more: "+N more", one dark line
CABLE_SPACE = 170
GROUP_PAD, GROUP_HEAD, GROUP_GAP = 10, 22, 18
HOST_W, HOST_HEAD, HOST_GAP = 210, 56, 12
VM_HEAD, NIC_H, VM_GAP = 18, 14, 6
STYLE = """
text { font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 11px; fill: #222 }
.title { font-size: 17px; font-weight: bold }
.name { font-size: 14px; font-weight: bold }
.bold { font-weight: bold }
.small { font-size: 10px; fill: #555 }
.mono { font-family: 'DejaVu Sans Mono', monospace; font-size: 10px }
.bad { fill: #c0392b; font-weight: bold }
.leaf { fill: #e8f0fa; stroke: #2c5d8f; stroke-width: 1.5 }
.leaf.down { fill: #fbeaea; stroke: #c0392b; stroke-dasharray: 6 3 }
.port { fill: #ffffff; stroke: #2c5d8f }
.group { fill: #f5f5f5; stroke: #999999; stroke-dasharray: 4 3 }
.host { fill: #ffffff; stroke: #555555; stroke-width: 1.2 }
.host.other { fill: #fff8e8; stroke: #a0762c }
.host.uncabled { stroke-dasharray: 3 3 }
.vm { fill: #fcfcfc; stroke: #aaaaaa }
.vm.off { fill: #e6e6e6 }
.cable { stroke: #9a9a9a; stroke-width: 1.5; fill: none }
.cable.unknown { stroke: #c0392b; stroke-dasharray: 5 4 }
.bound { stroke-width: 2.5; fill: none }
"""


def fit(text: str, width: float, size: float = 11, mono: bool = False) -> str:
    """Cut ``text`` to what fits ``width`` pixels at font ``size`` (an estimate)."""
    most = max(1, int(width / (size * (0.61 if mono else 0.6))))
    return text if len(text) <= most else text[:most - 1] + "\u2026"


class _Canvas:
    def __init__(self) -> None:
        self.root = ET.Element("svg", xmlns="http://www.w3.org/2000/svg", version="1.1")
        ET.SubElement(self.root, "style").text = STYLE
        self.bottom = ET.SubElement(self.root, "g")     # cluster frames
        self.back = ET.SubElement(self.root, "g")       # cables, under leaves and hosts
        self.front = ET.SubElement(self.root, "g")

    def rect(self, x: float, y: float, w: float, h: float, cls: str = "", parent=None,
             **attrs: str) -> ET.Element:
        el = ET.SubElement(self.front if parent is None else parent, "rect",
                           x=_n(x), y=_n(y), width=_n(w), height=_n(h), **attrs)
        if cls:
            el.set("class", cls)
        return el

    def text(self, x: float, y: float, content: str, cls: str = "", anchor: str = "",
             parent=None, **attrs: str) -> ET.Element:
        el = ET.SubElement(self.front if parent is None else parent, "text",
                           x=_n(x), y=_n(y), **attrs)
        el.text = content
        if cls:
            el.set("class", cls)
        if anchor:
            el.set("text-anchor", anchor)
        return el

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str,
             **attrs: str) -> None:
        el = ET.SubElement(self.back, "line", x1=_n(x1), y1=_n(y1), x2=_n(x2), y2=_n(y2),
                           **attrs)
        el.set("class", cls)

    def group(self, tooltip: str) -> ET.Element:
        g = ET.SubElement(self.front, "g")
        ET.SubElement(g, "title").text = tooltip
        return g


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


@dataclasses.dataclass
class _Box:
    x: float
    y: float
    w: float
    h: float


def colours(view: dict[str, Any]) -> dict[str, str]:
    """Network id -> its colour, in the order of ``view["networks"]``."""
    return {net["id"]: PALETTE[i % len(PALETTE)] for i, net in enumerate(view["networks"])}


def _host_groups(view: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    by_name = {h["name"]: h for h in view["hosts"]}
    groups, grouped = [], set()
    for cluster in view["clusters"]:
        members = [by_name[n] for n in cluster["hosts"] if n in by_name]
        if members:
            nova = ", ".join(cluster["binding_hosts"])
            groups.append((f"cluster {cluster['name']}" + (f"  (Nova: {nova})" if nova else ""),
                           members))
            grouped.update(h["name"] for h in members)
    esxi = [h for h in view["hosts"] if h["kind"] == "esxi" and h["name"] not in grouped]
    other = [h for h in view["hosts"] if h["kind"] != "esxi"]
    if esxi:
        groups.append(("ESXi hosts outside a cluster" if view["vcenter"]["reachable"]
                       else "ESXi hosts (clusters unknown: vCenter not read)", esxi))
    if other:
        groups.append(("other hosts", other))
    return groups


def _vm_height(vm: dict[str, Any]) -> float:
    return VM_HEAD + NIC_H * max(1, len(vm["nics"]))


def _host_height(host: dict[str, Any]) -> float:
    vms = host["vms"] or []
    inner = sum(_vm_height(vm) + VM_GAP for vm in vms) if vms else 32
    return HOST_HEAD + inner + 4


def render(view: dict[str, Any]) -> str:
    """The SVG document (a string) for a topology view."""
    canvas = _Canvas()
    colour = colours(view)
    leaves = view["leaves"]
    label_rows = max([1] + [min(len(p["bindings"] or ()), MOST_PER_PORT)
                            for leaf in leaves for p in leaf["ports"]])
    leaf_h = LEAF_HEAD + label_rows * LABEL_H + 8 + PORT_H + 8
    leaf_w = [max(LEAF_MIN_W, len(leaf["ports"]) * (PORT_W + PORT_GAP) + PORT_GAP)
              for leaf in leaves]
    groups = _host_groups(view)
    host_h = max([_host_height(h) for _, members in groups for h in members] + [60])
    hosts_w = sum(2 * GROUP_PAD + len(m) * HOST_W + (len(m) - 1) * HOST_GAP for _, m in groups) \
        + GROUP_GAP * max(0, len(groups) - 1)
    width = max(hosts_w, sum(leaf_w) + 30 * max(0, len(leaves) - 1), 760) + 2 * MARGIN

    y = _header(canvas, view, width)
    ports = _draw_leaves(canvas, view, colour, leaf_w, leaf_h, y, width)
    y += leaf_h + CABLE_SPACE
    x = MARGIN + (width - 2 * MARGIN - hosts_w) / 2
    group_h = GROUP_HEAD + 2 * GROUP_PAD + host_h
    for title, members in groups:
        w = 2 * GROUP_PAD + len(members) * HOST_W + (len(members) - 1) * HOST_GAP
        canvas.rect(x, y, w, group_h, "group", canvas.bottom, rx="8")
        canvas.text(x + GROUP_PAD, y + 16, fit(title, w - 2 * GROUP_PAD), "bold",
                    parent=canvas.bottom)
        for i, host in enumerate(members):
            box = _Box(x + GROUP_PAD + i * (HOST_W + HOST_GAP), y + GROUP_HEAD + GROUP_PAD,
                       HOST_W, host_h)
            _draw_host(canvas, host, box, colour, view)
            _draw_cables(canvas, host, box, ports, colour)
        x += w + GROUP_GAP
    y += group_h + 24
    y = _legend(canvas, view, colour, y, width)
    height = y + MARGIN
    canvas.root.insert(1, ET.Element("rect", width=_n(width), height=_n(height), fill="#ffffff"))
    canvas.root.set("width", _n(width))
    canvas.root.set("height", _n(height))
    canvas.root.set("viewBox", f"0 0 {_n(width)} {_n(height)}")
    ET.indent(canvas.root)
    return ET.tostring(canvas.root, encoding="unicode") + "\n"


def _header(canvas: _Canvas, view: dict[str, Any], width: float) -> float:
    vms = sum(len(h["vms"] or ()) for h in view["hosts"]) \
        if view["vcenter"]["reachable"] is not False else "?"
    where = view["vcenter"]["datacenter"] or "the fabric"
    canvas.text(MARGIN, MARGIN + 14,
                f"{where}: {len(view['leaves'])} leaves, {len(view['hosts'])} hosts, "
                f"{vms} VMs, {len(view['networks'])} networks", "title")
    y = MARGIN + 24
    for what in view["unreachable"]:
        y += 15
        canvas.text(MARGIN, y, fit(f"NOT READ: {what}", width - 2 * MARGIN), "bad")
    return y + 16


def _draw_leaves(canvas: _Canvas, view: dict[str, Any], colour: dict[str, str],
                 leaf_w: list[float], leaf_h: float, y: float,
                 width: float) -> dict[tuple[str, str], tuple[float, float, dict]]:
    """Leaves and ports; (leaf, port) -> (x, y) where its cables start, and the port."""
    ports: dict[tuple[str, str], tuple[float, float, dict]] = {}
    slot = (width - 2 * MARGIN) / max(1, len(view["leaves"]))
    for i, (leaf, w) in enumerate(zip(view["leaves"], leaf_w)):
        x = MARGIN + i * slot + max(0.0, (slot - w) / 2)
        down = not leaf["reachable"]
        canvas.rect(x, y, w, leaf_h, "leaf down" if down else "leaf", rx="6")
        canvas.text(x + 10, y + 18, leaf["name"] + ("  UNREACHABLE" if down else ""),
                    "name bad" if down else "name")
        canvas.text(x + 10, y + 34, f"tunnel {leaf['tunnel_ip']}", "small")
        for j, port in enumerate(leaf["ports"]):
            px = x + PORT_GAP + j * (PORT_W + PORT_GAP)
            py = y + leaf_h - 8 - PORT_H
            bindings = port["bindings"] or []
            for k, b in enumerate(bindings):
                ly = y + LEAF_HEAD + k * LABEL_H + 10
                if k == MOST_PER_PORT - 1 and len(bindings) > MOST_PER_PORT:
                    canvas.text(px + 15, ly, f"+{len(bindings) - k} more", "small")
                    break
                canvas.rect(px + 2, ly - 8, 9, 9, fill=colour.get(b["network_id"], GREY))
                canvas.text(px + 15, ly, fit(f"{b['vlan']} \u2192 {b['vni']}", PORT_W - 15))
            if port["bindings"] is None:
                canvas.text(px + 2, y + LEAF_HEAD + 10, "bindings unknown", "small")
            canvas.rect(px, py, PORT_W, PORT_H, "port", rx="3")
            canvas.text(px + PORT_W / 2, py + 15, fit(port["name"], PORT_W - 6), anchor="middle")
            ports[(leaf["name"], port["name"])] = (px + PORT_W / 2, py + PORT_H, port)
    return ports


def _draw_host(canvas: _Canvas, host: dict[str, Any], box: _Box, colour: dict[str, str],
               view: dict[str, Any]) -> None:
    cls = "host" + ("" if host["kind"] == "esxi" else " other") + \
        ("" if host["attachments"] else " uncabled")
    canvas.rect(box.x, box.y, box.w, box.h, cls, rx="5")
    canvas.text(box.x + 8, box.y + 17, fit(host["name"], box.w - 16, 14), "name")
    cabled = ", ".join(f"{a['leaf']}/{a['port']}" for a in host["attachments"]) or \
        "not in the topology file"
    if host["kind"] != "esxi":
        where = host["physical_network"] or "-"
    elif host["in_vcenter"] is None:
        where = "DVS unknown"
    else:
        where = ", ".join(host["dvs"]) or "no DVS"
    canvas.text(box.x + 8, box.y + 32, fit(cabled, box.w - 16, 10), "small")
    canvas.text(box.x + 8, box.y + 45, fit(where, box.w - 16, 10), "small")
    y = box.y + HOST_HEAD
    if host["vms"] is None and host["kind"] == "esxi":
        canvas.text(box.x + 8, y + 12, "VMs unknown:", "bad")
        canvas.text(box.x + 8, y + 26, "vCenter unreachable", "bad")
    elif host["vms"] is None:
        canvas.text(box.x + 8, y + 12, "not a vSphere host", "small")
    elif not host["vms"]:
        canvas.text(box.x + 8, y + 12, "no VMs", "small")
    for vm in host["vms"] or ():
        h = _vm_height(vm)
        _draw_vm(canvas, vm, _Box(box.x + 8, y, box.w - 16, h), colour)
        y += h + VM_GAP


def _draw_vm(canvas: _Canvas, vm: dict[str, Any], box: _Box, colour: dict[str, str]) -> None:
    ports = ", ".join(n["port_id"] for n in vm["nics"] if n["port_id"]) or "none"
    g = canvas.group(f"VM {vm['name']} ({vm['moid']}), Neutron ports: {ports}")
    canvas.rect(box.x, box.y, box.w, box.h, "vm" if vm["powered_on"] else "vm off", g, rx="3")
    first = next((n["network_id"] for n in vm["nics"] if n["network_id"]), None)
    canvas.rect(box.x, box.y, 5, box.h, parent=g, fill=colour.get(first or "", GREY))
    name = vm["name"] + ("" if vm["powered_on"] else " (off)")
    canvas.text(box.x + 10, box.y + 13, fit(name, box.w - 14), "bold", parent=g)
    if not vm["nics"]:
        canvas.text(box.x + 10, box.y + VM_HEAD + 10, "no NIC", "small", parent=g)
    for i, nic in enumerate(vm["nics"]):
        ny = box.y + VM_HEAD + i * NIC_H + 10
        canvas.rect(box.x + 10, ny - 8, 8, 8, parent=g,
                    fill=colour.get(nic["network_id"] or "", GREY))
        if nic["network_id"]:
            tail = f"VLAN {nic['vlan']}"
        else:
            tail = nic["port_group"] or "not ours"
        canvas.text(box.x + 22, ny, fit(f"{nic['mac']} {tail}", box.w - 26, 10, True),
                    "mono", parent=g)


def _draw_cables(canvas: _Canvas, host: dict[str, Any], box: _Box,
                 ports: dict[tuple[str, str], tuple[float, float, dict]],
                 colour: dict[str, str]) -> None:
    count = len(host["attachments"])
    for i, att in enumerate(host["attachments"]):
        start = ports.get((att["leaf"], att["port"]))
        if start is None:
            continue
        sx, sy, port = start
        hx, hy = box.x + box.w * (i + 1) / (count + 1), box.y
        if port["bindings"] is None:
            canvas.line(sx, sy, hx, hy, "cable unknown")
            continue
        if not port["bindings"]:
            canvas.line(sx, sy, hx, hy, "cable")
            continue
        if len(port["bindings"]) > MOST_PER_PORT:
            canvas.line(sx, sy, hx, hy, "bound", stroke="#333333", **{"stroke-width": "5"})
            continue
        # Side by side: offsets along the normal of the line, 3.5 px apart.
        length = math.hypot(hx - sx, hy - sy) or 1.0
        nx, ny = (hy - sy) / length, -(hx - sx) / length
        k = len(port["bindings"])
        for j, b in enumerate(port["bindings"]):
            d = (j - (k - 1) / 2) * 3.5
            canvas.line(sx + d * nx, sy + d * ny, hx + d * nx, hy + d * ny, "bound",
                        stroke=colour.get(b["network_id"], GREY))


def _legend(canvas: _Canvas, view: dict[str, Any], colour: dict[str, str], y: float,
            width: float) -> float:
    columns = ((24, "network"), (234, "VNI"), (304, "VLAN"), (404, "VMs"), (454, "id"))
    for x, title in columns:
        canvas.text(MARGIN + x, y, title, "bold")
    y += 4
    for net in view["networks"]:
        y += 18
        canvas.rect(MARGIN, y - 10, 16, 11, fill=colour[net["id"]])
        vlans = sorted({p["vlan"] for p in net["port_groups"] if p["vlan"] is not None}
                       | {p["vlan"] for p in net["leaf_ports"]})
        cells = (fit(network_label(net["id"], net["name"]), 200),
                 str(net["vni"] if net["vni"] is not None else "-"),
                 fit(", ".join(map(str, vlans)) or "-", 95),
                 str(len(net["vms"])) if view["vcenter"]["reachable"] is not False else "?",
                 net["id"])
        for (x, _), cell in zip(columns, cells):
            canvas.text(MARGIN + x, y, cell)
    if not view["networks"]:
        y += 18
        canvas.text(MARGIN + 24, y, "none on the leaves or the DVS", "small")
    keys = ("Port labels: VLAN \u2192 VNI bound on that leaf port, colour = network.",
            "Lines: leaf port to the host behind it; one coloured line per network bound "
            "there, grey = no binding, red dashed = leaf not read, thick dark = "
            f"more than {MOST_PER_PORT} networks.",
            "VMs: name, then per NIC its MAC and VLAN; grey = not a port group of ours.")
    y += 10
    for key in keys:
        y += 15
        canvas.text(MARGIN, y, fit(key, width - 2 * MARGIN, 10), "small")
    return y
