"""The demo behind ``make demo``: lab up, a network and a port on a cluster, lab down.

It shows the one thing this stage of the project does end to end: a Neutron
VLAN network bound to a vCenter cluster becomes a port group on the DVS with
that VLAN, and Nova gets what it needs to plug the VM (``vif_details``).
"""
from __future__ import annotations

import sys

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.probe import VCenterProbe


def _say(text: str) -> None:
    print(text, flush=True)


def run(lab: Lab) -> int:
    status = lab.up()
    try:
        _say(f"\nlab is up; Neutron at {status['neutron']['url']}")
        neutron = NeutronClient(status["neutron"]["url"])
        cluster = topology.CLUSTERS[0]
        host = topology.compute_host(cluster)
        network = neutron.create_network(
            "demo-net", provider={"provider:network_type": "vlan",
                                  "provider:physical_network": topology.PHYSICAL_NETWORK})
        vlan = network["provider:segmentation_id"]
        _say(f"network {network['name']} ({network['id']}): VLAN {vlan} on "
             f"{topology.PHYSICAL_NETWORK}")
        port = neutron.create_port(network["id"], host=host, name="demo-vm-nic")
        details = port["binding:vif_details"]
        _say(f"port {port['id']} bound to {host} (cluster {cluster}): "
             f"vif_type={port['binding:vif_type']} status={port['status']}")
        _say(f"  vif_details: dvs_id={details.get('dvs_id')} pg_id={details.get('pg_id')} "
             f"dvs_port_group_name={details.get('dvs_port_group_name')!r}")
        if port["binding:vif_type"] != "dvs":
            _say(f"binding failed; see {lab.dir / 'logs' / 'neutron-api.log'}")
            return 1
        with VCenterProbe(status["vcenter"]) as probe:
            found = [pg for pg in probe.port_groups(topology.DVS_NAME)
                     if pg.key == details["pg_id"]]
        if not found:
            _say("port group not found in vCenter")
            return 1
        pg = found[0]
        _say(f"vCenter {status['vcenter']['url']}: DVS {topology.DVS_NAME} has port group "
             f"{pg.name!r} key {pg.key} VLAN {pg.vlan}")
        _say(f"  marker: {pg.description}")
        neutron.delete_port(port["id"])
        neutron.delete_network(network["id"])
        _say("port and network deleted")
        return 0 if pg.vlan == vlan else 1
    finally:
        stopped = lab.down()
        _say(f"lab down: stopped {', '.join(stopped)}")


if __name__ == "__main__":
    sys.exit(run(Lab()))
