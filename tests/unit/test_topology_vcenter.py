"""Placement of vSphere binding hosts, asked of the real vCenter simulator.

A cluster's compute host is placed on every leaf port of every ESXi host of the
cluster that the file cables (pre-provisioned); an ESXi host on its own ports,
with a known location.  A vCenter that cannot be reached raises: "unknown" must
never read as "nothing needed".
"""
from __future__ import annotations

import os
import signal

import pytest

import dvs_ml2_base as base  # skips the module without the simulator
from networking_dvs_fabric.lab import topology as lab_topology
from networking_dvs_fabric.topology import LeafPort, Topology
from networking_dvs_fabric.vcenter import errors
from networking_dvs_fabric.vcenter.backend import BackendSettings, VSphereBackend
from networking_dvs_fabric.vcenter.hosts import VCenterHostDirectory
from networking_dvs_fabric.vcenter.session import VCenterConfig, VCenterSession


@pytest.fixture(scope="module")
def sim():
    simulator = base.start_simulator()
    yield simulator
    base.stop_simulator(simulator)


def _directory(sim, **overrides) -> VCenterHostDirectory:
    config = VCenterConfig(url=overrides.get("url", sim.url), username=sim.username,
                           password=sim.password, ca_file=str(sim.ca_file),
                           connect_timeout=2, request_timeout=5, retries=1)
    settings = BackendSettings(datacenter="DC0", dvs_mappings={"physnet-dvs": "DVS0"},
                               host_mappings={"compute-c0": "DC0_C0"})
    return VCenterHostDirectory(VSphereBackend(settings, lambda: VCenterSession(config)))


@pytest.fixture(scope="module")
def lab_topology_file():
    endpoints = {name: f"tcp:127.0.0.1:{6640 + i}"
                 for i, name in enumerate(lab_topology.LEAF_NAMES)}
    return Topology.from_dict(lab_topology.fabric_topology(endpoints))


def test_cluster_is_placed_on_every_port_of_its_hosts(sim, lab_topology_file) -> None:
    where = lab_topology_file.placement("compute-c0", _directory(sim))
    assert where is not None
    assert where.physical_network == "physnet-dvs"
    expected = {LeafPort(a.leaf, a.port) for a in lab_topology.attachments()
                if a.esxi_host.startswith("DC0_C0_")}
    assert where.leaf_ports == expected
    assert len({p.leaf for p in expected}) >= 2      # the lab spreads a cluster over leaves
    assert where.location is None                    # the VM's host is not known from Nova


def test_esxi_host_is_placed_on_its_own_ports(sim, lab_topology_file) -> None:
    where = lab_topology_file.placement("DC0_C1_H2", _directory(sim))
    att = next(a for a in lab_topology.attachments() if a.esxi_host == "DC0_C1_H2")
    assert where is not None
    assert where.leaf_ports == {LeafPort(att.leaf, att.port)}
    assert where.location == att.leaf


def test_hosts_vcenter_does_not_know_are_not_placed(sim, lab_topology_file) -> None:
    directory = _directory(sim)
    assert lab_topology_file.placement("compute-unknown", directory) is None
    assert lab_topology_file.placement("DC0_C0_H0", directory, "physnet-other") is None


def test_unreachable_vcenter_raises_instead_of_answering_nothing(sim, lab_topology_file) -> None:
    from networking_dvs_fabric.lab.procs import free_port
    directory = _directory(sim, url=f"https://127.0.0.1:{free_port()}/sdk")
    with pytest.raises(errors.VCenterError):
        lab_topology_file.placement("compute-c0", directory)


def test_a_stale_inventory_and_a_hung_vcenter_cost_a_lookup_nothing() -> None:
    """Placement asks once per ESXi host per port: with the inventory old and vCenter
    not answering, one refresh runs (and fails) in the background; every lookup gets
    the last inventory, and none starts another try before the hold-off."""
    simulator = base.start_simulator()
    try:
        config = VCenterConfig(url=simulator.url, username=simulator.username,
                               password=simulator.password, ca_file=str(simulator.ca_file),
                               connect_timeout=1, request_timeout=1, retries=1)
        settings = BackendSettings(datacenter="DC0", dvs_mappings={"physnet-dvs": "DVS0"},
                                   host_mappings={"compute-c0": "DC0_C0"},
                                   inventory_max_age=0.0)     # always stale
        backend = VSphereBackend(settings, lambda: VCenterSession(config))
        reads: list[str] = []
        invoke = backend.session.invoke

        def counting(func, what):
            if what.startswith("read inventory"):
                reads.append(what)
            return invoke(func, what)
        backend.session.invoke = counting          # a spy: every call still goes through
        directory = VCenterHostDirectory(backend)
        hosts = directory.esxi_hosts("compute-c0")
        assert hosts == ["DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"] and len(reads) == 1

        os.kill(simulator.pid, signal.SIGSTOP)     # vCenter hangs
        try:
            for _ in range(30):
                assert directory.esxi_hosts("compute-c0") == hosts
                assert directory.physical_networks("DC0_C0_H1") == {"physnet-dvs": "DVS0"}
            assert base.wait_for(lambda: not backend._inventories.refreshing, 30)
            assert len(reads) == 2                 # one refresh, in the background
            for _ in range(30):                    # failed: not tried again at once
                assert directory.esxi_hosts("compute-c0") == hosts
            assert len(reads) == 2 and not backend._inventories.refreshing
            with pytest.raises(errors.VCenterUnreachable):   # asked for: read now
                backend.inventory(refresh=True)
            assert len(reads) == 3
        finally:
            os.kill(simulator.pid, signal.SIGCONT)
        backend.stop()
    finally:
        base.stop_simulator(simulator)
