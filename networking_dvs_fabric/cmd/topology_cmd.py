"""``dvs-fabric topology [--json] [--svg FILE]``: the overall view, read live (read-only).

Built from Neutron's configuration the way ``audit`` builds its parts: the topology
file, vCenter, every leaf, and Neutron's database for network names.  Exit 0, or 2
when something could not be read (it is marked in the view, never drawn as empty).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from networking_dvs_fabric.cmd import neutron_db


def read_view(files: Sequence[Path]) -> dict[str, Any]:
    from networking_dvs_fabric.cmd import audit_cmd
    from networking_dvs_fabric.view.gather import gather

    def query(context):
        with audit_cmd.configured_parts() as parts:
            return gather(context, parts)
    return neutron_db.read(files, query)


def summary(view: dict[str, Any]) -> str:
    vms = sum(len(h["vms"] or ()) for h in view["hosts"])
    return (f"{len(view['leaves'])} leaves, {len(view['hosts'])} hosts, {vms} VMs, "
            f"{len(view['networks'])} networks")


def run(files: Sequence[Path], as_json: bool, svg_file: str | None) -> int:
    from networking_dvs_fabric.view import svg, text
    view = read_view(files)
    if svg_file:
        Path(svg_file).write_text(svg.render(view))
    if as_json:
        print(text.to_json(view))
    elif svg_file:
        print(f"topology: wrote {svg_file} ({summary(view)})")
    else:
        print(text.format_text(view))
    if view["unreachable"]:
        print("dvs-fabric topology: not everything could be read: "
              + "; ".join(view["unreachable"]), file=sys.stderr)
        return 2
    return 0
