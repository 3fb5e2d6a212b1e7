"""The port group sweep costs Neutron's database a fixed number of queries per DVS,
however many port groups the project has (issue 15), and still removes exactly the
port groups no port needs (after two sweeps) and keeps the others.

Queries are counted with SQLAlchemy's ``before_cursor_execute`` event, in the test's
thread only (the driver's own threads may query meanwhile)."""
from __future__ import annotations

import threading

import dvs_ml2_base as base
from sqlalchemy import event
from sqlalchemy.engine import Engine

from networking_dvs_fabric.vcenter.sweeper import PortGroupSweeper

_SIM = base.SharedSimulator()


def setUpModule() -> None:
    _SIM.start()


def tearDownModule() -> None:
    _SIM.stop()


class TestSweeperQueries(base.VSphereDVSTestCase):
    shared = _SIM

    def _counted_sweep(self, sweeper: PortGroupSweeper) -> tuple[list[str], int]:
        me = threading.get_ident()
        count = [0]

        def seen(*_args, **_kwargs) -> None:
            if threading.get_ident() == me:
                count[0] += 1
        event.listen(Engine, "before_cursor_execute", seen)
        try:
            deleted = sweeper.sweep_once()
        finally:
            event.remove(Engine, "before_cursor_execute", seen)
        return deleted, count[0]

    def _network_with_port(self, name: str, host: str = base.HOST_C0) -> tuple[dict, dict]:
        net = self.make_network(name)
        return net, self.make_port(net["id"], host=host)

    def test_queries_per_sweep_do_not_grow_with_port_groups(self):
        nets = [self._network_with_port(f"few-{i}")[0] for i in range(2)]
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        deleted, few = self._counted_sweep(sweeper)
        self.assertEqual([], deleted)
        nets += [self._network_with_port(f"more-{i}", base.HOST_C1 if i % 2 else base.HOST_C0)[0]
                 for i in range(5)]
        deleted, many = self._counted_sweep(sweeper)
        self.assertEqual([], deleted)
        self.assertTrue(all(self.vc.port_groups_of(n["id"]) for n in nets))
        # Five more port groups (each with its own network) cost no query more.
        self.assertEqual(few, many)
        self.assertGreater(few, 0)

    def test_unused_port_group_goes_on_the_second_sweep_others_stay(self):
        kept_net, _ = self._network_with_port("kept")
        gone_net, gone_port = self._network_with_port("gone")
        kept = self.vc.port_groups_of(kept_net["id"])
        gone = self.vc.port_groups_of(gone_net["id"])
        # Removed behind the journal's back (as if its release failed): only the
        # sweep takes the port group away.
        self._delete("ports", gone_port["id"], as_admin=True)
        sweeper = PortGroupSweeper(self.mech.runtime, 60)
        self.assertEqual([], sweeper.sweep_once())           # suspected only
        self.assertEqual([gone[0].name], sweeper.sweep_once())
        self.assertEqual([], self.vc.port_groups_of(gone_net["id"]))
        self.assertEqual(kept, self.vc.port_groups_of(kept_net["id"]))
