"""Shared pieces of the fabric_hwvtep driver tests: ML2 with the fabric on real leaves.

A test module starts its simulator and its hardware_vtep leaves once
(``setUpModule``), and its test case class names them (``shared``,
``fabric_leaves``); this base writes the topology file, sets ``[ml2_fabric]``,
gives each test a ``FabricWorker`` it runs by hand (``converge``), and empties the
leaves after each test.  Leaves are read with ``vtep-ctl``, not with the code
under test.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import dvs_ml2_base as base
import yaml
from neutron_lib import context as n_context
from oslo_config import cfg

from networking_dvs_fabric import opts
from networking_dvs_fabric.fabric.worker import FabricWorker
from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.lab.leaves import LeafSwitch


def logical_switches(switch: LeafSwitch) -> dict[str, int]:
    """Logical switch name -> tunnel key on a leaf."""
    out = {}
    for name in switch.vtep_ctl("list-ls").split():
        key = switch.vtep_ctl("get", "Logical_Switch", name, "tunnel_key").strip()
        out[name] = int(key) if key.isdigit() else -1
    return out


def bindings(switch: LeafSwitch, port: str) -> dict[int, str]:
    """VLAN -> logical switch name on one port of a leaf."""
    return switch.bindings(port)


class ModuleFabric:
    """A test module's vCenter simulator and hardware_vtep leaves (the lab's three),
    started once by its ``setUpModule`` and stopped by its ``tearDownModule``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sim = base.SharedSimulator()
        self.leaves: list[LeafSwitch] = []
        self._dirs: list[Path] = []

    def start(self, prepare_vcenter: Callable[[base.VCenter], None] | None = None) -> None:
        self.sim.start()
        if prepare_vcenter is not None:
            vc = base.VCenter(self.sim.get())
            try:
                prepare_vcenter(vc)
            finally:
                vc.close()
        workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._dirs.append(workdir)
        ports = lab_topology.leaf_ports()
        for item in lab_topology.leaves():
            self.leaves.append(LeafSwitch(item.name, item.tunnel_ip, workdir / item.name,
                                          ports[item.name]).start())

    def stop(self) -> None:
        for item in self.leaves:
            item.stop()
        self.sim.stop()
        for workdir in self._dirs:
            shutil.rmtree(workdir, ignore_errors=True)

    def leaf(self, name: str) -> LeafSwitch:
        return next(item for item in self.leaves if item.name == name)


class FabricTestCase(base.VSphereDVSTestCase):
    """fabric_hwvtep (and vsphere_dvs) on the real simulator and real leaves."""

    fabric_leaves: list[LeafSwitch] = []       # the module's leaves, started once

    def fabric_topology(self) -> dict[str, Any]:
        """The topology file's contents (default: the lab's, on this module's leaves)."""
        return lab_topology.fabric_topology({item.name: item.ovsdb
                                             for item in self.fabric_leaves})

    def start_plugin(self) -> None:
        path = Path(tempfile.mkdtemp(prefix="fabric-topo-")) / "topology.yaml"
        path.write_text(yaml.safe_dump(self.fabric_topology()))
        self.addCleanup(shutil.rmtree, path.parent, True)
        opts.register_opts(cfg.CONF)
        for name, value in {"topology_file": str(path), "wakeup_listen": "",
                            "wakeup_targets": [], "ovsdb_connect_timeout": 3.0,
                            "retry_initial_delay": 0.05}.items():
            cfg.CONF.set_override(name, value, group=opts.FABRIC_GROUP)
        super().start_plugin()
        self.fabric = self.driver.mechanism_manager.mech_drivers["fabric_hwvtep"].obj
        self.worker = FabricWorker(self.fabric.runtime)
        self.addCleanup(self.fabric.runtime.close_fabric)
        self.addCleanup(self._clean_leaves)
        self.ctx = n_context.get_admin_context()

    def _clean_leaves(self) -> None:
        # Each test starts from empty leaves: remove what the test's networks left.
        for item in self.fabric_leaves:
            for port in item.ports:
                for vlan in bindings(item, port):
                    item.vtep_ctl("unbind-ls", item.name, port, str(vlan))
            for ls in logical_switches(item):
                item.vtep_ctl("clear-remote-macs", ls)
                item.vtep_ctl("clear-local-macs", ls)
                item.vtep_ctl("del-ls", ls)

    def vxlan_network(self, name: str = "tenant") -> dict:
        return self.make_network(name, network_type="vxlan", physnet=None)

    def converge(self) -> int:
        """Run the worker until the journal has nothing ready; returns passes run."""
        passes = 0
        while self.worker.run_once():
            passes += 1
            self.assertLess(passes, 20, "the journal never drained")
        return passes
