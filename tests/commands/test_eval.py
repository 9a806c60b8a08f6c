"""`topa eval`: argument pass-through and what counts as a results file (the runs themselves are
in integration_tests/test_lmms_tasks.py)."""

from __future__ import annotations

import os
import time

import pytest

from topa_plugin import cli
from topa_plugin.commands.eval import new_results, output_path


def test_output_path_is_required(capsys):
    assert cli.main(["eval", "--model", "topa", "--tasks", "mvbench"]) == 2
    assert "topa eval: error: --output_path DIR is required" in capsys.readouterr().err


def test_output_path_is_read_in_both_spellings(tmp_path):
    assert output_path(["--tasks", "x", "--output_path", str(tmp_path)]) == tmp_path
    assert output_path([f"--output_path={tmp_path}", "--tasks", "x"]) == tmp_path
    assert output_path(["--tasks", "x"]) is None


def test_only_new_lmms_eval_results_files_count(tmp_path):
    old = tmp_path / "model" / "20260101_000000_results.json"
    old.parent.mkdir()
    old.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    started = time.time() - 1
    submission = tmp_path / "submissions" / "vatex_captions_val_results.json"  # a task's own file
    submission.parent.mkdir()
    submission.write_text("{}")
    assert new_results(tmp_path, started) == []
    fresh = tmp_path / "model" / "20261203_101010_results.json"
    fresh.write_text("{}")
    assert new_results(tmp_path, started) == [fresh]
    assert new_results(tmp_path / "absent", started) == []


def test_other_commands_still_reject_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["lmms-tasks", "--model", "topa"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --model topa" in capsys.readouterr().err
