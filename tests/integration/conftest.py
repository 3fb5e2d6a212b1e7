"""Integration tests: the lab's real Neutron API (uWSGI) through openstacksdk.

One lab per session on MariaDB (several API worker processes, as in production),
with the test top-level driver from tests/fixtures on the lab's PYTHONPATH, so
both level-0 (provider VLAN) and hierarchical bindings can be exercised.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import openstack
import pytest

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.probe import VCenterProbe

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOP_DRIVER = "dvsf_test_toplevel"
HOST_C0 = topology.compute_host("DC0_C0")
HOST_C1 = topology.compute_host("DC0_C1")


def lab_env() -> dict[str, str]:
    """Environment for a lab whose Neutron can load the test top-level driver."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{FIXTURES}{os.pathsep}{path}" if path else str(FIXTURES),
            "DVSF_TEST_TOPLEVEL_HOSTS": f"{HOST_C0},{HOST_C1}",
            "DVSF_TEST_TOPLEVEL_PHYSNET": topology.PHYSICAL_NETWORK}


def start_lab(directory: Path, db: str, drivers: str) -> Lab:
    saved = {k: os.environ.get(k) for k in lab_env()}
    os.environ.update(lab_env())
    try:
        lab = Lab(directory)
        lab.up(mechanism_drivers=drivers, db=db)
        return lab
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def connect(lab: Lab) -> openstack.connection.Connection:
    url = lab.status()["neutron"]["url"]
    return openstack.connection.Connection(auth_type="none", auth={"endpoint": url},
                                           network_endpoint_override=url)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("lab-mariadb")
    lab = start_lab(directory, "mariadb", f"{TOP_DRIVER},vsphere_dvs")
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def neutron(lab: Lab) -> openstack.connection.Connection:
    return connect(lab)


@pytest.fixture
def probe(lab: Lab) -> Iterator[VCenterProbe]:
    with VCenterProbe(lab.status()["vcenter"]) as p:
        yield p


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
