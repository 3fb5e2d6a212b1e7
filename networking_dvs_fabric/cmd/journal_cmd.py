"""``dvs-fabric journal``: what the journal workers have left to do, and what failed.

Reads the journal table from Neutron's database, named by Neutron's own config
files (``--config-file``, as for ``neutron-db-manage``; by default those of the
running lab).  Read-only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from networking_dvs_fabric.lab.procs import LabError

STATES = ("pending", "processing", "failed", "completed")


def rows(config_files: Sequence[Path], states: Sequence[str] | None,
         limit: int) -> list[dict]:
    from neutron_lib import context as n_context
    from oslo_config import cfg
    from oslo_db import exception as db_exc

    from networking_dvs_fabric.journal import store
    missing = [str(p) for p in config_files if not Path(p).is_file()]
    if missing:
        raise LabError(f"--config-file: {', '.join(missing)}: no such file")
    conf = cfg.CONF
    if not conf._args:           # not yet parsed in this process
        from neutron.conf import common as common_conf  # noqa: F401 - registers options
        from oslo_db import options as db_options
        db_options.set_defaults(conf)
        conf([], project="neutron", default_config_files=[str(p) for p in config_files])
    try:
        return store.rows(n_context.get_admin_context(), states=states, limit=limit)
    except db_exc.DBError as exc:
        raise LabError(f"cannot read the journal from Neutron's database: {exc}") from exc


def format_rows(found: list[dict]) -> str:
    if not found:
        return "journal: nothing"
    lines = [f"{'id':>7} {'state':10} {'type':10} {'resource':48} {'tries':>5}  last error"]
    for row in found:
        lines.append(f"{row['id']:>7} {row['state']:10} {row['resource_type']:10} "
                     f"{row['resource_id'][:48]:48} {row['attempts']:>5}  "
                     f"{(row['last_error'] or '')[:100]}")
    return "\n".join(lines)


def to_json(found: list[dict]) -> str:
    return json.dumps(found, indent=2)
