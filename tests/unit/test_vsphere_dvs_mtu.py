"""The network's MTU must fit its DVS's: vsphere_dvs refuses the binding, or raises the
DVS's MTU with ``[ml2_vsphere] raise_dvs_mtu``, against the real vCenter simulator.

Neutron gives a VLAN network the MTU ``global_physnet_mtu`` (default 1500); these tests
start Neutron with ``global_physnet_mtu = 9000``, so a VLAN network is 9000 unless
created with a smaller explicit ``mtu`` (``net-mtu-writable``: Neutron refuses one above
the computed maximum).  The simulator's DVS0 has ``config.maxMtu`` unset, which is
vSphere's 1500.

govmomi 0.24's simulator accepts ReconfigureDvs_Task with a ``maxMtu`` but does not
apply it (only host members change): ``simulator_honours_max_mtu`` finds out, and
of the two ``raise_dvs_mtu`` tests the one that fits the simulator runs.
"""
from __future__ import annotations

from typing import Any

import dvs_ml2_base as base
from neutron_lib.api.definitions import portbindings
from oslo_config import cfg
from pyVim.task import WaitForTask
from pyVmomi import vim

from networking_dvs_fabric.vcenter import backend as backend_mod

NETWORK_MTU = 9000
DVS_MTU = 1500          # DVS0's maxMtu is unset: vSphere's default

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


def set_max_mtu(vc: base.VCenter, mtu: int) -> int:
    """Reconfigure DVS0's maxMtu through the test's own session; return what reads back."""
    dvs = vc.dvs()
    spec = vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(
        configVersion=dvs.config.configVersion, maxMtu=mtu)
    WaitForTask(dvs.ReconfigureDvs_Task(spec))
    return vc.dvs().config.maxMtu or 0


def simulator_honours_max_mtu(vc: base.VCenter) -> bool:
    """Set DVS0's maxMtu to 1500 (the MTU it runs at anyway) and see if it sticks."""
    return set_max_mtu(vc, DVS_MTU) == DVS_MTU


