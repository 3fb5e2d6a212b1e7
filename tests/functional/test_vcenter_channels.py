"""Long vCenter calls and the calls that must not queue behind them, on the real simulator.

A process has one vCenter login; each handle on it (``VCenterSession.channel``)
serialises its own calls.  A call that holds the process's handle for long - a task
being waited for, a long read - must not hold back the whole-DVS listing (an audit of
thousands of port groups streams for seconds) nor the fabric worker's housekeeping
check of vCenter's identity: in bench23 (6,000 networks) that check waited ~8 s behind
the start's port-group listing, and a vMotion reached the leaves 7.5 s late.  The long
call here is a real call on the shared handle that keeps it until the test lets go.
"""
from __future__ import annotations

import shutil
import threading
import types
from concurrent import futures
from typing import Any, Callable, Iterator

import pytest

from networking_dvs_fabric.lab import vcsim as vcsim_mod
from networking_dvs_fabric.lab.vcsim import VCenterSimulator
from networking_dvs_fabric.sync.full_sync import FullSync
from networking_dvs_fabric.vcenter.backend import VSphereBackend
from networking_dvs_fabric.vcenter.session import VCenterSession
from vcsim_backend import DVS, started_backend

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("needs the Debian packages golang-go and golang-github-vmware-govmomi-dev",
                allow_module_level=True)

PATIENCE = 20.0     # seconds a call may take here before it counts as queued


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VSphereBackend]:
    with VCenterSimulator(tmp_path_factory.mktemp("vcsim-channels")) as sim, \
            started_backend(sim) as made:
        yield made


def _while_the_handle_is_held(session: VCenterSession, call: Callable[[], Any]) -> Any:
    """``call()`` (from another thread) while a call on ``session`` holds it; its
    answer, or a failure if it did not come within PATIENCE seconds."""
    holding, release = threading.Event(), threading.Event()

    def long_call(si: Any) -> None:
        si.CurrentTime()            # a real round trip first: the handle is in use
        holding.set()
        release.wait(PATIENCE * 3)

    holder = threading.Thread(target=session.invoke, args=(long_call, "a long call"))
    holder.start()
    try:
        assert holding.wait(10), "the long call never started"
        with futures.ThreadPoolExecutor(1) as pool:
            try:
                return pool.submit(call).result(timeout=PATIENCE)
            except futures.TimeoutError:
                pytest.fail(f"still waiting after {PATIENCE:.0f} s behind the long call")
            finally:
                release.set()
    finally:
        release.set()
        holder.join()


def test_the_port_group_listing_does_not_queue_behind_a_long_call(
        backend: VSphereBackend) -> None:
    listed = _while_the_handle_is_held(backend.session,
                                       lambda: backend.port_groups(DVS))
    assert listed, "the DVS's port groups (the simulator's own at least)"


def test_the_full_syncs_identity_check_does_not_queue_behind_a_long_call(
        backend: VSphereBackend) -> None:
    runtime = types.SimpleNamespace(
        fabric_settings=types.SimpleNamespace(full_sync_interval=0))
    sync = FullSync(runtime)  # type: ignore[arg-type]
    parts = types.SimpleNamespace(vsphere=backend)
    identity = _while_the_handle_is_held(backend.session,
                                         lambda: sync._vcenter_identity(parts))
    assert identity["vcenter"].startswith(backend.session.content.about.instanceUuid)
