"""A batch of port group releases that outlasts ``claim_timeout`` keeps its claims.

The slow vCenter is a fault injected by a mock: each release "takes" 40% of
``claim_timeout`` - the journal's clock (``oslo_utils.timeutils``' override) is moved
on by that much, no test sleeps.  After each release another worker's housekeeping
runs (``release_stale_claims``, as it would every 10 s on another host): it must
never take an entry of the running batch, and every entry is settled by the worker
that handled it.  Without renewing the claims the third release hands the batch
to the other worker.
"""
from __future__ import annotations

import datetime
from unittest import mock

from neutron.tests.unit import testlib_api
from neutron_lib import context as n_context
from neutron_lib.db import api as db_api
from oslo_utils import timeutils

from networking_dvs_fabric import names
from networking_dvs_fabric.db import models
from networking_dvs_fabric.journal import store
from networking_dvs_fabric.vcenter import usage
from networking_dvs_fabric.vcenter.port_group_worker import PortGroupRelease

CLAIM_TIMEOUT = 300.0
DVS = "DVS0"


class ReleaseBatchClaimTestCase(testlib_api.SqlTestCase):

    def setUp(self):
        super().setUp()
        self.ctx = n_context.get_admin_context()
        timeutils.set_time_override(datetime.datetime(2026, 12, 1, 12, 0, 0))
        self.addCleanup(timeutils.clear_time_override)
        self.backend = mock.Mock()
        self.backend.settings.dvs_mappings = {"physnet-dvs": DVS}
        self.backend.binding_hosts.return_value = {"compute-c0"}
        self.taken_by_other: list[int] = []
        self.released: list[str] = []

    def _slow_release(self, context, backend, dvs_name, network_id, hosts) -> str:
        """A release on a slow vCenter; then another worker's housekeeping."""
        timeutils.advance_time_seconds(0.4 * CLAIM_TIMEOUT)
        self.released.append(network_id)
        self.taken_by_other.append(store.release_stale_claims(
            self.ctx, "other-host", alive=lambda pid: True, timeout=CLAIM_TIMEOUT))
        return usage.RELEASED

    def _batch(self, count: int) -> list[store.Entry]:
        for i in range(count):
            store.record(self.ctx, names.RESOURCE_PORT_GROUP,
                         names.port_group_resource(f"net-{i}", DVS), "release")
        entries = store.claim(self.ctx, store.make_worker_id(), limit=count)
        self.assertEqual(count, len(entries))
        return entries

    def _states(self) -> list[str]:
        with db_api.CONTEXT_READER.using(self.ctx):
            return [row.state for row in self.ctx.session.query(models.JournalEntry)]

    def _handle(self, entries: list[store.Entry]) -> list:
        handler = PortGroupRelease(self.backend, CLAIM_TIMEOUT)
        with mock.patch.object(usage, "all_needed", return_value=False), \
                mock.patch.object(usage, "release_if_unused", side_effect=self._slow_release):
            return handler(self.ctx, entries)

    def test_long_batch_keeps_its_claims_and_settles_every_entry(self):
        entries = self._batch(6)
        verdicts = self._handle(entries)
        self.assertEqual([None] * 6, verdicts)
        self.assertEqual([f"net-{i}" for i in range(6)], self.released)
        # The batch ran 2.4 x claim_timeout; no entry was handed to another worker.
        self.assertEqual([0] * 6, self.taken_by_other)
        self.assertTrue(all(store.complete(self.ctx, entry) for entry in entries))
        self.assertEqual([store.COMPLETED] * 6, self._states())

    def test_entry_whose_claim_was_lost_is_left_alone(self):
        entries = self._batch(3)
        # This process stalled longer than claim_timeout before the batch began, and
        # another worker took the second entry meanwhile.
        with db_api.CONTEXT_WRITER.using(self.ctx):
            self.ctx.session.query(models.JournalEntry).filter(
                models.JournalEntry.id.in_(entries[1].row_ids)).update(
                {models.JournalEntry.claimed_by: "other-host:1:abcd"},
                synchronize_session=False)
        timeutils.advance_time_seconds(CLAIM_TIMEOUT / 2)
        verdicts = self._handle(entries)
        self.assertIsNone(verdicts[0])
        self.assertIsNotNone(verdicts[1])
        self.assertIsNone(verdicts[2])
        self.assertEqual(["net-0", "net-2"], self.released)
