"""Argument-level tests of ``dvs-fabric`` that need no running lab."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from networking_dvs_fabric.cmd.main import main

DVS_FABRIC = Path(sys.executable).parent / "dvs-fabric"


def test_status_json_without_a_lab_exits_2_and_says_how_to_start_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--lab-dir", str(tmp_path), "lab", "status", "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == "", "nothing may reach stdout, where scripts expect JSON"
    assert "no lab is running" in err
    assert "dvs-fabric lab up" in err
    assert not (tmp_path / "state.json").exists()


def test_status_text_without_a_lab_exits_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--lab-dir", str(tmp_path), "lab", "status"])
    assert code == 2
    assert "dvs-fabric lab up" in capsys.readouterr().err


def test_status_json_from_the_installed_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(DVS_FABRIC), "--lab-dir", str(tmp_path), "lab", "status", "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "dvs-fabric lab up" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_rejects_an_unknown_mode_naming_the_choices(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--lab-dir", str(tmp_path), "lab", "up", "--mode", "bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--mode" in err and "bogus" in err
    assert "pre_provision" in err and "on_demand" in err
    assert not any(tmp_path.iterdir()), "a rejected 'lab up' must not start anything"


def test_up_rejects_an_empty_driver_list_naming_the_option(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--lab-dir", str(tmp_path), "lab", "up", "--ml2-mechanism-drivers", " , "])
    assert code == 2
    err = capsys.readouterr().err
    assert "--ml2-mechanism-drivers" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a rejected 'lab up' must not start anything"


@pytest.mark.parametrize("argv", [["bench", "fabric", "--networks", "0"],
                                  ["bench", "vmotion", "--moves", "-3"]])
def test_bench_rejects_counts_below_one(argv: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--lab-dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_up_rejects_an_unknown_database(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--lab-dir", str(tmp_path), "lab", "up", "--db", "postgres"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sqlite" in err and "mariadb" in err


@pytest.mark.parametrize("argv", [[], ["lab"], ["bench"]])
def test_a_missing_subcommand_is_a_usage_error(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_down_with_nothing_running_says_so_and_succeeds_twice(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        code = main(["--lab-dir", str(tmp_path), "lab", "down"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "nothing was running" in out
    assert not (tmp_path / "state.json").exists()


def test_down_does_not_create_the_lab_dir(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    lab_dir = tmp_path / "never-used"
    assert main(["--lab-dir", str(lab_dir), "lab", "down"]) == 0
    assert "nothing was running" in capsys.readouterr().out
    assert not lab_dir.exists()


def test_unreadable_state_is_a_clear_error_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state.json").write_text("{not json")
    code = main(["--lab-dir", str(tmp_path), "lab", "status", "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert "state.json" in err
    assert "Traceback" not in err


def test_lab_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DVS_FABRIC_LAB_DIR", str(tmp_path))
    assert main(["lab", "status", "--json"]) == 2
    assert str(tmp_path / "state.json") in capsys.readouterr().err



def test_required_dataplane_where_namespaces_do_not_work_is_refused_saying_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: this machine has working namespaces, so a machine without them is
    # simulated by making the availability probe answer as it would there.
    from networking_dvs_fabric.lab import netns
    monkeypatch.setattr(netns, "unavailable",
                        lambda: "network namespaces need root (the lab runs as an "
                                "ordinary user)")
    code = main(["--lab-dir", str(tmp_path), "lab", "up", "--dataplane"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--dataplane" in err and "need root" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir()), "a refused 'lab up' must not start anything"
