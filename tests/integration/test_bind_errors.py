"""vCenter faults during a bind, through the real API: the binding fails, the reason is
logged, nothing half-made is left, and binding works again once vCenter is back."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.certs import make_self_signed
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.probe import VCenterProbe
from tests.integration.conftest import HOST_C0, connect, start_lab, unique


@pytest.fixture(scope="module")
def fault_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab-faults")
    lab = start_lab(directory, "sqlite", "vsphere_dvs")
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)


def _api_log(lab: Lab) -> str:
    return (lab.dir / "logs" / "neutron-api.log").read_text(errors="replace")


def _bind(lab: Lab):
    neutron = connect(lab)
    net = neutron.network.create_network(
        name=unique("fault"), provider_network_type="vlan",
        provider_physical_network=topology.PHYSICAL_NETWORK)
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    return net, port


def _bind_after_recovery(lab: Lab, timeout: float = 20.0):
    """Bind until it works: after an outage the driver fails fast for unreachable_holdoff."""
    deadline = time.monotonic() + timeout
    while True:
        _, port = _bind(lab)
        if port.binding_vif_type == "dvs" or time.monotonic() > deadline:
            return port
        time.sleep(1.0)


def _no_port_group(lab: Lab, network_id: str) -> bool:
    with VCenterProbe(lab.status()["vcenter"]) as probe:
        return probe.port_groups_of_network(topology.DVS_NAME, network_id) == []


def test_bind_works_before_faults(fault_lab: Lab):
    _, port = _bind(fault_lab)
    assert port.binding_vif_type == "dvs"


def test_vcenter_unreachable(fault_lab: Lab):
    fault_lab.stop_vcenter()
    try:
        net, port = _bind(fault_lab)
        assert port.binding_vif_type == "binding_failed"
        assert "unreachable" in _api_log(fault_lab)
    finally:
        fault_lab.restart_vcenter()
    assert _no_port_group(fault_lab, net.id)
    port = _bind_after_recovery(fault_lab)
    assert port.binding_vif_type == "dvs", "binding must recover when vCenter is back"


def test_wrong_password(fault_lab: Lab):
    good = fault_lab.status()["vcenter"]["password"]
    fault_lab.restart_vcenter(password="not-" + good)
    try:
        net, port = _bind(fault_lab)
        assert port.binding_vif_type == "binding_failed"
        assert "wrong user name or password" in _api_log(fault_lab)
    finally:
        fault_lab.restart_vcenter(password=good)
    assert _no_port_group(fault_lab, net.id)


def test_untrusted_certificate(fault_lab: Lab, tmp_path: Path):
    status = fault_lab.status()["vcenter"]
    good_cert = Path(status["ca_file"])
    good_key = good_cert.with_name("lab-key.pem")
    rogue_cert, rogue_key = tmp_path / "rogue.pem", tmp_path / "rogue-key.pem"
    make_self_signed(rogue_cert, rogue_key)
    fault_lab.restart_vcenter(cert=rogue_cert, key=rogue_key)
    try:
        net, port = _bind(fault_lab)
        assert port.binding_vif_type == "binding_failed"
        assert "certificate does not verify" in _api_log(fault_lab)
    finally:
        fault_lab.restart_vcenter(cert=good_cert, key=good_key)
    assert _no_port_group(fault_lab, net.id)
    port = _bind_after_recovery(fault_lab)
    assert port.binding_vif_type == "dvs"
