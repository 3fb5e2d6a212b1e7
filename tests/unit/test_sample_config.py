"""The committed sample config is what oslo-config-generator makes of opts.py today."""
from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

from networking_dvs_fabric import opts

REPO = Path(__file__).resolve().parents[2]
GENERATOR_CONF = REPO / "etc" / "oslo-config-generator" / "networking-dvs-fabric.conf"
SAMPLE = REPO / "etc" / "ml2_conf_vsphere.ini.sample"
GENERATOR = Path(sys.executable).parent / "oslo-config-generator"
REGENERATE = ("regenerate it from the repository root with: "
              ".venv/bin/oslo-config-generator --config-file "
              "etc/oslo-config-generator/networking-dvs-fabric.conf")


def test_sample_config_is_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "ml2_conf_vsphere.ini.sample"
    result = subprocess.run(
        [str(GENERATOR), "--config-file", str(GENERATOR_CONF), "--output-file", str(fresh)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"oslo-config-generator failed (exit {result.returncode}):\n{result.stderr}")
    assert SAMPLE.is_file(), f"{SAMPLE.relative_to(REPO)} is missing; {REGENERATE}"
    expected = fresh.read_text()
    committed = SAMPLE.read_text()
    if committed != expected:
        diff = "".join(difflib.unified_diff(
            committed.splitlines(keepends=True), expected.splitlines(keepends=True),
            fromfile=f"{SAMPLE.relative_to(REPO)} (committed)", tofile="generated now"))
        raise AssertionError(
            f"{SAMPLE.relative_to(REPO)} is out of date with networking_dvs_fabric/opts.py; "
            f"{REGENERATE}\n{diff}")


def test_generator_config_names_our_namespace() -> None:
    text = GENERATOR_CONF.read_text()
    assert "namespace = networking_dvs_fabric" in text
    assert "output_file = etc/ml2_conf_vsphere.ini.sample" in text


def test_every_option_has_help() -> None:
    groups = opts.list_opts()
    assert [group for group, _ in groups] == [opts.VSPHERE_GROUP, opts.FABRIC_GROUP]
    for group, options in groups:
        assert options, f"[{group}] has no options"
        for opt in options:
            assert opt.help and opt.help.strip(), f"[{group}] {opt.name} has no help text"


def test_password_is_secret_and_only_secrets_are() -> None:
    by_name = {opt.name: opt for _, options in opts.list_opts() for opt in options}
    assert by_name["password"].secret, "[ml2_vsphere] password must be secret=True"
    assert [name for name, opt in by_name.items() if opt.secret] == ["password"]
