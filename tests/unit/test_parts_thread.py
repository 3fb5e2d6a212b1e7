"""The full sync's parts thread gives back what it will not run.

Each item handed to the thread holds a count of the sync's lease (``lease_hold``);
``dropped`` gives it back.  An item handed over after the stop was once queued and
never run nor dropped: the count stayed taken for the process's life.
"""
import threading

from networking_dvs_fabric.sync.parts_thread import PartsThread


class _Recorder:
    def __init__(self) -> None:
        self.ran: list[list[str]] = []
        self.dropped: list[list[str]] = []
        self.release = threading.Event()

    def work(self, items: list[str]) -> None:
        self.release.wait(10)
        self.ran.append(items)

    def drop(self, items: list[str]) -> None:
        self.dropped.append(items)


def test_items_are_run_and_items_handed_over_after_the_stop_are_dropped() -> None:
    seen = _Recorder()
    parts = PartsThread(seen.work, seen.drop)
    parts.start()
    seen.release.set()
    parts.submit("first")
    assert parts.wait_idle(10)
    assert seen.ran == [["first"]]

    parts.stop()
    parts.join()
    parts.submit("late")
    assert seen.dropped == [["late"]]
    assert seen.ran == [["first"]]


def test_items_still_queued_at_the_stop_are_dropped_not_lost() -> None:
    seen = _Recorder()
    parts = PartsThread(seen.work, seen.drop)
    parts.start()
    parts.submit("under way")
    assert not parts.wait_idle(0.3)          # held in work()
    parts.submit("queued")
    parts.stop()
    seen.release.set()
    parts.join()
    assert seen.ran == [["under way"]]
    assert seen.dropped == [["queued"]]
