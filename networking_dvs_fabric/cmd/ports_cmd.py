"""``dvs-fabric ports``: where each Neutron port's VM runs, as the vCenter watcher saw it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from networking_dvs_fabric.cmd import neutron_db


def rows(config_files: Sequence[Path], network_id: str | None) -> list[dict]:
    from networking_dvs_fabric.db import locations
    return neutron_db.read(config_files, lambda ctx: locations.listing(ctx, network_id))


def format_rows(found: list[dict]) -> str:
    if not found:
        return "ports: no port seen on a running VM"
    lines = [f"{'port':36} {'network':36} {'vm':20} {'esxi host':16} {'mac':17} "
             f"{'going to':16} seen"]
    for r in found:
        lines.append(f"{r['port_id']:36} {r['network_id']:36} {r['vm'][:20]:20} "
                     f"{r['esxi_host'][:16]:16} {r['mac']:17} "
                     f"{(r['destination_host'] or '-')[:16]:16} {r['seen_at']}")
    return "\n".join(lines)


def to_json(found: list[dict]) -> str:
    return json.dumps(found, indent=2)
