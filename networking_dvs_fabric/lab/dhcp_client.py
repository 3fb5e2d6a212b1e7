"""A lab VM's DHCP client: busybox ``udhcpc`` in the VM's namespace, as a guest runs it.

With agent hosts (``lab up --agents``) the VMs get their addresses from Neutron's
dnsmasq on the network node, across the fabric, not from the lab.  ``start`` runs
``udhcpc`` in the namespace (it keeps asking once a second until it has a lease,
then exits); its event script applies the lease (address, default route, MTU) and
writes it to ``<leases dir>/<namespace>.json`` with the time it was bound, which
the demo, the tests and ``bench dhcp`` read.  Clients are children of whoever
starts them (the dataplane agent), so they stop with its process group.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from networking_dvs_fabric.lab import netns
from networking_dvs_fabric.lab.procs import LabError, find_program

DISCOVER_EVERY_S = 1
DISCOVERS = 120              # then the client gives up (the lease file never appears)

# busybox runs it with $1 = deconfig | bound | renew | nak | leasefail and the
# lease in the environment ($ip, $subnet, $router, $mtu, $lease, $serverid).
SCRIPT = """#!/bin/sh
# Written by the networking-dvs-fabric lab: applies a DHCP lease in a VM namespace.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface"
    if [ -n "$mtu" ]; then ip link set "$interface" mtu "$mtu"; fi
    set -- $router
    if [ -n "$1" ]; then ip route replace default via "$1" dev "$interface"; fi
    now=$(date +%s.%N)
    printf '{"address": "%s", "netmask": "%s", "router": "%s", "server": "%s", "lease": "%s", "mtu": "%s", "bound_at": %s}\\n' \\
      "$ip" "$subnet" "$1" "$serverid" "$lease" "$mtu" "$now" > "$LEASE_FILE.tmp"
    mv "$LEASE_FILE.tmp" "$LEASE_FILE"
    ;;
esac
exit 0
"""


def script_path(leases_dir: Path) -> Path:
    path = Path(leases_dir) / "udhcpc.script"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(SCRIPT)
        tmp.chmod(0o755)
        tmp.replace(path)
    return path


def lease_file(leases_dir: Path, ns: str) -> Path:
    return Path(leases_dir) / f"{ns}.json"


def start(ns: str, leases_dir: Path, interface: str = "eth0") -> subprocess.Popen:
    """Ask for a lease on ``interface`` of namespace ``ns`` (returns at once)."""
    busybox = find_program("busybox", "busybox")     # its udhcpc, a guest's client
    leases_dir = Path(leases_dir)
    script = script_path(leases_dir)
    lease_file(leases_dir, ns).unlink(missing_ok=True)
    log = open(leases_dir / f"{ns}.udhcpc.log", "ab")
    try:
        return subprocess.Popen(
            netns.in_ns(ns, "env", f"LEASE_FILE={lease_file(leases_dir, ns)}", busybox,
                        "udhcpc", "-f", "-q", "-n", "-i", interface, "-s", str(script),
                        "-t", str(DISCOVERS), "-T", str(DISCOVER_EVERY_S), "-A", "1"),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()


def lease(leases_dir: Path, ns: str) -> dict[str, Any] | None:
    """The lease the VM in ``ns`` holds, or None."""
    try:
        return json.loads(lease_file(leases_dir, ns).read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_lease(leases_dir: Path, ns: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = lease(leases_dir, ns)
        if held is not None:
            return held
        time.sleep(0.1)
    log = Path(leases_dir) / f"{ns}.udhcpc.log"
    tail = log.read_text(errors="replace")[-600:] if log.exists() else "(no client log)"
    raise LabError(f"VM namespace {ns} got no DHCP lease in {timeout:.0f} s; "
                   f"its client said:\n{tail}")
