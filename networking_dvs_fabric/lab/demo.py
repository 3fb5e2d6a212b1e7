"""The demo behind ``make demo``: lab up, a network on a cluster, what vCenter and the leaves show.

It shows what the project does end to end at this stage: a Neutron VXLAN network
with a port bound to a vCenter cluster becomes a dynamic VLAN segment, a port group
with that VLAN on the DVS (what Nova reads from ``vif_details``), and, on every leaf
port facing the cluster's ESXi hosts, a VLAN binding to a logical switch whose
tunnel key is the network's VNI.  Then everything is deleted and shown gone.
"""
from __future__ import annotations

import sys
import time

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.probe import VCenterProbe

CONVERGE_TIMEOUT = 30.0


def _say(text: str) -> None:
    print(text, flush=True)


def _leaf_view(lab: Lab, switch: str) -> dict[tuple[str, str], str]:
    """(leaf, port) -> 'VLAN' for every binding to ``switch``, read with vtep-ctl."""
    found = {}
    for leaf_name in topology.LEAF_NAMES:
        leaf = lab.leaf(leaf_name)
        for port in leaf.ports:
            for line in leaf.vtep_ctl("list-bindings", leaf_name, port).splitlines():
                vlan, _, name = line.strip().partition(" ")
                if name.strip() == switch:
                    found[(leaf_name, port)] = str(int(vlan))
    return found


def _wait(check, timeout: float = CONVERGE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def run(lab: Lab) -> int:
    status = lab.up()
    try:
        _say(f"\nlab is up; Neutron at {status['neutron']['url']} "
             "(drivers fabric_hwvtep,vsphere_dvs)")
        neutron = NeutronClient(status["neutron"]["url"])
        cluster = topology.CLUSTERS[0]
        host = topology.compute_host(cluster)
        network = neutron.create_network("demo-net")
        vni = network["provider:segmentation_id"]
        _say(f"network {network['name']} ({network['id']}): "
             f"{network['provider:network_type']} VNI {vni}")
        started = time.monotonic()
        port = neutron.create_port(network["id"], host=host, name="demo-vm-nic")
        details = port["binding:vif_details"]
        _say(f"port {port['id']} bound to {host} (cluster {cluster}): "
             f"vif_type={port['binding:vif_type']} status={port['status']} "
             f"levels={details.get('bound_drivers')}")
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
        _say(f"vCenter: DVS {topology.DVS_NAME} has port group {pg.name!r} key {pg.key} "
             f"VLAN {pg.vlan} (a dynamic segment)")
        _say(f"  marker: {pg.description}")
        switch = f"dvsf-{network['id']}"
        wanted = {(a.leaf, a.port) for a in topology.attachments()
                  if a.esxi_host.startswith(cluster + "_")}
        bound = _wait(lambda: (lambda v: v if set(v) == wanted else None)(
            _leaf_view(lab, switch)))
        if not bound:
            _say(f"leaves not programmed within {CONVERGE_TIMEOUT:.0f} s; see "
                 f"{lab.dir / 'logs' / 'neutron-periodic-workers.log'}")
            return 1
        _say(f"leaves (after {time.monotonic() - started:.2f} s): logical switch {switch}, "
             f"tunnel_key {lab.leaf('leaf1').vtep_ctl('get', 'Logical_Switch', switch, 'tunnel_key').strip()}")
        for (leaf, leaf_port), vlan in sorted(bound.items()):
            esxi = next(a.esxi_host for a in topology.attachments()
                        if (a.leaf, a.port) == (leaf, leaf_port))
            _say(f"  {leaf} {leaf_port} (ESXi {esxi}): VLAN {vlan} -> VNI {vni}")
        ok = all(vlan == str(pg.vlan) for vlan in bound.values())
        neutron.delete_port(port["id"])
        neutron.delete_network(network["id"])
        gone = _wait(lambda: not _leaf_view(lab, switch))
        with VCenterProbe(status["vcenter"]) as probe:
            pg_gone = _wait(lambda: not [p for p in probe.port_groups(topology.DVS_NAME)
                                         if p.key == pg.key])
        _say(f"port and network deleted: leaves {'clean' if gone else 'NOT clean'}, "
             f"port group {'gone' if pg_gone else 'STILL THERE'}")
        return 0 if ok and gone and pg_gone else 1
    finally:
        stopped = lab.down()
        _say(f"lab down: stopped {', '.join(stopped)}")


if __name__ == "__main__":
    sys.exit(run(Lab()))
