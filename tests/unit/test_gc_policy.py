"""The periodic workers' process gets the configured young GC threshold when the first
of the project's workers starts (``gc_policy``); 0 leaves Python's."""
from __future__ import annotations

import gc
import logging
import time
from typing import Iterator

import pytest
from oslo_config import cfg

from networking_dvs_fabric import gc_policy, opts
from networking_dvs_fabric.thread_worker import ThreadWorker


class _Idle(ThreadWorker):
    name = thread_name = "test-idle-worker"

    def _loop(self) -> None:
        self._stop.wait()


@pytest.fixture
def conf() -> Iterator[cfg.ConfigOpts]:
    """The process's options (where ThreadWorker reads them), thresholds restored."""
    before = gc.get_threshold()
    opts.register_opts(cfg.CONF)
    gc_policy._reset_for_tests()
    yield cfg.CONF
    cfg.CONF.clear_override("worker_gc_young_threshold", group=opts.FABRIC_GROUP)
    gc.set_threshold(*before)
    gc_policy._reset_for_tests()


def _start_two() -> None:
    workers = [_Idle(), _Idle()]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.stop()
        worker.wait()


def test_the_first_worker_sets_the_configured_threshold_once(
        conf: cfg.ConfigOpts, caplog: pytest.LogCaptureFixture) -> None:
    conf.set_override("worker_gc_young_threshold", 12345, group=opts.FABRIC_GROUP)
    old = gc.get_threshold()
    with caplog.at_level(logging.INFO, logger=gc_policy.__name__):
        _start_two()
    assert gc.get_threshold() == (12345, *old[1:])
    said = [r.getMessage() for r in caplog.records if r.name == gc_policy.__name__]
    assert said == [f"periodic workers: Python's young-generation GC threshold set to 12345 "
                    f"(was {old[0]}; [ml2_fabric] worker_gc_young_threshold, 0 leaves it)"]


def test_zero_leaves_pythons_thresholds(conf: cfg.ConfigOpts) -> None:
    conf.set_override("worker_gc_young_threshold", 0, group=opts.FABRIC_GROUP)
    old = gc.get_threshold()
    _start_two()
    assert gc.get_threshold() == old


def test_the_default_is_the_documented_one(conf: cfg.ConfigOpts) -> None:
    old = gc.get_threshold()
    _start_two()
    assert gc.get_threshold() == (gc_policy.DEFAULT_YOUNG_THRESHOLD, *old[1:])


def test_a_negative_threshold_in_the_config_file_is_refused_naming_the_option(
        tmp_path) -> None:
    path = tmp_path / "ml2_conf.ini"
    path.write_text("[ml2_fabric]\nworker_gc_young_threshold = -1\n")
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[str(path)])
    with pytest.raises(cfg.ConfigFileValueError, match="worker_gc_young_threshold"):
        conf.ml2_fabric.worker_gc_young_threshold


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == gc_policy.__name__ and r.levelno == logging.WARNING]


def test_a_long_collection_is_logged_with_its_generation(
        conf: cfg.ConfigOpts, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc_policy, "LONG_PAUSE_S", 0.0)     # every collection is "long"
    _start_two()
    with caplog.at_level(logging.WARNING, logger=gc_policy.__name__):
        gc.collect()                                         # a full one
        gc_policy.report()          # (or the reporter thread, whichever comes first)
        deadline = time.monotonic() + 10
        while not any("generation-2 garbage collection" in m for m in _said(caplog)):
            assert time.monotonic() < deadline, _said(caplog)
            time.sleep(0.1)
    assert "stopped every thread of the process for" in _said(caplog)[-1]


def test_a_short_collection_is_not_logged(
        conf: cfg.ConfigOpts, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _start_two()
    gc_policy.report()                                       # nothing left from before
    monkeypatch.setattr(gc_policy, "LONG_PAUSE_S", 60.0)
    with caplog.at_level(logging.WARNING, logger=gc_policy.__name__):
        gc.collect()
        assert gc_policy.report() == 0
    assert not _said(caplog)
