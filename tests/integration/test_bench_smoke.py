"""The bind benchmark runs end to end and reports what it promises (no timing asserted:
speed targets live in the benchmark itself, not in tests)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "dvs-fabric")


def test_bench_bind_reports_both_drivers_and_targets():
    result = subprocess.run([CLI, "bench", "bind", "--json", "--networks", "2", "--ports", "1"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 3), result.stderr[-2000:]     # 3: a target missed
    data = json.loads(result.stdout)
    for kind in ("vsphere_dvs", "baseline_noop"):
        assert data[kind]["first"]["n"] == 2 and data[kind]["later"]["n"] == 2
        assert data[kind]["first"]["median_ms"] > 0
    assert data["port_group_task"]["n"] == 2
    assert {"later_ports_met", "first_port_met"} <= set(data["targets"])
    assert data["targets_met"] == (result.returncode == 0)
    server = data["server_side_port_group_ensure"]
    assert server["cache_hits"] >= 2, "later ports must be answered from the cache"
