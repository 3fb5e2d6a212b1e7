"""networking-dvs-fabric: Neutron ML2 drivers for a VMware DVS and a VXLAN leaf fabric."""
import os as _os

if _os.environ.get("DVS_FABRIC_LAB_SQLITE_IMMEDIATE") == "1":   # the lab on SQLite only
    from networking_dvs_fabric.lab import sqlite_immediate as _sqlite_immediate
    _sqlite_immediate.install()