class MtuTestCase(base.VSphereDVSTestCase):
    shared = _SIM

    def setUp(self) -> None:
        super().setUp()
        # Neutron registers the option during its set-up (and its fixture resets it
        # afterwards); the type drivers read it when a network is created.
        cfg.CONF.set_override("global_physnet_mtu", NETWORK_MTU)

    def make_network_mtu(self, mtu: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """A VLAN network on DVS0's physical network, with an explicit ``mtu`` if given."""
        args: dict[str, Any] = {"provider:network_type": "vlan",
                                "provider:physical_network": base.PHYSNET, **kwargs}
        if mtu is not None:
            args["mtu"] = mtu
        net = self._make_network(self.fmt, "mtu-net", True, as_admin=True,
                                 arg_list=tuple(args), **args)["network"]
        self.assertEqual(mtu or NETWORK_MTU, net["mtu"])
        return net

    def count_calls(self) -> list[str]:
        """Names of the vCenter calls the driver's session makes from now on (each still
        reaches the simulator: a counting wrapper, not a mock)."""
        session = self.mech.backend.session
        calls: list[str] = []
        real_invoke = session.invoke

        def counting(func, what):
            calls.append(what)
            return real_invoke(func, what)

        session.invoke = counting
        self.addCleanup(setattr, session, "invoke", real_invoke)
        return calls

    def dvs_max_mtu(self) -> int:
        """DVS0's maxMtu as vCenter reports it (0: unset)."""
        return self.vc.dvs().config.maxMtu or 0

    def assertRefusedOnce(self, logs: Any, net: dict[str, Any], *fragments: str) -> str:
        refusals = [r.getMessage() for r in logs.records
                    if r.levelname == "ERROR" and "not binding port" in r.getMessage()]
        # ML2 tries a failed binding ten times in one request: one ERROR, not ten.
        self.assertEqual(1, len(refusals), refusals)
        text = refusals[0]
        for fragment in (net["id"], f"MTU {NETWORK_MTU}", f"DVS {base.DVS}",
                         f"maxMtu {DVS_MTU}", *fragments):
            self.assertIn(fragment, text)
        return text


class TestMtuCheck(MtuTestCase):

    def test_network_mtu_above_dvs_mtu_is_refused_before_any_vcenter_write(self):
        net = self.make_network_mtu()
        calls = self.count_calls()
        with self.assertLogs(base.LOGGER, "DEBUG") as logs:
            port = self.make_port(net["id"])
        self.assertNotBound(port)
        self.assertRefusedOnce(logs, net, "global_physnet_mtu", "raise_dvs_mtu",
                               "raise the DVS's MTU in vSphere")
        # Nothing written to vCenter: no port group, no reconfigure, DVS unchanged.
        self.assertEqual([], self.vc.port_groups_of(net["id"]))
        self.assertFalse([c for c in calls if not c.startswith("read ")], calls)
        self.assertIn(self.dvs_max_mtu(), (0, DVS_MTU))
        self.assertEqual(base.BINDING_FAILED,
                         self.show_port(port["id"])[portbindings.VIF_TYPE])

    def test_network_mtu_at_or_below_dvs_mtu_binds_without_mtu_read(self):
        self.mech.backend.inventory()
        calls = self.count_calls()
        for mtu in (DVS_MTU, 1400):
            with self.subTest(mtu=mtu):
                net = self.make_network_mtu(mtu)
                self.assertBoundToPortGroup(self.make_port(net["id"]), net)
        # The MTU came from the cached inventory: no extra read on the bind path.
        self.assertFalse([c for c in calls if "MTU" in c], calls)

    def test_dvs_mtu_raised_in_vsphere_counts_at_once(self):
        """The remedy the refusal names works without waiting for an inventory refresh:
        a too-small cached MTU is read again before refusing."""
        if not simulator_honours_max_mtu(self.vc):
            self.skipTest("this simulator accepts ReconfigureDvs_Task but ignores maxMtu "
                          "(govmomi 0.24)")
        self.addCleanup(set_max_mtu, self.vc, DVS_MTU)   # the module shares DVS0
        net = self.make_network_mtu()
        with self.assertLogs(base.LOGGER, "ERROR"):
            self.assertNotBound(self.make_port(net["id"]))
        self.assertEqual(NETWORK_MTU, set_max_mtu(self.vc, NETWORK_MTU))  # the admin
        self.assertBoundToPortGroup(self.make_port(net["id"]), net)

    def test_unset_max_mtu_is_read_as_1500(self):
        # Unset (0) in govmomi's simulator; 1500 once a test here has set it.
        self.assertIn(self.dvs_max_mtu(), (0, DVS_MTU))
        self.assertEqual(DVS_MTU, self.mech.backend.inventory().dvs[base.DVS].max_mtu)


class TestRaiseDvsMtu(MtuTestCase):

    def vsphere_options(self) -> dict[str, Any]:
        return {**super().vsphere_options(), "raise_dvs_mtu": True}

    def test_raise_dvs_mtu_binds_and_dvs_reads_back_network_mtu(self):
        if not simulator_honours_max_mtu(self.vc):
            self.skipTest("this simulator accepts ReconfigureDvs_Task but ignores maxMtu "
                          "(govmomi 0.24); see the test below")
        self.addCleanup(set_max_mtu, self.vc, DVS_MTU)   # the module shares DVS0
        net = self.make_network_mtu()
        self.assertBoundToPortGroup(self.make_port(net["id"]), net)
        self.assertEqual(NETWORK_MTU, self.dvs_max_mtu())
        self.assertEqual(NETWORK_MTU,
                         self.mech.backend.inventory().dvs[base.DVS].max_mtu)
        # Never lowered: a smaller network binds and leaves the DVS at 9000.
        small = self.make_network_mtu(DVS_MTU)
        self.assertBoundToPortGroup(self.make_port(small["id"]), small)
        self.assertEqual(NETWORK_MTU, self.dvs_max_mtu())

    def test_raise_ignored_by_vcenter_is_caught_by_the_read_back(self):
        if simulator_honours_max_mtu(self.vc):
            self.skipTest("this simulator applies maxMtu; see the test above")
        net = self.make_network_mtu()
        calls = self.count_calls()
        with self.assertLogs(base.LOGGER, "DEBUG") as logs:
            port = self.make_port(net["id"])
        self.assertNotBound(port)
        self.assertRefusedOnce(
            logs, net, "Raising it failed",
            f"vCenter accepted the change but the DVS's maxMtu still reads {DVS_MTU}")
        raises = [c for c in calls if c.startswith("raise the MTU")]
        # One reconfigure (its call and its wait) for ML2's ten attempts: a failed
        # raise is not tried again for MTU_RETRY_HOLDOFF seconds.
        what = f"raise the MTU of DVS {base.DVS} from {DVS_MTU} to {NETWORK_MTU}"
        self.assertEqual([what, what], raises)
        self.assertIn("not tried again", base.log_lines(
            [r for r in logs.records if r.levelname == "DEBUG"]))
        self.assertEqual([], self.vc.port_groups_of(net["id"]))
        self.assertGreater(backend_mod.MTU_RETRY_HOLDOFF, 10)
