"""`topa report`: the page and summary it writes, and one error line (exit 2) for each kind of bad input."""

from __future__ import annotations

import json

import pytest

from tests.helpers.lmms_runs import GENERATE, LETTERS, egoschema_docs, write_lmms_run, write_request_log
from topa_plugin import cli

pytest.importorskip("lmms_eval")


@pytest.fixture
def run_dir(tmp_path):
    docs = egoschema_docs(5, seed=4)
    write_lmms_run(tmp_path / "out", {"gen": (GENERATE, docs, [LETTERS[d["answer"]] if i < 2 else "E" for i, d in
                                                              enumerate(docs)])})
    return tmp_path / "out"


def test_report_prints_each_tasks_numbers_and_the_page(run_dir, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert cli.main(["report", str(run_dir), "--out", str(page), "--thumbnails", "0"]) == 0
    out = capsys.readouterr().out
    lmms = json.loads(next(run_dir.rglob("*_results.json")).read_text())["results"]["gen"]["score,none"]
    right = round(lmms * 5)
    assert "gen" in out and f"{lmms:.4f}" in out and f"{right}/5 right" in out
    assert "5 question(s) without a video to show" in out  # the run names videos that are not on disk
    assert out.rstrip().endswith(f"report: {page}") and page.read_text().startswith("<!doctype html>")


def test_json_summary_with_two_runs_and_request_logs(run_dir, tmp_path, capsys):
    docs = egoschema_docs(5, seed=4)
    write_lmms_run(tmp_path / "b", {"gen": (GENERATE, docs, [LETTERS[d["answer"]] for d in docs])})
    picks = [d["answer"] if i < 2 else 4 for i, d in enumerate(docs)]  # what run A answered
    log = write_request_log(tmp_path / "requests.jsonl", "gen", docs, [[0.5 if j == p else 1.0 for j in range(5)] for p in picks])
    assert cli.main(["report", str(run_dir), str(tmp_path / "b"), "--out", str(tmp_path / "r.html"),
                     "--request-log", str(log), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    [task] = summary["tasks"]
    assert task["task"] == "gen" and task["total"] == 5 and task["agrees"]
    assert summary["changes"]["matched"] == 5
    assert summary["changes"]["gained"] == 5 - task["right"] and summary["changes"]["lost"] == 0
    assert summary["missing_videos"] == 5  # the request log's docs name videos that are not on disk


@pytest.mark.parametrize("case, message", [
    ("no results", "{tmp}/empty: no lmms-eval results (*_results.json) in it or its subfolders"),
    ("no samples", "no samples for task 'gen' (20260101_000000_samples_gen.jsonl missing); run lmms-eval with --log_samples"),
    ("missing folder", "--out {tmp}/nowhere/r.html: folder {tmp}/nowhere does not exist"),
    ("out is a folder", "--out {tmp}: is a folder"),
    ("absent run", "{tmp}/absent: no such folder"),
    ("absent log", "--request-log {tmp}/none.jsonl: file not found"),
    ("log b alone", "--request-log-b needs a second run (RUN_DIR_B)"),
    ("bad thumbnails", "argument --thumbnails: must be 0 or more, got -2"),
])
def test_bad_input_is_one_error_line_exit_2(run_dir, tmp_path, capsys, case, message):
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "r.html")
    argv = {
        "no results": [str(tmp_path / "empty"), "--out", out],
        "no samples": [str(run_dir), "--out", out],
        "missing folder": [str(run_dir), "--out", str(tmp_path / "nowhere" / "r.html")],
        "out is a folder": [str(run_dir), "--out", str(tmp_path)],
        "absent run": [str(tmp_path / "absent"), "--out", out],
        "absent log": [str(run_dir), "--out", out, "--request-log", str(tmp_path / "none.jsonl")],
        "log b alone": [str(run_dir), "--out", out, "--request-log-b", str(tmp_path / "x.jsonl")],
        "bad thumbnails": [str(run_dir), "--out", out, "--thumbnails", "-2"],
    }[case]
    if case == "no samples":
        next(run_dir.rglob("*_samples_gen.jsonl")).unlink()
    if case == "bad thumbnails":  # argparse's own check, through the one-line parser
        with pytest.raises(SystemExit) as stopped:
            cli.main(["report", *argv])
        assert stopped.value.code == 2
    else:
        assert cli.main(["report", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("topa report: error: ")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "r.html").exists()
