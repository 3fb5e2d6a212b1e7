"""Integration tests: the lab's real Neutron API (uWSGI) through openstacksdk.

One lab per session on MariaDB (several API worker processes, as in production),
with the test top-level driver from tests/fixtures on the lab's PYTHONPATH, so
both level-0 (provider VLAN) and hierarchical bindings can be exercised.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
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
# Where a failed run's lab logs are kept (the lab's own directory is removed).
KEPT_LABS = Path(os.environ.get("DVSF_FAILED_LABS", "/tmp/dvsf-failed-labs"))


def keep_lab_logs(directory: Path, name: str) -> Path:
    """Copy the lab's ``state.json`` and every ``*.log`` under ``directory`` (Neutron's,
    vcsim's, the leaves') to ``KEPT_LABS/<name>-<time>/``, same relative paths."""
    target = KEPT_LABS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # (dnsmasq's log, with --log-dhcp, is <agent host>/dnsmasq/<network>/dhcp_dns_log)
    for path in [directory / "state.json", *directory.rglob("*.log"),
                 *directory.rglob("dhcp_dns_log")]:
        if path.is_file():
            (target / path.relative_to(directory)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.relative_to(directory))
    return target


@contextlib.contextmanager
def lab_directory(request: pytest.FixtureRequest,
                  factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A lab fixture's directory, removed on exit.  When the fixture's body raised or a
    test failed while it was in use, the lab's logs are kept first (``keep_lab_logs``)
    and the place is printed: a flaky failure can then be read after the run.
    Stop the lab inside the ``with`` so its logs are complete when they are copied."""
    directory = factory.mktemp(name)
    failed_before = request.session.testsfailed
    failed = False
    try:
        yield directory
    except BaseException:
        failed = True
        raise
    finally:
        if failed or request.session.testsfailed > failed_before:
            scope = getattr(request.module, "__name__", name).rpartition(".")[2] \
                if request.scope == "module" else name
            kept = keep_lab_logs(directory, scope)
            # Past pytest's capture: a passing teardown's output is never shown.
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            say = reporter.write_line if reporter else print
            say(f"\nlab logs of the failed run kept in {kept}")
        shutil.rmtree(directory, ignore_errors=True)


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
def lab(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_directory(request, tmp_path_factory, "lab-mariadb") as directory:
        lab = start_lab(directory, "mariadb", f"{TOP_DRIVER},vsphere_dvs")
        try:
            yield lab
        finally:
            lab.down()


@pytest.fixture(scope="session")
def neutron(lab: Lab) -> openstack.connection.Connection:
    return connect(lab)


@pytest.fixture
def probe(lab: Lab) -> Iterator[VCenterProbe]:
    with VCenterProbe(lab.status()["vcenter"]) as p:
        yield p


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def deployment_id(lab: Lab) -> str:
    """The lab's deployment id, as ``dvs-fabric audit`` shows it."""
    out = subprocess.run([sys.executable, "-m", "networking_dvs_fabric.cmd.main",
                          "--lab-dir", str(lab.dir), "audit", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.stdout, out.stderr
    return json.loads(out.stdout)["deployment"]
