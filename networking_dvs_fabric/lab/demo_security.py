"""The demo's security group step: one connection a rule opens, one no rule opens.

``vm-a`` is in the demo's group ``demo-web`` (Neutron's egress rules, plus TCP
``OPEN_PORT`` and ICMP from the subnet), ``vm-b`` in the project's default group.
With the dataplane both attempts are real TCP connections from ``vm-b`` to
``vm-a``, through the port group filter vCenter holds (the lab's host switch
enforces what it reads back from vCenter).
"""
from __future__ import annotations

from typing import Any, Callable

from networking_dvs_fabric.lab.client import NeutronClient
from networking_dvs_fabric.lab.vm_traffic import Servers, connects, wait_for

OPEN_PORT, CLOSED_PORT = 8080, 9090
GROUP = "demo-web"


def make_group(neutron: NeutronClient, subnet: str) -> dict[str, Any]:
    group = neutron.create_security_group(GROUP)
    neutron.create_security_group_rule(group["id"], protocol="tcp", port_range_min=OPEN_PORT,
                                       port_range_max=OPEN_PORT, remote_ip_prefix=subnet)
    neutron.create_security_group_rule(group["id"], protocol="icmp", remote_ip_prefix=subnet)
    return group


def delete_group(neutron: NeutronClient, group: dict[str, Any] | None) -> None:
    if group is not None:
        neutron._call("DELETE", f"security-groups/{group['id']}")


def show(say: Callable[[str], None], server_ns: str, server_ip: str, client_ns: str,
         group: dict[str, Any], plane: bool) -> dict[str, bool]:
    """Connect vm-b -> vm-a on the opened port and on another; the summary's entry."""
    result = {"allowed_connect": False, "refused_connect": False}
    say(f"vm-a is in security group {GROUP} ({group['id']}): TCP {OPEN_PORT} and ICMP from "
        "the subnet, nothing else in; vm-b in the default group")
    if not plane:
        say("(no dataplane: no connection tried)")
        return result
    servers = Servers()
    try:
        servers.start(server_ns, OPEN_PORT, CLOSED_PORT)
        # The filter reaches the host switch within a second or two of the port group.
        try:
            wait_for(lambda: connects(client_ns, server_ip, OPEN_PORT), 30,
                     f"vm-b reaching vm-a on TCP {OPEN_PORT}", step=0.5)
            result["allowed_connect"] = True
        except AssertionError:
            pass
        result["refused_connect"] = not connects(client_ns, server_ip, CLOSED_PORT, 2.0)
    finally:
        servers.stop()
    say(f"vm-b -> vm-a TCP {OPEN_PORT} (opened by a rule): "
        f"{'connected' if result['allowed_connect'] else 'NOT connected'}")
    say(f"vm-b -> vm-a TCP {CLOSED_PORT} (no rule opens it): "
        f"{'refused by the DVS filter' if result['refused_connect'] else 'CONNECTED'}")
    return result
