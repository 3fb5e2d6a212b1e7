"""The lab's helpers reach only the lab's Neutron; a production Neutron cannot load them.

The installed distribution offers Neutron exactly the two drivers; the benchmarks'
no-I/O driver and the SQLite write lock exist only on the import path the lab
writes for its own Neutron processes (``lab/neutron.py``, ``write_lab_python``).
Checked in fresh interpreters, as Neutron would start.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from networking_dvs_fabric.lab import neutron as lab_neutron

DRIVERS = "neutron.ml2.mechanism_drivers"

# Which mechanism drivers does this interpreter offer from networking-dvs-fabric's code,
# and did importing the product (both drivers) install the lab's SQLite hook?
PROBE = """
import json
from importlib.metadata import entry_points
from sqlalchemy import event
from sqlalchemy.engine import Engine
import networking_dvs_fabric.ml2.fabric_hwvtep, networking_dvs_fabric.ml2.vsphere_dvs
offered = sorted(e.name for e in entry_points(group=%r)
                 if e.value.startswith("networking_dvs_fabric"))
hooked = False
try:
    from networking_dvs_fabric.lab import sqlite_immediate
    hooked = event.contains(Engine, "begin", sqlite_immediate._begin)
except ImportError:
    pass
print(json.dumps({"offered": offered, "hooked": hooked}))
""" % DRIVERS


def probe(extra_path: Path | None = None, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(env)
    if extra_path is not None:
        environ["PYTHONPATH"] = str(extra_path)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                            env=environ, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_production_neutron_is_offered_only_the_two_drivers_and_no_hook():
    # The environment variable that used to switch the hook on does nothing now.
    seen = probe(DVS_FABRIC_LAB_SQLITE_IMMEDIATE="1")
    assert seen == {"offered": ["fabric_hwvtep", "vsphere_dvs"], "hooked": False}


def test_the_labs_neutron_on_sqlite_gets_the_baseline_driver_and_the_hook(tmp_path):
    path = lab_neutron.write_lab_python(tmp_path, sqlite=True)
    seen = probe(path)
    assert seen == {"offered": ["dvs_fabric_noop_vlan", "fabric_hwvtep", "vsphere_dvs"],
                    "hooked": True}


def test_the_labs_neutron_on_mariadb_gets_the_baseline_driver_but_no_hook(tmp_path):
    lab_neutron.write_lab_python(tmp_path, sqlite=True)
    path = lab_neutron.write_lab_python(tmp_path, sqlite=False)     # the lab was remade
    seen = probe(path)
    assert seen == {"offered": ["dvs_fabric_noop_vlan", "fabric_hwvtep", "vsphere_dvs"],
                    "hooked": False}
