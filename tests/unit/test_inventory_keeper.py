"""The inventory is refreshed once at a time, in the background; a failed refresh is
not tried again by every reader.

The keeper is given a ``load`` of the test's (it stands for ``load_inventory``; the
test against the simulator is in ``test_topology_vcenter.py``) and a clock of the
test's.  Nothing here measures time: a reader that waited for a blocked load would
never return, and the checks count loads.
"""
from __future__ import annotations

import threading
import time
import unittest
from typing import Callable
from unittest import mock

from networking_dvs_fabric.vcenter import errors, inventory
from networking_dvs_fabric.vcenter.inventory import Inventory, InventoryKeeper

LOGGER = "networking_dvs_fabric.vcenter.inventory"
_monotonic = time.monotonic     # the real one: the tests replace ``time.monotonic``


def _inventory(n: int) -> Inventory:
    return Inventory(datacenter="DC0", datacenter_moid="datacenter-2",
                     network_folder_moid="folder-6", dvs={}, clusters={},
                     hosts={f"esx-{n}": f"host-{n}"})


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = _monotonic() + timeout
    while not check():
        if _monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A load: the first read succeeds; the later ones do what the test says."""

    def __init__(self) -> None:
        self.count = 0
        self.fail: BaseException | None = None
        self.release = threading.Event()
        self.release.set()
        self.running = threading.Event()

    def __call__(self) -> Inventory:
        self.count += 1
        if self.count > 1:
            self.running.set()
            self.release.wait(30)
            if self.fail is not None:
                raise self.fail
        return _inventory(self.count)


class TestInventoryKeeper(unittest.TestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        patcher = mock.patch.object(inventory.time, "monotonic", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.loads = Loads()
        self.keeper = InventoryKeeper(self.loads, max_age=300.0, retry_holdoff=30.0)
        self.addCleanup(self.loads.release.set)

    def _in_thread(self, func: Callable[[], object]) -> list[object]:
        """Run ``func`` in a thread; its result, or [] when it did not return."""
        out: list[object] = []
        thread = threading.Thread(target=lambda: out.append(func()), daemon=True)
        thread.start()
        thread.join(10)
        return out

    def test_a_fresh_inventory_is_not_read_again(self) -> None:
        first = self.keeper.get()
        self.clock.now += 299
        for _ in range(50):
            self.assertIs(first, self.keeper.get())
        self.assertEqual(1, self.loads.count)

    def test_a_stale_inventory_is_served_while_one_refresh_runs(self) -> None:
        first = self.keeper.get()
        self.clock.now += 301
        self.loads.release.clear()          # vCenter slow: the refresh hangs
        answers = self._in_thread(lambda: [self.keeper.get() for _ in range(100)])
        self.assertEqual([[first] * 100], answers)
        self.assertTrue(self.loads.running.wait(10))
        self.assertTrue(self.keeper.refreshing)
        self.assertEqual(2, self.loads.count)       # one refresh, not one per reader
        self.loads.release.set()
        self.assertTrue(wait_for(lambda: not self.keeper.refreshing))
        self.assertEqual(_inventory(2), self.keeper.get())
        self.assertEqual(2, self.loads.count)

    def test_a_failed_refresh_is_logged_and_not_retried_by_every_lookup(self) -> None:
        first = self.keeper.get()
        self.clock.now += 301
        self.loads.fail = errors.VCenterUnreachable("vCenter https://vc/sdk unreachable")
        with self.assertLogs(LOGGER, "WARNING") as logs:
            self.assertIs(first, self.keeper.get())
            self.assertTrue(wait_for(lambda: not self.keeper.refreshing))
        self.assertIn("vCenter inventory not refreshed", logs.output[0])
        self.assertIn("unreachable", logs.output[0])
        for _ in range(100):
            self.assertIs(first, self.keeper.get())
        self.assertFalse(self.keeper.refreshing)
        self.assertEqual(2, self.loads.count)
        # After the hold-off one more try (and one more line in the log).
        self.clock.now += 31
        with self.assertLogs(LOGGER, "WARNING"):
            for _ in range(100):
                self.assertIs(first, self.keeper.get())
            self.assertTrue(wait_for(lambda: not self.keeper.refreshing))
        self.assertEqual(3, self.loads.count)
        # vCenter back: the next try takes.
        self.loads.fail = None
        self.clock.now += 31
        self.keeper.get()
        self.assertTrue(wait_for(lambda: not self.keeper.refreshing))
        self.assertEqual(_inventory(4), self.keeper.get())

    def test_refresh_true_reads_now_and_raises_what_vcenter_says(self) -> None:
        self.keeper.get()
        self.assertEqual(_inventory(2), self.keeper.get(refresh=True))
        self.loads.fail = errors.VCenterUnreachable("down")
        with self.assertRaises(errors.VCenterUnreachable):
            self.keeper.get(refresh=True)
        self.assertEqual(_inventory(2), self.keeper.get())    # the last good one kept

    def test_without_any_inventory_the_reader_waits_for_the_read(self) -> None:
        keeper = InventoryKeeper(self._failing_load, max_age=300.0)
        for _ in range(2):
            with self.assertRaises(errors.VCenterUnreachable):
                keeper.get()
        self.assertIsNone(keeper.current)

    @staticmethod
    def _failing_load() -> Inventory:
        raise errors.VCenterUnreachable("down")

    def test_update_changes_the_inventory_kept(self) -> None:
        self.keeper.get()
        self.keeper.update(lambda inv: _inventory(7))
        self.assertEqual(_inventory(7), self.keeper.get())
        self.assertEqual(1, self.loads.count)


if __name__ == "__main__":
    unittest.main()
