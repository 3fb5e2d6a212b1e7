"""The lab on a real message bus (issue 14): a private RabbitMQ node, Neutron's RPC server.

An agent's state report - sent by the same client class Neutron's agents use, in a
process of its own - goes over RabbitMQ to ``neutron-rpc-server`` and shows in
``GET /v2.0/agents``; after the node is restarted the RPC server has reconnected and
a new report gets through.  ``lab down`` stops the node and its epmd by pid.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from networking_dvs_fabric.lab.lab import Lab
from networking_dvs_fabric.lab.neutron import rpc_consumers
from networking_dvs_fabric.lab.procs import pid_alive, port_open, wait_until
from networking_dvs_fabric.lab.rabbitmq import RabbitMQ

# What neutron-openvswitch-agent does at start: one report_state call.
_REPORT = r"""
import json, sys, tempfile
from oslo_config import cfg
from neutron_lib import context, rpc as n_rpc
from neutron_lib.agent import topics
from neutron.agent import rpc as agent_rpc
from neutron.conf.agent import common as agent_conf
agent_conf.register_agent_state_opts_helper(cfg.CONF)
with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
    # Agents get control_exchange from neutron.common.config: Neutron's exchange.
    conf.write(f"[DEFAULT]\ntransport_url = {sys.argv[1]}\ncontrol_exchange = neutron\n")
cfg.CONF(["--config-file", conf.name], project="neutron")
n_rpc.init(cfg.CONF)
state = {"binary": "neutron-openvswitch-agent", "host": sys.argv[2], "topic": "N/A",
         "agent_type": "Open vSwitch agent", "start_flag": True,
         "configurations": json.loads(sys.argv[3])}
agent_rpc.PluginReportStateAPI(topics.REPORTS).report_state(
    context.get_admin_context_without_session(), state, use_call=True)
n_rpc.cleanup()
"""


def _report(transport_url: str, host: str, configurations: dict) -> None:
    done = subprocess.run([sys.executable, "-c", _REPORT, transport_url, host,
                           json.dumps(configurations)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _agents(url: str, host: str) -> list[dict]:
    answer = requests.get(f"{url}/v2.0/agents", params={"host": host}, timeout=10)
    answer.raise_for_status()
    return answer.json()["agents"]


def _bus(lab: Lab) -> tuple[list[int], list[int]]:
    """The node's pids (start script, epmd) and ports (AMQP, distribution, epmd)."""
    node = RabbitMQ.from_json(lab.state()["services"]["rabbitmq"])
    return node.pids, [node.port, node.dist_port, node.epmd_port]


def _gone(bus: tuple[list[int], list[int]]) -> bool:
    """No pid alive and nothing listening on the ports (the Erlang VM included)."""
    pids, ports = bus
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(pid_alive(pid) for pid in pids) or
                                           any(port_open("127.0.0.1", p) for p in ports)):
        time.sleep(0.2)
    return not any(pid_alive(pid) for pid in pids) and \
        not any(port_open("127.0.0.1", p) for p in ports)


@pytest.fixture
def lab(tmp_path: Path):
    lab = Lab(tmp_path / "lab")
    lab.up(db="mariadb", bus="rabbitmq")
    try:
        yield lab
    finally:
        bus = _bus(lab)             # the node's now: a restart gives new pids
        lab.down()
    assert _gone(bus)


def test_an_agent_report_over_rabbitmq_reaches_neutron_and_survives_a_restart(
        lab: Lab) -> None:
    status = lab.status()
    url, bus = status["neutron"]["url"], status["message_bus"]
    assert bus["kind"] == "rabbitmq"
    transport = bus["transport_url"]
    _report(transport, "net-1", {"bridge_mappings": {"physnet-kvm": "br-provider"}})
    agents = _agents(url, "net-1")
    assert [(a["agent_type"], a["alive"]) for a in agents] == [("Open vSwitch agent", True)]
    assert agents[0]["configurations"]["bridge_mappings"] == {"physnet-kvm": "br-provider"}

    # The node restarted on its ports and data: Neutron's RPC server consumes again.
    lab.restart_rabbitmq()
    wait_until(lambda: rpc_consumers(transport) > 0, 120, "neutron-rpc-server back on the bus",
               interval=1.0)
    _report(transport, "net-1", {"bridge_mappings": {"physnet-kvm": "br-ex"}})
    agents = _agents(url, "net-1")
    assert agents[0]["configurations"]["bridge_mappings"] == {"physnet-kvm": "br-ex"}


def test_lab_down_stops_the_node_and_its_epmd_by_pid(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab")
    lab.up(bus="rabbitmq")
    try:
        bus = _bus(lab)
        assert len(bus[0]) == 2 and all(pid_alive(pid) for pid in bus[0])
        assert all(port_open("127.0.0.1", p) for p in bus[1])
    finally:
        stopped = lab.down()
    assert "rabbitmq" in stopped
    assert _gone(bus)
