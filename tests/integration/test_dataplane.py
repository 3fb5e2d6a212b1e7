"""Real frames through the lab: VM -> VLAN -> leaf -> VXLAN -> leaf -> VLAN -> VM.

The whole demo (``dvs-fabric lab demo --json``) on a lab with a dataplane and Neutron's
agents, in both resolution modes: two VMs booted as Nova does on hosts behind
different leaves lease their addresses by DHCP from the network node, ping
each other through ``ovs-vtep`` software VTEPs that obey the leaves' hardware_vtep
databases (which only the project programs), then one VM moves by vMotion to a host
behind a third leaf, announced as vCenter does, while the other pings it every 100 ms.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from networking_dvs_fabric.lab import netns

DVS_FABRIC = Path(sys.executable).parent / "dvs-fabric"
WHY_NOT = netns.unavailable()

pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no dataplane here: {WHY_NOT}")


@pytest.mark.parametrize("mode", ["pre_provision", "on_demand"])
def test_ping_across_leaves_and_through_a_vmotion(mode: str, tmp_path: Path) -> None:
    before = set(netns.list_ns())
    result = subprocess.run(
        [str(DVS_FABRIC), "--lab-dir", str(tmp_path / "lab"), "lab", "demo", "--json",
         "--mode", mode, "--dataplane"],
        capture_output=True, text=True, timeout=900, check=False)
    print(result.stdout[-4000:])
    print(result.stderr[-4000:], file=sys.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["dataplane"] is True
    assert summary["network"]["vni"] > 0 and 100 <= summary["network"]["vlan"] <= 3999
    # Across two leaves, every ping answered.
    assert summary["ping"]["sent"] >= 10
    assert summary["ping"]["received"] == summary["ping"]["sent"]
    # Neutron's own agents (the lab runs them where the dataplane runs): vm-a leased
    # its port's address from dnsmasq on net-1; vm-a pinged a KVM VM on kvm-1 (the
    # same security group on both sides); vm-b pinged vm-c through a router on net-1.
    assert summary["dhcp"]["address"].startswith("10.10.0.")
    assert 0 < summary["dhcp"]["lease_s"] < 60
    for key in ("kvm_ping", "router_ping"):
        assert summary[key]["sent"] >= 10, key
        assert summary[key]["received"] == summary[key]["sent"], key
    assert summary["router_ping"]["gateway_received"] > 0
    # vm-a's security group opens TCP 8080, not 9090: real connections from vm-b.
    assert summary["security_groups"] == {"allowed_connect": True, "refused_connect": True}
    move = summary["vmotion"]
    assert move["mode"] == mode and move["interval_ms"] == 100
    assert move["from_leaf"] != move["to_leaf"]
    # Pings ran through the whole move (start event, copy, switchover, settling).
    assert move["sent"] >= 40, move
    assert move["sent"] - move["received"] <= 2, move
    # The lab took its namespaces with it.
    assert set(netns.list_ns()) <= before
