"""What a KVM guest's missing DHCP lease looked like, for a failure message.

CI keeps a failed lab's logs on its own machine only: a flaky lease failure must say
in its message where the chain broke.  Each link of it, read from the real parts:
the port as Neutron's API shows it, its ML2 binding levels (the database), the tag
the OVS agent gave its tap, the leaves' VLAN bindings on the host's and the network
node's ports, the DHCP agent's host file, and the agents' log lines naming the port.
Every read is best effort: the message names what could not be read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import sqlalchemy

from networking_dvs_fabric.lab import topology
from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.mariadb import MariaDB

LEVELS_SQL = sqlalchemy.text(
    "SELECT l.host, l.level, l.driver, s.network_type, s.physical_network, "
    "s.segmentation_id FROM ml2_port_binding_levels l LEFT JOIN networksegments s "
    "ON s.id = l.segment_id WHERE l.port_id = :port ORDER BY l.host, l.level")


def _try(what: str, read: Callable[[], Any]) -> str:
    try:
        return f"{what}: {read()}"
    except Exception as exc:  # noqa: BLE001 - a diagnosis never hides the failure
        return f"{what}: not read ({type(exc).__name__}: {exc})"


def _levels(lab: Lab, port_id: str) -> list[tuple]:
    data = (lab.state() or {})["services"]["mariadb"]
    engine = sqlalchemy.create_engine(MariaDB.from_json(data).url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(LEVELS_SQL, {"port": port_id})]
    finally:
        engine.dispose()


def _log_lines(path: Path, needle: str, last: int = 8) -> list[str]:
    lines = [line.strip()[:300] for line in path.read_text(errors="replace").splitlines()
             if needle in line]
    return lines[-last:]


def why_no_lease(lab: Lab, neutron: Any, port: dict[str, Any]) -> str:
    """Every link between a KVM port and its lease, as it is now (one line each)."""
    port_id, mac, net = port["id"], port["mac_address"], port["network_id"]
    kvm = lab.agent_host(topology.KVM_HOST)
    node = lab.agent_host(topology.NETWORK_NODE)
    lines = [
        _try("port (API)", lambda: {k: neutron.get_port(port_id).get(k) for k in (
            "status", "binding:host_id", "binding:vif_type", "binding:vif_details")}),
        _try("binding levels (host, level, driver, type, physnet, id)",
             lambda: _levels(lab, port_id)),
        _try(f"tag of {kvm.vm_tap(port_id)} on {kvm.name}",
             lambda: kvm.vsctl("get", "Port", kvm.vm_tap(port_id), "tag").strip()),
    ]
    for leaf, leaf_port in (*topology.KVM_PORTS, *topology.NETWORK_NODE_PORTS):
        lines.append(_try(f"{leaf} {leaf_port} VLAN bindings",
                          lambda leaf=leaf, p=leaf_port: lab.leaf(leaf).bindings(p)))
    host_files = list(node.dir.glob(f"**/dhcp/{net}/host"))
    lines.append(_try(f"{mac} in the DHCP host file of {node.name}", lambda: [
        mac in path.read_text() for path in host_files] or "no host file"))
    for host, agent in ((kvm, "ovs"), (node, "dhcp")):
        lines.append(_try(f"{host.name} {agent} agent lines naming the port",
                          lambda host=host, agent=agent: "\n  " + "\n  ".join(
                              _log_lines(host.agent_log(agent), port_id))))
    return "\n".join(lines)



SKIPPED = "not defined on plugin or binding failed"
WIRED = "Configuration for devices up"


def agent_missed_the_binding(lab: Lab, neutron: Any, port: dict[str, Any]) -> bool:
    """Is kvm-1's OVS agent still skipping a port that Neutron has bound to it?

    Neutron's OVS agent reads ports from a cache that only the server's pushes update
    (``neutron/agent/resource_cache.py``); a revived agent syncs its devices, not that
    cache.  When the push of a port bound while the bus came back is lost (published
    before the agent had declared its queues again), the cache keeps the port unbound
    and the agent skips the device on every loop ("Device ... not defined on plugin or
    binding failed") until the port changes again or the agent restarts.  True only
    when Neutron shows the port bound to kvm-1 by openvswitch at the last level and the
    agent's last word on it is that skip, never a wiring after it."""
    now = neutron.get_port(port["id"])
    drivers = (now.get("binding:vif_details") or {}).get("bound_drivers") or {}
    if now.get("binding:host_id") != topology.KVM_HOST or \
            now.get("binding:vif_type") != "ovs" or \
            drivers.get(str(len(drivers) - 1)) != "openvswitch":
        return False
    lines = _log_lines(lab.agent_host(topology.KVM_HOST).agent_log("ovs"), port["id"],
                       last=10**6)
    skipped = [i for i, line in enumerate(lines) if SKIPPED in line]
    wired = [i for i, line in enumerate(lines) if WIRED in line]
    return bool(skipped) and (not wired or wired[-1] < skipped[-1])
