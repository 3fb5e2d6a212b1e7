"""``dvs-fabric journal``: what the journal workers have left to do, and what failed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from networking_dvs_fabric.cmd import neutron_db


def rows(config_files: Sequence[Path], states: Sequence[str] | None,
         limit: int) -> list[dict]:
    from networking_dvs_fabric.journal import store
    return neutron_db.read(config_files,
                           lambda ctx: store.rows(ctx, states=states, limit=limit))


def format_rows(found: list[dict]) -> str:
    if not found:
        return "journal: nothing"
    lines = [f"{'id':>7} {'state':10} {'type':10} {'resource':48} {'tries':>5}  last error"]
    for row in found:
        lines.append(f"{row['id']:>7} {row['state']:10} {row['resource_type']:10} "
                     f"{row['resource_id'][:48]:48} {row['attempts']:>5}  "
                     f"{_error(row)}")
    return "\n".join(lines)


def _error(row: dict) -> str:
    """A failed entry's error in full (it says why nothing is retried); others cut."""
    text = row["last_error"] or ""
    return text if row["state"] == "failed" else text[:100]


def to_json(found: list[dict]) -> str:
    return json.dumps(found, indent=2)
