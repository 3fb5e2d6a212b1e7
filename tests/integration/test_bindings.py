"""Binding through the lab's real Neutron API; results read back from vCenter with pyVmomi."""
from __future__ import annotations

import concurrent.futures
import time
import uuid

import pytest

from networking_dvs_fabric.lab import topology
from tests.integration.conftest import (HOST_C0, HOST_C1, TOP_DRIVER, connect, deployment_id,
                                        unique)

DVS = topology.DVS_NAME
PHYSNET = topology.PHYSICAL_NETWORK


def _vlan_network(neutron, vlan=None, name=None):
    attrs = {"provider_network_type": "vlan", "provider_physical_network": PHYSNET}
    if vlan is not None:
        attrs["provider_segmentation_id"] = vlan
    return neutron.network.create_network(name=name or unique("net"), **attrs)


def _wait_gone(probe, network_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not probe.port_groups_of_network(DVS, network_id):
            return True
        time.sleep(0.2)
    return False


def test_provider_vlan_network_becomes_port_group_with_that_vlan(neutron, probe):
    net = _vlan_network(neutron, vlan=555)
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    assert port.binding_vif_type == "dvs"
    assert port.status == "ACTIVE"
    details = port.binding_vif_details
    [pg] = probe.port_groups_of_network(DVS, net.id)
    assert pg.vlan == 555
    assert details["pg_id"] == pg.key
    assert details["dvs_id"] == pg.dvs_uuid
    assert details["dvs_port_group_name"] == pg.name
    assert "networking-dvs-fabric" in pg.description and net.id in pg.description


def test_esxi_host_name_is_accepted_as_binding_host(neutron, probe):
    net = _vlan_network(neutron)
    port = neutron.network.create_port(network_id=net.id, binding_host_id="DC0_C1_H2")
    assert port.binding_vif_type == "dvs"
    assert len(probe.port_groups_of_network(DVS, net.id)) == 1


def test_unknown_host_is_left_to_other_drivers(neutron, probe):
    net = _vlan_network(neutron)
    port = neutron.network.create_port(network_id=net.id, binding_host_id="kvm-host-1")
    assert port.binding_vif_type == "binding_failed"
    assert probe.port_groups_of_network(DVS, net.id) == []


def test_hierarchical_under_a_top_level_driver(neutron, probe):
    net = neutron.network.create_network(name=unique("vx"), provider_network_type="vxlan")
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C1)
    assert port.binding_vif_type == "dvs"
    assert port.status == "ACTIVE"          # the top-level driver holds no provisioning block
    assert port.binding_vif_details["bound_drivers"] == {"0": TOP_DRIVER, "1": "vsphere_dvs"}
    [pg] = probe.port_groups_of_network(DVS, net.id)
    # The VLAN is the dynamic segment's, from the VLAN range, not the VNI.
    assert topology.VLAN_RANGE[0] <= pg.vlan <= topology.VLAN_RANGE[1]
    assert pg.vlan != net.provider_segmentation_id
    second = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    assert second.binding_vif_details["pg_id"] == pg.key
    assert len(probe.port_groups_of_network(DVS, net.id)) == 1


def test_twenty_concurrent_ports_make_one_port_group(lab, neutron, probe):
    net = _vlan_network(neutron)

    def create(i):
        conn = connect(lab)      # one client per thread, like separate Nova computes
        return conn.network.create_port(network_id=net.id, name=f"c{i}",
                                        binding_host_id=HOST_C0 if i % 2 else HOST_C1)

    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        ports = list(pool.map(create, range(20)))
    assert [p.binding_vif_type for p in ports] == ["dvs"] * 20
    assert len({p.binding_vif_details["pg_id"] for p in ports}) == 1
    assert len(probe.port_groups_of_network(DVS, net.id)) == 1


@pytest.mark.parametrize("name", [
    "x" * 255,
    "ネットワーク-" * 30,
    "it's \"quoted\" / with \\ slashes % and spaces " * 5,
])
def test_names_at_the_edges(neutron, probe, name):
    name = name[:254] + "!"   # Neutron refuses names with trailing blanks
    net = _vlan_network(neutron, name=name)
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    assert port.binding_vif_type == "dvs"
    [pg] = probe.port_groups_of_network(DVS, net.id)
    assert len(pg.name) <= 80
    assert net.id in pg.name
    assert "/" not in pg.name and "\\" not in pg.name
    assert port.binding_vif_details["dvs_port_group_name"] == pg.name


def test_port_group_goes_with_last_port_and_with_network(neutron, probe):
    net = _vlan_network(neutron)
    first = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    second = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    assert len(probe.port_groups_of_network(DVS, net.id)) == 1
    neutron.network.delete_port(first)
    assert len(probe.port_groups_of_network(DVS, net.id)) == 1, "still used by a port"
    neutron.network.delete_port(second)
    assert _wait_gone(probe, net.id), "port group outlived its last port"

    other = _vlan_network(neutron)
    neutron.network.create_port(network_id=other.id, binding_host_id=HOST_C1,
                                device_owner="network:dhcp")
    assert len(probe.port_groups_of_network(DVS, other.id)) == 1
    for port in neutron.network.ports(network_id=other.id):
        neutron.network.delete_port(port)
    neutron.network.delete_network(other)
    assert _wait_gone(probe, other.id), "port group outlived its network"


def test_unbinding_a_port_releases_the_port_group(neutron, probe):
    net = _vlan_network(neutron)
    port = neutron.network.create_port(network_id=net.id, binding_host_id=HOST_C0)
    assert len(probe.port_groups_of_network(DVS, net.id)) == 1
    neutron.network.update_port(port, binding_host_id="")
    assert _wait_gone(probe, net.id)


def test_sweeper_in_periodic_workers_removes_orphans_and_spares_foreign(lab, probe):
    """The clean-up sweep runs in neutron-periodic-workers: a port group of ours whose
    network does not exist goes (after two sweeps); one without our marker stays, and so
    do another deployment's and a legacy one (no deployment id) of a network not here."""
    from pyVmomi import vim

    orphan_net = str(uuid.uuid4())
    switch = probe.dvs(DVS)

    def add(name, description):
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=name, description=description, type="earlyBinding", numPorts=8)
        task = switch.AddDVPortgroup_Task([spec])
        while task.info.state not in ("success", "error"):
            time.sleep(0.05)
        assert task.info.state == "success"

    ours = deployment_id(lab)
    add(f"orphan-{orphan_net}",
        f"managed-by=networking-dvs-fabric deployment={ours} network-id={orphan_net}")
    foreign_net = str(uuid.uuid4())
    add(f"foreign-{foreign_net}", "made by someone else")
    other_net, legacy_net = str(uuid.uuid4()), str(uuid.uuid4())
    add(f"other-{other_net}",
        f"managed-by=networking-dvs-fabric deployment={uuid.uuid4()} network-id={other_net}")
    add(f"legacy-{legacy_net}", f"managed-by=networking-dvs-fabric network-id={legacy_net}")
    assert _wait_gone(probe, orphan_net, timeout=60), "the sweep never removed the orphan"
    for kept in (foreign_net, other_net, legacy_net):
        assert len(probe.port_groups_of_network(DVS, kept)) == 1
