"""Read-only access to Neutron's database for CLI commands (``journal``, ``ports``).

The database is named by Neutron's own config files (``--config-file``, as for
``neutron-db-manage``); by default those of the running lab.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence, TypeVar

from networking_dvs_fabric.lab.procs import LabError

T = TypeVar("T")


def config_files(given: Sequence[str], lab_state: dict | None) -> list[Path]:
    if given:
        files = [Path(p) for p in given]
    elif lab_state and "config_files" in lab_state:
        files = [Path(p) for p in lab_state["config_files"]]
    else:
        raise LabError("no --config-file given and no lab running: name Neutron's config "
                       "files, e.g. --config-file /etc/neutron/neutron.conf")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise LabError(f"--config-file: {', '.join(missing)}: no such file")
    return files


def read(files: Sequence[Path], query: Callable[[object], T]) -> T:
    """Load Neutron's config from ``files`` and run ``query(admin_context)``."""
    from neutron_lib import context as n_context
    from oslo_config import cfg
    from oslo_db import exception as db_exc

    conf = cfg.CONF
    if not conf._args:           # not yet parsed in this process
        from neutron.conf import common as common_conf  # noqa: F401 - registers options
        from oslo_db import options as db_options
        db_options.set_defaults(conf)
        conf([], project="neutron", default_config_files=[str(p) for p in files])
    try:
        return query(n_context.get_admin_context())
    except db_exc.DBError as exc:
        raise LabError(f"cannot read Neutron's database: {exc}") from exc
