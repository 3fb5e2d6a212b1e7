"""The lab's private RabbitMQ node (issue 14's message bus): real AMQP, stopped by pid."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from networking_dvs_fabric.lab.procs import LabError, pid_alive, port_open
from networking_dvs_fabric.lab.rabbitmq import RabbitMQ


# An oslo.messaging RPC server and client (what Neutron and its agents use), in a
# process of its own: oslo.messaging keeps options on the global configuration.
_ROUND_TRIP = """
import sys
import oslo_messaging as messaging
from oslo_config import cfg
cfg.CONF([])
class Echo:
    target = messaging.Target(version="1.0")
    def shout(self, ctxt, text):
        return text.upper()
transport = messaging.get_rpc_transport(cfg.CONF, url=sys.argv[1])
server = messaging.get_rpc_server(transport, messaging.Target(topic="lab-test", server="s1"),
                                  [Echo()], executor="threading")
server.start()
try:
    client = messaging.get_rpc_client(transport, messaging.Target(topic="lab-test"),
                                      timeout=20)
    print(client.call({}, "shout", text="over the bus"))
finally:
    server.stop()
    server.wait()
    transport.cleanup()
"""


def _rpc_round_trip(url: str) -> str:
    done = subprocess.run([sys.executable, "-c", _ROUND_TRIP, url], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_private_node_carries_rpc_and_stops_by_pid(tmp_path: Path) -> None:
    node = RabbitMQ(tmp_path / "rabbitmq").start()
    try:
        pids = node.pids
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
        assert node.transport_url.startswith("rabbit://lab:")
        assert _rpc_round_trip(node.transport_url) == "OVER THE BUS"
        # Its own epmd, on its own port: the shared one (4369) would outlive the lab.
        assert port_open("127.0.0.1", node.epmd_port)
        # Everything in the work directory: data, logs, the Erlang cookie.
        assert (tmp_path / "rabbitmq" / "mnesia").is_dir()
        assert (tmp_path / "rabbitmq" / ".erlang.cookie").is_file()
    finally:
        node.stop()
    assert not any(pid_alive(pid) for pid in pids)
    assert not port_open("127.0.0.1", node.port)
    assert not port_open("127.0.0.1", node.epmd_port)


def test_a_node_known_only_from_its_state_is_stopped_by_pid(tmp_path: Path) -> None:
    """``lab down`` in another process stops the node from the lab's state file."""
    node = RabbitMQ(tmp_path / "rabbitmq").start()
    pids = node.pids
    try:
        restored = RabbitMQ.from_json(node.to_json())
        assert restored.running()
        assert restored.transport_url == node.transport_url
        restored.stop()
        assert not any(pid_alive(pid) for pid in pids)
        assert not port_open("127.0.0.1", node.port)        # the Erlang VM too
    finally:
        node.stop()


def test_a_port_taken_by_another_program_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = RabbitMQ(tmp_path / "rabbitmq", port=port)
        with pytest.raises(LabError, match=f"port {port} on 127.0.0.1 is taken"):
            node.start()
        assert node.pids == []


def test_a_fresh_node_where_one_ran_before_accepts_its_new_password(tmp_path: Path) -> None:
    """``lab up`` again in the same directory: the earlier node's data made user 'lab'
    with another password; a fresh start must not keep it (its login was refused and
    ``lab up`` failed after 90 s)."""
    first = RabbitMQ(tmp_path / "rabbitmq").start()
    first.stop()
    second = RabbitMQ(tmp_path / "rabbitmq")
    assert second.password != first.password
    try:
        second.start(fresh=True)
        assert _rpc_round_trip(second.transport_url) == "OVER THE BUS"
    finally:
        second.stop()
