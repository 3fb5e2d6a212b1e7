"""The names the project writes into Neutron's database, defined once.

Driver names are what ML2 stores in ``ml2_port_binding_levels.driver`` (and the
entry point names in ``pyproject.toml``); resource types are the journal's
``resource_type`` column.  A port group's journal resource id names its network
and its DVS.
"""
from __future__ import annotations

FABRIC_DRIVER = "fabric_hwvtep"
VSPHERE_DRIVER = "vsphere_dvs"

RESOURCE_NETWORK = "network"          # the fabric worker converges the network's leaves
RESOURCE_PORT_GROUP = "port_group"    # the port group worker releases a (network, DVS)
# The policy worker (issue 13): puts the right filter on each port group of a
# (network, DVS), and moves a port's NIC to the port group of its set.
RESOURCE_PORT_GROUP_POLICY = "port_group_policy"
# A port joined or left a group (or its addresses changed) on a (network, DVS): that
# network's sets holding the group, and - found by the worker, not in the API's
# transaction - every network's sets whose rules name the group as remote group.
RESOURCE_GROUP_MEMBERS = "security_group_members"
RESOURCE_PORT_SET = "port_set"
POLICY_RESOURCES = (RESOURCE_PORT_GROUP_POLICY, RESOURCE_GROUP_MEMBERS, RESOURCE_PORT_SET)


def port_group_resource(network_id: str, dvs_name: str) -> str:
    """Journal resource id of a (network, DVS) port group; network ids hold no ':'."""
    return f"{network_id}:{dvs_name}"


def parse_port_group_resource(resource_id: str) -> tuple[str, str]:
    network_id, _, dvs_name = resource_id.partition(":")
    return network_id, dvs_name
