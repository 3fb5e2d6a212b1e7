"""The lab's vCenter simulator: inventory, credentials, certificate, lifecycle."""
from __future__ import annotations

import shutil
import ssl
from pathlib import Path
from typing import Iterator

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim

from networking_dvs_fabric.lab import vcsim as vcsim_mod
from networking_dvs_fabric.lab.certs import make_self_signed
from networking_dvs_fabric.lab.procs import LabError, pid_alive
from networking_dvs_fabric.lab.vcsim import VCenterSimulator, build_vcsim

if shutil.which("go") is None or not (vcsim_mod.GOVMOMI_SRC / "simulator").is_dir():
    pytest.skip("needs the Debian packages golang-go and golang-github-vmware-govmomi-dev",
                allow_module_level=True)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VCenterSimulator]:
    simulator = VCenterSimulator(tmp_path_factory.mktemp("vcsim"))
    with simulator:
        yield simulator


def connect(sim: VCenterSimulator, password: str | None = None,
            context: ssl.SSLContext | None = None) -> vim.ServiceInstance:
    if context is None:
        context = ssl.create_default_context(cafile=str(sim.ca_file))
    return SmartConnect(host="127.0.0.1", port=sim.port, user=sim.username,
                        pwd=sim.password if password is None else password,
                        sslContext=context)


def entities(si: vim.ServiceInstance, kind: type) -> dict[str, vim.ManagedEntity]:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return {entity.name: entity for entity in view.view}
    finally:
        view.Destroy()


def test_url_and_login_verifies_certificate(sim: VCenterSimulator) -> None:
    assert sim.url == f"https://127.0.0.1:{sim.port}/sdk"
    si = connect(sim)
    try:
        assert si.content.sessionManager.currentSession.userName == sim.username
    finally:
        Disconnect(si)


def test_inventory(sim: VCenterSimulator) -> None:
    si = connect(sim)
    try:
        assert set(entities(si, vim.Datacenter)) == {"DC0"}
        clusters = entities(si, vim.ClusterComputeResource)
        assert set(clusters) == {"DC0_C0", "DC0_C1"}
        for name, cluster in clusters.items():
            assert sorted(h.name for h in cluster.host) == [f"{name}_H{i}" for i in range(3)]
        all_hosts = {f"DC0_C{c}_H{h}" for c in range(2) for h in range(3)}
        assert set(entities(si, vim.HostSystem)) == all_hosts
        switches = entities(si, vim.DistributedVirtualSwitch)
        assert set(switches) == {"DVS0"}
        dvs = switches["DVS0"]
        assert {h.name for h in dvs.summary.hostMember} == all_hosts
        assert "DC0_DVPG0" in {pg.name for pg in dvs.portgroup}
    finally:
        Disconnect(si)


def test_wrong_password_is_refused(sim: VCenterSimulator) -> None:
    with pytest.raises(vim.fault.InvalidLogin):
        connect(sim, password=sim.password + "-wrong")


def test_default_ca_store_does_not_trust_the_simulator(sim: VCenterSimulator) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(sim, context=ssl.create_default_context())


def test_json_round_trip(sim: VCenterSimulator) -> None:
    copy = VCenterSimulator.from_json(sim.to_json())
    assert (copy.url, copy.pid, copy.password, copy.ca_file) == (
        sim.url, sim.pid, sim.password, sim.ca_file)
    assert copy.running()


def test_restart_with_new_password_and_untrusted_cert(tmp_path: Path) -> None:
    with VCenterSimulator(tmp_path / "sim", password="first") as simulator:
        port, trusted = simulator.port, ssl.create_default_context(cafile=str(simulator.ca_file))
        simulator.restart_with(password="second")
        assert simulator.port == port
        with pytest.raises(vim.fault.InvalidLogin):
            connect(simulator, password="first", context=trusted)
        Disconnect(connect(simulator, password="second", context=trusted))

        make_self_signed(tmp_path / "other.pem", tmp_path / "other.key")
        simulator.restart_with(cert=tmp_path / "other.pem", key=tmp_path / "other.key")
        assert simulator.port == port
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(simulator, context=trusted)


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    simulator = VCenterSimulator(tmp_path).start()
    pid = simulator.pid
    assert pid is not None and pid_alive(pid)
    simulator.stop()
    assert not pid_alive(pid)
    assert not simulator.running()


def test_missing_go_names_the_package(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vcsim_mod.shutil, "which", lambda name: None)
    with pytest.raises(LabError, match="golang-go"):
        build_vcsim(tmp_path / "cache")
