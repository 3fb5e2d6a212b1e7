"""The port group cache's lookups read one (DVS, network) bucket, and answer as before.

No vCenter here: the cache is fed the watch's update sets (``soap_watch.UpdateSet``)
and our own ``remember``/``forget`` directly, on a clock of the test's.  What
``of_network``/``get``/``count`` answer is checked against the old definition - a
walk over every followed port group in order of arrival, then every provisional
one, dropping those past their deadline - after each of thousands of random steps.
"""
from __future__ import annotations

import random
import unittest
import uuid
from unittest import mock

from networking_dvs_fabric.vcenter import naming, pg_cache
from networking_dvs_fabric.vcenter.pg_cache import PROVISIONAL_SECONDS, PortGroupCache
from networking_dvs_fabric.vcenter.portgroups import PortGroup
from networking_dvs_fabric.vcenter.soap_watch import ObjectUpdate, PropertyChange, UpdateSet

DVSS = ("dvs-1", "dvs-2")
NETWORKS = tuple(str(uuid.UUID(int=i)) for i in (1, 2, 3))    # the marker holds UUIDs
NET_A, NET_B, _ = NETWORKS
MINE = str(uuid.UUID(int=99999))
SETS = (naming.OPEN_SET, "s1")
MOIDS = tuple(f"dvportgroup-{i}" for i in range(10))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class OldCache:
    """The cache's answers as the scan over every entry gave them (before the index)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.watched: dict[str, tuple[str, str, str]] = {}   # moid -> (dvs, net, set)
        self.provisional: dict[str, tuple[str, str, str, float]] = {}

    def seen(self, moid: str, entry: tuple[str, str, str] | None) -> None:
        self.provisional.pop(moid, None)
        if entry is None:
            self.watched.pop(moid, None)
        else:
            self.watched[moid] = entry

    def remember(self, moid: str, entry: tuple[str, str, str]) -> None:
        if moid in self.watched:
            self.watched[moid] = entry
        else:
            self.provisional[moid] = entry + (self.clock() + PROVISIONAL_SECONDS,)

    def forget(self, moid: str) -> None:
        self.watched.pop(moid, None)
        self.provisional.pop(moid, None)

    def of_network(self, dvs: str, net: str) -> list[str]:
        found: dict[str, str] = {}
        for moid, (d, n, s) in self.watched.items():
            if d == dvs and n == net:
                found.setdefault(s, moid)
        now = self.clock()
        for moid, (d, n, s, until) in list(self.provisional.items()):
            if until < now:
                del self.provisional[moid]
            elif d == dvs and n == net:
                found.setdefault(s, moid)
        return list(found.values())

    def count(self) -> int:
        return len(self.watched) + len(self.provisional)


def _update(moid: str, entry: tuple[str, str, str] | None, leave: bool = False) -> UpdateSet:
    if leave:
        return UpdateSet("v", False, (ObjectUpdate(moid, "leave", ()),))
    if entry is None:       # a port group without our marker
        changes = (PropertyChange("name", "assign", moid),
                   PropertyChange("config.description", "assign", "someone else's"),
                   PropertyChange("config.distributedVirtualSwitch", "assign", DVSS[0]))
    else:
        dvs, net, set_key = entry
        changes = (PropertyChange("name", "assign", f"pg-{moid}"),
                   PropertyChange("key", "assign", moid),
                   PropertyChange("config.description", "assign",
                                  naming.marker(net, "d0", set_key)),
                   PropertyChange("config.distributedVirtualSwitch", "assign", dvs))
    return UpdateSet("v", False, (ObjectUpdate(moid, "modify", changes),))


def _pg(moid: str, entry: tuple[str, str, str]) -> PortGroup:
    _, net, set_key = entry
    return PortGroup(key=moid, name=f"pg-{moid}", moid=moid, vlan=100, network_id=net,
                     deployment="d0", set_key=set_key)


class TestIndexedLookups(unittest.TestCase):

    def setUp(self) -> None:
        self.clock = Clock()
        patcher = mock.patch.object(pg_cache.time, "monotonic", self.clock)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.cache = PortGroupCache(lambda: None, "datacenter-2")   # never started
        self.cache._ready.set()     # as after the watch's first full update

    def test_answers_as_the_walk_over_every_entry_did(self) -> None:
        rnd = random.Random(15)
        old = OldCache(self.clock)
        for step in range(6000):
            moid = rnd.choice(MOIDS)
            entry = (rnd.choice(DVSS), rnd.choice(NETWORKS), rnd.choice(SETS))
            what = rnd.random()
            if what < 0.35:
                self.cache._apply(_update(moid, entry))
                old.seen(moid, entry)
            elif what < 0.42:
                self.cache._apply(_update(moid, None))
                old.seen(moid, None)
            elif what < 0.50:
                self.cache._apply(_update(moid, None, leave=True))
                old.seen(moid, None)
            elif what < 0.80:
                self.cache.remember(entry[0], _pg(moid, entry))
                old.remember(moid, entry)
            else:
                self.cache.forget(_pg(moid, entry))
                old.forget(moid)
            self.clock.now += rnd.choice((0.0, 0.5, 1.0, 2.5))
            dvs, net = rnd.choice(DVSS), rnd.choice(NETWORKS)
            with self.subTest(step=step):
                self.assertEqual(old.of_network(dvs, net),
                                 [pg.moid for pg in self.cache.of_network(dvs, net)])
                self.assertEqual(old.count(), self.cache.count())
                for set_key in SETS:
                    want = next((m for m in old.of_network(dvs, net)
                                 if old.watched.get(m, old.provisional.get(m, ("",) * 3))[2]
                                 == set_key), None)
                    got = self.cache.get(dvs, net, set_key)
                    self.assertEqual(want, got.moid if got else None)

    def test_a_lookup_reads_only_its_own_bucket(self) -> None:
        """Thousands of other networks' port groups are not looked at: the answer
        comes from the (DVS, network) entries alone."""
        for i in range(5000):
            self.cache._apply(_update(f"dvportgroup-{i}",
                                      ("dvs-1", str(uuid.UUID(int=i + 10)), "open")))
        self.cache._apply(_update("dvportgroup-x", ("dvs-1", MINE, "open")))
        self.cache.remember("dvs-1", _pg("dvportgroup-y", ("dvs-1", MINE, "s1")))
        self.assertEqual(5001, len(self.cache._by_moid))
        buckets = self.cache._by_moid._buckets
        self.assertEqual({"dvportgroup-x"}, set(buckets[("dvs-1", MINE)]))
        self.assertEqual(["dvportgroup-x", "dvportgroup-y"],
                         [pg.moid for pg in self.cache.of_network("dvs-1", MINE)])
        self.assertEqual([], self.cache.of_network("dvs-2", MINE))

    def test_a_port_group_moved_to_another_network_leaves_its_old_bucket(self) -> None:
        self.cache._apply(_update("dvportgroup-1", ("dvs-1", NET_A, "open")))
        self.cache._apply(_update("dvportgroup-1", ("dvs-1", NET_B, "open")))
        self.assertEqual([], self.cache.of_network("dvs-1", NET_A))
        self.assertEqual(["dvportgroup-1"],
                         [pg.moid for pg in self.cache.of_network("dvs-1", NET_B)])
        self.cache._apply(_update("dvportgroup-1", None, leave=True))
        self.assertEqual({}, self.cache._by_moid._buckets)

    def test_a_provisional_entry_lasts_its_few_seconds(self) -> None:
        pg = _pg("dvportgroup-1", ("dvs-1", NET_A, "open"))
        self.cache.remember("dvs-1", pg)
        self.assertEqual(pg, self.cache.get("dvs-1", NET_A))
        self.clock.now += PROVISIONAL_SECONDS + 0.1
        self.assertIsNone(self.cache.get("dvs-1", NET_A))
        self.assertEqual(0, self.cache.count())


if __name__ == "__main__":
    unittest.main()
