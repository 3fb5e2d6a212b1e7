"""Shared pieces of the vsphere_dvs driver tests: a real vCenter simulator, Neutron's ML2
test base configured for it, and a pyVmomi reader that checks vCenter independently of
the code under test.

Nothing here mocks vCenter: every test talks to govmomi's simulator
(``networking_dvs_fabric.lab.vcsim``) over https with certificate verification.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
if str(FIXTURES) not in sys.path:      # also when run without tests/unit/conftest.py
    sys.path.insert(0, str(FIXTURES))

from networking_dvs_fabric.lab import vcsim as vcsim_mod  # noqa: E402

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("the vCenter simulator needs the Debian packages golang-go and "
                "golang-github-vmware-govmomi-dev (make setup installs them)",
                allow_module_level=True)

from neutron.conf.plugins.ml2.drivers import driver_type  # noqa: E402
from neutron.tests.unit.plugins.ml2 import test_plugin  # noqa: E402
from neutron_lib.api.definitions import portbindings  # noqa: E402
from oslo_config import cfg  # noqa: E402
from pyVim.connect import Disconnect, SmartConnect  # noqa: E402
from pyVim.task import WaitForTask  # noqa: E402
from pyVmomi import vim  # noqa: E402

# Our tables must be in Neutron's model metadata before the test fixture creates the
# schema (once per process, from that metadata).
import networking_dvs_fabric.db.models  # noqa: E402,F401
from networking_dvs_fabric import opts  # noqa: E402
from networking_dvs_fabric.lab.vcsim import VCenterSimulator  # noqa: E402

LOGGER = "networking_dvs_fabric"
PHYSNET = "physnet-dvs"
OTHER_PHYSNET = "physnet-other"          # has VLANs in Neutron, no DVS mapping
DVS = "DVS0"
MARKER = "managed-by=networking-dvs-fabric"
HOST_C0 = "compute-c0"
HOST_C1 = "compute-c1"
ESXI_HOST = "DC0_C1_H2"
VM_NAME = "DC0_C0_RP0_VM0"
BINDING_FAILED = portbindings.VIF_TYPE_BINDING_FAILED


# -- the simulator --------------------------------------------------------------
def start_simulator(**kwargs: Any) -> VCenterSimulator:
    """A new simulator in its own temporary directory (removed when it stops)."""
    workdir = Path(tempfile.mkdtemp(prefix="vcsim-unit-"))
    sim = VCenterSimulator(workdir, **kwargs)
    try:
        sim.start()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return sim


def stop_simulator(sim: VCenterSimulator) -> None:
    sim.stop()
    if not os.environ.get("DVSF_KEEP_VCSIM_DIR"):    # keep vcsim.log for debugging
        shutil.rmtree(sim.workdir, ignore_errors=True)


def crash_simulator(sim: VCenterSimulator) -> None:
    """Kill the simulator at once (SIGKILL by its pid), as a vCenter crash would.

    Also the quick way to restart it: a clean stop waits for pending
    WaitForUpdatesEx calls (the driver's cache) to time out first.
    """
    if sim.pid is not None and sim.running():
        os.kill(sim.pid, signal.SIGKILL)
    sim.stop()          # reaps it


class SharedSimulator:
    """One simulator for a whole test module: ``setUpModule``/``tearDownModule`` drive it."""

    def __init__(self) -> None:
        self.sim: VCenterSimulator | None = None

    def start(self) -> None:
        if self.sim is None:
            self.sim = start_simulator()

    def stop(self) -> None:
        sim, self.sim = self.sim, None
        if sim is not None:
            stop_simulator(sim)

    def get(self) -> VCenterSimulator:
        if self.sim is None or not self.sim.running():
            raise RuntimeError("the module's vCenter simulator is not running "
                               "(setUpModule not run, or a test stopped it)")
        return self.sim


# -- vCenter as seen with pyVmomi, independently of the code under test ---------
@dataclasses.dataclass(frozen=True)
class PG:
    name: str
    key: str
    vlan: int | None
    description: str | None
    moid: str


class VCenter:
    """A separate pyVmomi session on the simulator to read and change vCenter directly."""

    def __init__(self, sim: VCenterSimulator) -> None:
        self.sim = sim
        self.si = SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                               pwd=sim.password,
                               sslContext=ssl.create_default_context(cafile=str(sim.ca_file)))

    def close(self) -> None:
        try:
            Disconnect(self.si)
        except Exception:  # noqa: BLE001 - the simulator may be gone already
            pass

    def _objects(self, kind: type) -> list[Any]:
        content = self.si.content
        view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def dvs(self, name: str = DVS) -> Any:
        for dvs in self._objects(vim.DistributedVirtualSwitch):
            if dvs.name == name:
                return dvs
        raise AssertionError(f"no DVS {name!r} in vCenter")

    def port_groups(self, dvs_name: str = DVS) -> list[PG]:
        out = []
        for pg in self.dvs(dvs_name).portgroup:
            config = pg.config
            vlan_spec = getattr(config.defaultPortConfig, "vlan", None)
            vlan = vlan_spec.vlanId if isinstance(
                vlan_spec, vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec) else None
            out.append(PG(name=pg.name, key=pg.key, vlan=vlan,
                          description=config.description, moid=pg._moId))
        return out

    def port_groups_of(self, network_id: str, dvs_name: str = DVS) -> list[PG]:
        """Port groups whose name or description mentions the network UUID."""
        return [pg for pg in self.port_groups(dvs_name)
                if network_id in pg.name or network_id in (pg.description or "")]

    def port_group(self, key: str, dvs_name: str = DVS) -> PG | None:
        for pg in self.port_groups(dvs_name):
            if pg.key == key:
                return pg
        return None

    def create_port_group(self, name: str, vlan: int, description: str | None = None,
                          dvs_name: str = DVS) -> PG:
        """A port group made by 'someone else' (no ownership marker unless given)."""
        vds = vim.dvs.VmwareDistributedVirtualSwitch
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=name, type="earlyBinding", numPorts=8, description=description,
            defaultPortConfig=vds.VmwarePortConfigPolicy(
                vlan=vds.VlanIdSpec(vlanId=vlan, inherited=False)))
        WaitForTask(self.dvs(dvs_name).AddDVPortgroup_Task([spec]))
        for pg in self.port_groups(dvs_name):
            if pg.name == name:
                return pg
        raise AssertionError(f"port group {name!r} missing right after creating it")

    def set_vlan(self, pg: PG, vlan: int) -> None:
        """Change a port group's VLAN as an admin would (other settings kept)."""
        vds = vim.dvs.VmwareDistributedVirtualSwitch
        ref = vim.dvs.DistributedVirtualPortgroup(pg.moid, self.si._stub)
        config = ref.config
        # A complete spec: the simulator replaces every field, unset ones included.
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=config.name, description=config.description, type=config.type,
            numPorts=config.numPorts, autoExpand=config.autoExpand,
            configVersion=config.configVersion,
            defaultPortConfig=vds.VmwarePortConfigPolicy(
                vlan=vds.VlanIdSpec(vlanId=vlan, inherited=False)))
        WaitForTask(ref.ReconfigureDVPortgroup_Task(spec))

    def set_description(self, pg: PG, description: str) -> None:
        """Rewrite a port group's description (its marker), VLAN and the rest kept."""
        ref = vim.dvs.DistributedVirtualPortgroup(pg.moid, self.si._stub)
        config = ref.config
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=config.name, description=description, type=config.type,
            numPorts=config.numPorts, autoExpand=config.autoExpand,
            configVersion=config.configVersion, defaultPortConfig=config.defaultPortConfig)
        WaitForTask(ref.ReconfigureDVPortgroup_Task(spec))

    def destroy_port_group(self, pg: PG) -> None:
        WaitForTask(vim.dvs.DistributedVirtualPortgroup(pg.moid, self.si._stub).Destroy_Task())

    def vm(self, name: str = VM_NAME) -> Any:
        for vm in self._objects(vim.VirtualMachine):
            if vm.name == name:
                return vm
        raise AssertionError(f"no VM {name!r} in vCenter")

    def attach_nic(self, pg: PG, vm_name: str = VM_NAME, dvs_name: str = DVS,
                   mac: str | None = None) -> None:
        """Give a VM a NIC on ``pg``: one Neutron does not know (as an admin would add
        in vSphere), or with ``mac`` a port's (as Nova plugs it, MAC set by hand)."""
        card = vim.vm.device.VirtualEthernetCard
        nic = vim.vm.device.VirtualVmxnet3(
            key=-1, macAddress=mac, addressType="manual" if mac else None,
            backing=card.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(switchUuid=self.dvs(dvs_name).uuid,
                                            portgroupKey=pg.key)))
        WaitForTask(self.vm(vm_name).ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)])))

    def detach_nics(self, pg: PG, vm_name: str = VM_NAME) -> int:
        vm = self.vm(vm_name)
        card = vim.vm.device.VirtualEthernetCard
        nics = [dev for dev in vm.config.hardware.device
                if isinstance(dev, card)
                and isinstance(dev.backing, card.DistributedVirtualPortBackingInfo)
                and dev.backing.port.portgroupKey == pg.key]
        if nics:
            WaitForTask(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
                vim.vm.device.VirtualDeviceSpec(operation="remove", device=nic)
                for nic in nics])))
        return len(nics)

    def vm_networks(self, vm_name: str = VM_NAME) -> list[str]:
        return sorted(net.name for net in self.vm(vm_name).network)

    def terminate_session(self, key: str) -> None:
        self.si.content.sessionManager.TerminateSession([key])

    def session_keys(self) -> set[str]:
        return {s.key for s in self.si.content.sessionManager.sessionList or []}


