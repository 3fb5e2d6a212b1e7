"""A minimal Neutron API client for the demo and the benchmark (noauth lab only).

Plain HTTP with ``Connection: close`` (uWSGI resets kept-alive connections),
so timings measure Neutron, not a client library.  Tests use openstacksdk.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class NeutronError(Exception):
    pass


class NeutronClient:
    def __init__(self, url: str, project_id: str = "dvs-fabric-lab", timeout: float = 120):
        self.url = url.rstrip("/")
        self.project_id = project_id
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/v2.0/{path}", data=data, method=method,
            headers={"Content-Type": "application/json", "Connection": "close",
                     "X-Project-Id": self.project_id})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise NeutronError(f"{method} {path}: HTTP {exc.code}: "
                               f"{exc.read().decode(errors='replace')}") from exc
        return json.loads(raw) if raw else None

    def create_network(self, name: str, provider: dict[str, Any] | None = None) -> dict:
        body = {"name": name, "project_id": self.project_id, **(provider or {})}
        return self._call("POST", "networks", {"network": body})["network"]

    def delete_network(self, network_id: str) -> None:
        self._call("DELETE", f"networks/{network_id}")

    def create_port(self, network_id: str, host: str, name: str = "", **extra: Any) -> dict:
        body = {"network_id": network_id, "name": name, "project_id": self.project_id,
                "binding:host_id": host, "device_owner": "compute:nova",
                "device_id": "lab-vm", **extra}
        return self._call("POST", "ports", {"port": body})["port"]

    def update_port(self, port_id: str, **changes: Any) -> dict:
        return self._call("PUT", f"ports/{port_id}", {"port": changes})["port"]

    # -- security groups (issue 13) ---------------------------------------------------
    def create_security_group(self, name: str) -> dict:
        body = {"name": name, "project_id": self.project_id}
        return self._call("POST", "security-groups", {"security_group": body})[
            "security_group"]

    def security_groups(self, name: str | None = None) -> list[dict]:
        query = f"?name={name}&project_id={self.project_id}" if name else ""
        return self._call("GET", f"security-groups{query}")["security_groups"]

    def create_security_group_rule(self, group_id: str, direction: str = "ingress",
                                   **fields: Any) -> dict:
        body = {"security_group_id": group_id, "direction": direction,
                "ethertype": "IPv4", "project_id": self.project_id, **fields}
        return self._call("POST", "security-group-rules", {"security_group_rule": body})[
            "security_group_rule"]

    def delete_security_group_rule(self, rule_id: str) -> None:
        self._call("DELETE", f"security-group-rules/{rule_id}")

    def list_ports(self, network_id: str) -> list[dict]:
        return self._call("GET", f"ports?network_id={network_id}")["ports"]

    def port_ids(self, **filters: str) -> list[str]:
        """Ids of the ports matching Neutron's list filters (e.g. ``status="DOWN"``)."""
        query = urllib.parse.urlencode({**filters, "fields": "id"})
        return [port["id"] for port in self._call("GET", f"ports?{query}")["ports"]]

    def router_ports(self, router_id: str) -> list[dict]:
        return self._call("GET", f"ports?device_id={router_id}")["ports"]

    def create_router(self, name: str) -> dict:
        body = {"name": name, "project_id": self.project_id}
        return self._call("POST", "routers", {"router": body})["router"]

    def remove_router_interface(self, router_id: str, subnet_id: str) -> dict:
        return self._call("PUT", f"routers/{router_id}/remove_router_interface",
                          {"subnet_id": subnet_id})

    def delete_router(self, router_id: str) -> None:
        self._call("DELETE", f"routers/{router_id}")

    def add_router_interface(self, router_id: str, subnet_id: str) -> dict:
        return self._call("PUT", f"routers/{router_id}/add_router_interface",
                          {"subnet_id": subnet_id})

    def delete_port(self, port_id: str) -> None:
        self._call("DELETE", f"ports/{port_id}")

    def get_port(self, port_id: str) -> dict:
        return self._call("GET", f"ports/{port_id}")["port"]

    def create_subnet(self, network_id: str, cidr: str, name: str = "",
                      gateway: bool = False) -> dict:
        """An IPv4 subnet; without a gateway unless ``gateway`` (then Neutron's default,
        the first address, which a router interface takes)."""
        body = {"network_id": network_id, "cidr": cidr, "ip_version": 4, "name": name,
                "project_id": self.project_id}
        if not gateway:
            body["gateway_ip"] = None
        return self._call("POST", "subnets", {"subnet": body})["subnet"]

    def get_subnet(self, subnet_id: str) -> dict:
        return self._call("GET", f"subnets/{subnet_id}")["subnet"]
