"""Normal operation of the lab logs no traceback.

The demo (``dvs-fabric lab demo``: create a network, bind and boot two VMs, a vMotion,
delete everything) is the lab's normal operation. A Python traceback in any of the
lab's logs afterwards is a fault someone has to read. Neutron 29 logged one for the
segments it deletes with every network (its segments plugin asks the cloud's placement
service about them) until the lab gave it a placement to ask (``lab/placement.py``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DVS_FABRIC = Path(sys.executable).parent / "dvs-fabric"
MAX_EXCERPT_LINES = 80


def _excerpt(lines: list[str], at: int) -> str:
    """Two lines before the traceback, then the traceback down to its exception line."""
    end = at + 1
    while end < len(lines) and end - at < MAX_EXCERPT_LINES and lines[end][:1].isspace():
        end += 1
    return "\n".join(lines[max(0, at - 2):end + 1])


def first_traceback(directory: Path) -> str | None:
    """Where the first traceback in a log under ``directory`` is, with an excerpt."""
    for path in sorted(directory.rglob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines):
            if "Traceback" in line:
                return (f"{path.relative_to(directory)}, line {number + 1}:\n"
                        + _excerpt(lines, number))
    return None


def test_a_demo_logs_no_traceback(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    result = subprocess.run(
        [str(DVS_FABRIC), "--lab-dir", str(lab_dir), "lab", "demo", "--json",
         "--no-dataplane"], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["network"]["vni"] > 0
    api_log = (lab_dir / "logs" / "neutron-api.log").read_text(errors="replace")
    # The demo's network really was deleted through the API (the Neutron work that
    # logged the traceback follows that request).
    assert "DELETE /v2.0/networks/" in api_log
    found = first_traceback(lab_dir)
    assert found is None, f"a traceback in the lab's logs ({lab_dir}):\n{found}"
