"""Benchmark CPU pinning: the API's process tree on the first CPU, the rest elsewhere."""
import os
import subprocess
from pathlib import Path

import pytest

from networking_dvs_fabric.cmd import cpu_pinning

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs at least two CPUs to pin apart")


class _FakeLab:
    """Only what pin_labs reads of a Lab: its directory and its recorded daemons."""

    def __init__(self, state):
        self.dir = Path("/tmp/fake-lab")
        self._state = state

    def state(self):
        return self._state


def _affinity(pid):
    return os.sched_getaffinity(pid)


def test_api_tree_and_other_daemons_get_separate_cpus():
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    # An "API" whose worker is a child process, like uWSGI's master and workers.
    api = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    other = subprocess.Popen(["sleep", "60"])
    children = []
    try:
        # Wait for the API's child to exist.
        for _ in range(100):
            children = Path(f"/proc/{api.pid}/task/{api.pid}/children").read_text().split()
            if children:
                break
            os.sched_yield()
        assert children, "the API stand-in never forked its worker"
        lab = _FakeLab({"daemons": [{"name": "neutron-api", "pid": api.pid}],
                        "services": {"vcsim": {"daemon": {"name": "vcsim", "pid": other.pid}}}})
        pinning = cpu_pinning.pin_labs([lab])
        assert pinning["api_cpus"] == [cpus[0]]
        assert _affinity(api.pid) == {cpus[0]}
        assert _affinity(int(children[0])) == {cpus[0]}
        assert _affinity(other.pid) == set(cpus[1:])
        assert os.sched_getaffinity(0) == set(cpus[1:])
        cpu_pinning.restore(pinning)
        assert os.sched_getaffinity(0) == before
    finally:
        os.sched_setaffinity(0, before)
        for child in children:
            try:
                os.kill(int(child), 9)
            except ProcessLookupError:
                pass
        for proc in (api, other):
            proc.kill()
            proc.wait()