def _cache_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dvs-pg-cache" and t.is_alive()]


def wait_for(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# -- Neutron's ML2 test base, configured for the simulator ----------------------
class VSphereDVSTestCase(test_plugin.Ml2PluginV2TestCase):
    """ML2 with the vsphere_dvs driver on the real simulator.

    Subclasses set ``shared`` (the module's SharedSimulator) or ``own_simulator =
    True`` for a fresh simulator of their own, e.g. when a test restarts it.
    """

    _mechanism_drivers = ["vsphere_dvs"]
    shared: SharedSimulator | None = None
    own_simulator = False
    vlan_ranges = [f"{PHYSNET}:100:3999", f"{OTHER_PHYSNET}:100:199"]
    vni_ranges = ["5000:5049"]
    type_drivers = ["local", "flat", "vlan", "vxlan"]

    def vsphere_options(self) -> dict[str, Any]:
        sim = self.sim
        return {
            "vcenter_url": sim.url, "username": sim.username, "password": sim.password,
            "ca_file": str(sim.ca_file), "datacenter": "DC0",
            "dvs_mappings": [f"{PHYSNET}:{DVS}"],
            "host_mappings": [f"{HOST_C0}:DC0_C0", f"{HOST_C1}:DC0_C1"],
        }

    def configure_vsphere(self, **changes: Any) -> None:
        options = self.vsphere_options()
        options.update(changes)
        for name, value in options.items():
            cfg.CONF.set_override(name, value, group=opts.VSPHERE_GROUP)

    def setUp(self) -> None:
        # Registered first, so it runs last: the driver's threads must be gone by then.
        self.addCleanup(self._check_no_cache_thread_left, set(_cache_threads()))
        if self.own_simulator:
            self.sim = start_simulator()
            self.addCleanup(stop_simulator, self.sim)   # runs after the driver stopped
        else:
            assert self.shared is not None, "set shared = SharedSimulator() in the module"
            self.sim = self.shared.get()
        opts.register_opts(cfg.CONF)
        self.configure_vsphere()
        self.start_plugin()
        self.vc = VCenter(self.sim)
        self.addCleanup(self.vc.close)

    def _check_no_cache_thread_left(self, before: set[threading.Thread]) -> None:
        left: set[threading.Thread] = set()

        def gone() -> bool:
            left.clear()
            left.update(set(_cache_threads()) - before)
            return not left
        self.assertTrue(wait_for(gone, timeout=5), f"port group watch threads left: {left}")

    def start_plugin(self) -> None:
        """Neutron's own set-up (the plugin and with it our driver), then find the driver."""
        super().setUp()
        self.mech = self.driver.mechanism_manager.mech_drivers["vsphere_dvs"].obj
        self.addCleanup(self.mech.runtime.close)

    def setup_parent(self) -> None:
        # Ml2PluginV2TestCase.setUp sets its own VLAN ranges just before this.
        driver_type.register_ml2_drivers_vlan_opts()
        driver_type.register_ml2_drivers_vxlan_opts()
        cfg.CONF.set_override("network_vlan_ranges", self.vlan_ranges, group="ml2_type_vlan")
        cfg.CONF.set_override("vni_ranges", self.vni_ranges, group="ml2_type_vxlan")
        # Only the types the tests use: each type driver syncs its ranges at start.
        cfg.CONF.set_override("type_drivers", self.type_drivers, group="ml2")
        super().setup_parent()

    # -- Neutron API helpers (through the REST layer, as an admin) --------------
    def make_network(self, name: str = "net", network_type: str = "vlan",
                     physnet: str | None = PHYSNET, segmentation_id: int | None = None
                     ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"provider:network_type": network_type}
        if physnet is not None:
            kwargs["provider:physical_network"] = physnet
        if segmentation_id is not None:
            kwargs["provider:segmentation_id"] = segmentation_id
        return self._make_network(self.fmt, name, True, as_admin=True,
                                  arg_list=tuple(kwargs), **kwargs)["network"]

    def make_port(self, network_id: str, host: str = HOST_C0, **extra: Any) -> dict[str, Any]:
        kwargs = {portbindings.HOST_ID: host, **extra}
        res = self._create_port(self.fmt, network_id, is_admin=True,
                                arg_list=tuple(kwargs), **kwargs)
        self.assertEqual(201, res.status_int, res.body)
        return self.deserialize(self.fmt, res)["port"]

    def show_port(self, port_id: str) -> dict[str, Any]:
        return self._show("ports", port_id, as_admin=True)["port"]

    def update_port_host(self, port_id: str, host: str) -> dict[str, Any]:
        port = self._update("ports", port_id, {"port": {portbindings.HOST_ID: host}},
                            as_admin=True)["port"]
        self.drain_journal()
        return port

    def delete_port(self, port_id: str) -> None:
        self._delete("ports", port_id, as_admin=True)
        self.drain_journal()

    def delete_network(self, network_id: str) -> None:
        self._delete("networks", network_id, as_admin=True)
        self.drain_journal()

    def drain_journal(self) -> int:
        """Run the port group journal worker (as neutron-periodic-workers would) until
        nothing is ready; returns how many passes handled something."""
        from networking_dvs_fabric.vcenter.port_group_worker import PortGroupWorker
        worker = PortGroupWorker(self.mech.runtime)
        passes = 0
        while worker.run_once():
            passes += 1
            self.assertLess(passes, 20, "the journal never drained")
        return passes

    # -- assertions -------------------------------------------------------------
    def assertBoundToPortGroup(self, port: dict[str, Any], network: dict[str, Any],
                               vlan: int | None = None) -> PG:
        """Port bound by vsphere_dvs; its port group exists on DVS0 as vif_details says."""
        self.assertEqual("dvs", port[portbindings.VIF_TYPE], port)
        details = port[portbindings.VIF_DETAILS]
        for key in ("dvs_id", "pg_id", "dvs_port_group_name"):
            self.assertIn(key, details)
        self.assertEqual(self.vc.dvs().uuid, details["dvs_id"])
        pg = self.vc.port_group(details["pg_id"])
        self.assertIsNotNone(pg, f"vif_details pg_id {details['pg_id']} not on {DVS}")
        assert pg is not None
        self.assertEqual(pg.name, details["dvs_port_group_name"])
        self.assertIn(network["id"], pg.name)
        self.assertIn(MARKER, pg.description or "")
        self.assertIn(network["id"], pg.description or "")
        expected_vlan = vlan if vlan is not None else network["provider:segmentation_id"]
        self.assertEqual(expected_vlan, pg.vlan)
        return pg

    def assertNotBound(self, port: dict[str, Any]) -> None:
        self.assertEqual(BINDING_FAILED, port[portbindings.VIF_TYPE], port)
        self.assertEqual({}, port[portbindings.VIF_DETAILS] or {})

    def assertPortGroupGone(self, key: str) -> None:
        self.assertIsNone(self.vc.port_group(key), f"port group {key} still on {DVS}")


def log_lines(records: list[logging.LogRecord]) -> str:
    return "\n".join(record.getMessage() for record in records)
