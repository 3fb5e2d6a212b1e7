"""Stopping what runs in a lab namespace: gone means gone, not only out of the namespace.

A process leaves its namespaces part-way through exiting, before the kernel has closed
its files; ``lab down`` must not return (and its caller must not see the process alive)
in that window.  Here the process holds a large memory-backed file, so closing it takes
long enough to be seen; dnsmasq at the end of the agents' tests showed the same window.
"""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from networking_dvs_fabric.lab import netns
from networking_dvs_fabric.lab.procs import pid_alive

WHY_NOT = netns.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no namespaces here: {WHY_NOT}")

HOLDER = """\
import os, sys, time
fd = os.memfd_create("held")
chunk = b"x" * (1 << 20)
for _ in range(int(sys.argv[1])):
    os.write(fd, chunk)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def namespace():
    name = f"dvsf-killtest-{uuid.uuid4().hex[:8]}"
    netns.add_ns(name)
    yield name
    netns.del_ns(name)


def test_kill_pids_returns_only_when_the_process_is_gone(namespace: str):
    holder = subprocess.Popen([netns.tool("ip"), "netns", "exec", namespace, sys.executable,
                               "-c", HOLDER, "1024"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        netns.kill_pids(namespace)
        # Our child: once exited it is a zombie, which pid_alive counts as gone.
        assert not pid_alive(holder.pid), "kill_pids returned while its process still exits"
        assert holder.wait(timeout=10) != 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
