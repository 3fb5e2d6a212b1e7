"""One runtime per process: both drivers and every worker share it, so one vCenter login.

Neutron loads ``fabric_hwvtep`` and ``vsphere_dvs`` in one process (the API's
workers, ``neutron-periodic-workers``), and the periodic workers run the fabric
worker, the vCenter watcher, the port group worker and the sweeper as threads of
that process.  The simulator is asked how many sessions are logged in: the
process must hold one, while every part is busy (a port bound, the port group
watch following vCenter, the watcher watching, the workers' passes and the full
sync run).  Real parts as in ``test_fabric_driver.py``: the module's own vCenter
simulator and hardware_vtep leaves.
"""
from __future__ import annotations

import dvs_ml2_base as base
import fabric_base
from oslo_config import cfg

from networking_dvs_fabric import opts, runtime
from networking_dvs_fabric.fabric.worker import FabricWorker
from networking_dvs_fabric.vcenter.port_group_worker import PortGroupWorker
from networking_dvs_fabric.vcenter.sweeper import PortGroupSweeper
from networking_dvs_fabric.watcher.worker import VCenterWatcher

_FABRIC = fabric_base.ModuleFabric("runtime-unit-")
_SIM = _FABRIC.sim
_LEAVES = _FABRIC.leaves


def setUpModule() -> None:
    _FABRIC.start()


def tearDownModule() -> None:
    _FABRIC.stop()


class TestOneRuntimePerProcess(fabric_base.FabricTestCase):
    shared = _SIM
    fabric_leaves = _LEAVES
    _mechanism_drivers = ["fabric_hwvtep", "vsphere_dvs"]

    def vsphere_options(self):
        options = super().vsphere_options()
        options["host_mappings"] = [f"{base.HOST_C0}:DC0_C0", f"{base.HOST_C1}:DC0_C1"]
        return options

    def our_sessions(self) -> list:
        """The simulator's logged-in sessions, but for the test's own observer."""
        manager = self.vc.si.content.sessionManager
        observer = manager.currentSession.key
        return [s for s in manager.sessionList if s.key != observer]

    def test_both_drivers_share_the_runtime_and_its_vcenter_backend(self):
        self.assertIs(self.mech.runtime, self.fabric.runtime)
        self.assertIs(runtime.for_process(), self.mech.runtime)
        self.assertIs(self.mech.backend, self.fabric.directory.backend)
        self.assertIs(self.mech.runtime.fabric, self.worker.sync.backend)

    def test_a_process_with_both_drivers_and_all_workers_holds_one_vcenter_session(self):
        net = self.vxlan_network()
        port = self.make_port(net["id"], host=base.HOST_C0)
        self.assertEqual("dvs", port["binding:vif_type"], port)
        self.assertTrue(self.mech.backend.wait_cache_ready(10),
                        "the port group watch did not start")
        workers = self.mech.get_workers() + self.fabric.get_workers()
        self.assertEqual(["FabricWorker", "PolicyWorker", "PortGroupSweeper",
                          "PortGroupWorker", "VCenterWatcher"],
                         sorted(type(w).__name__ for w in workers))
        # Neutron's unit-test database is one SQLite connection, which threads must
        # not share: the journal workers and the sweeper run their passes here (the
        # fabric worker's first pass runs the full sync too), then the watcher runs
        # in its thread while this one only asks the simulator.
        fabric_worker = next(w for w in workers if isinstance(w, FabricWorker))
        while fabric_worker.run_once():
            pass
        self.assertGreater(fabric_worker.sync.transactions, 0)
        next(w for w in workers if isinstance(w, PortGroupWorker)).run_once()
        sweeper = next(w for w in workers if isinstance(w, PortGroupSweeper))
        self.assertEqual([], sweeper.sweep_once())       # the bound port keeps its group
        watcher = next(w for w in workers if isinstance(w, VCenterWatcher))
        watcher.start()
        try:
            self.assertTrue(base.wait_for(lambda: watcher.holding and watcher._watch, 20),
                            "the vCenter watcher did not start watching")
            sessions = self.our_sessions()
        finally:
            watcher.stop()
            watcher.wait()
        self.assertEqual(1, len(sessions),
                         f"one vCenter login per process, found {len(sessions)}: "
                         f"{[(s.userName, s.userAgent) for s in sessions]}")
        self.assertEqual(1, self.mech.backend.session.logins)

    def test_the_process_logs_out_when_its_runtime_closes(self):
        self.mech.backend.inventory(refresh=True)
        self.assertEqual(1, len(self.our_sessions()))
        self.mech.runtime.close()
        self.assertEqual([], self.our_sessions())
        self.assertIsNot(self.mech.runtime, runtime.for_process(),
                         "a closed runtime must not be handed out again")

    def test_other_options_get_another_runtime(self):
        first = runtime.for_process()
        self.assertIs(first, runtime.for_process())
        cfg.CONF.set_override("cleanup_interval", 77, group=opts.VSPHERE_GROUP)
        second = runtime.for_process()
        self.addCleanup(second.close)
        self.assertIsNot(first, second)
        self.assertEqual(77, second.sweep_interval)
