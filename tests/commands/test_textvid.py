"""`topa textvid validate|stats`: exit codes and output, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from topa_plugin.cli import main
from topa_plugin.textvid import compute_stats, read_textvid, sample_path


def topa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topa_plugin.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def record(idx: str, n_frames: int = 2, answer: str = "B") -> dict:
    return {
        "idx": idx,
        "frames": [{"frame_caption": f"Frame {i} shows a dog running.", "object_1": "A dog."} for i in range(n_frames)],
        "global_video_caption": "A dog runs across a field.",
        "QAs": [{"question": "What did the dog do?", "options": ["Ran", "Sat", "Slept", "Barked", "Ate"],
                 "answer": answer, "answer_open_ended": "It ran across the field."}],
    }


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_validate_bundled_sample_exits_zero_with_summary():
    result = topa("textvid", "validate", str(sample_path()))
    assert result.returncode == 0, result.stderr
    stats = compute_stats(read_textvid(sample_path()))
    summary = (f"OK: {sample_path()}: {stats['records']} records, {stats['frames']} frames, "
               f"{stats['captions']} captions, {stats['qas']} QAs")
    assert result.stdout.strip().splitlines() == [summary]


def test_validate_bad_file_exits_nonzero_and_prints_every_problem(tmp_path):
    bad = record("dup", answer="F")
    bad["QAs"][0]["options"].pop()
    path = write_jsonl(tmp_path / "bad.jsonl", [record("dup"), bad, record("empty", n_frames=0)])
    result = topa("textvid", "validate", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}: line 2, record 1 (id 'dup'): QAs[0].options: expected 5 options, got 4",
        f"{path}: line 2, record 1 (id 'dup'): QAs[0].answer: expected one of A, B, C, D, E, got 'F'",
        f"{path}: line 2, record 1 (id 'dup'): idx: duplicate id, first used by record 0",
        f"{path}: line 3, record 2 (id 'empty'): frames: no frames (empty list)",
    ]
    assert result.stderr.strip() == f"topa textvid validate: error: {path}: 4 problems"


def test_validate_reports_invalid_json_with_line(tmp_path, capsys):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(record("a")) + "\n{not json}\n", encoding="utf-8")
    assert main(["textvid", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: line 2, record 1: invalid JSON: ")


def test_missing_file_exits_two(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["textvid", "validate", str(missing)]) == 2
    assert main(["textvid", "stats", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count(f"error: {missing}: No such file or directory") == 2


def test_stats_json_output(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps([record("a", 2), record("b", 5), record("c", 11)]), encoding="utf-8")
    result = topa("textvid", "stats", str(path), "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["file"] == str(path)
    assert (stats["records"], stats["frames"], stats["captions"], stats["qas"], stats["qas_with_open_answer"]) == (
        3, 18, 36, 3, 3)
    assert stats["distributions"]["frames_per_record"] == {"min": 2, "mean": 6, "median": 5, "max": 11}
    assert stats["distributions"]["words_per_caption"]["max"] == 6  # "Frame 10 shows a dog running."


def test_stats_table_output(tmp_path, capsys):
    path = write_jsonl(tmp_path / "small.jsonl", [record("a", 3), record("b", 4)])
    assert main(["textvid", "stats", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"file: {path}"
    assert lines[1].split() == ["records", "2"]
    assert lines[2].split() == ["frames", "7"]
    assert lines[5].split() == ["QAs", "with", "open", "answers", "2"]
    assert lines[6].split() == ["min", "mean", "median", "max"]
    assert lines[7].split() == ["frames", "per", "record", "3", "3.50", "3.50", "4"]


def test_stats_on_invalid_file_prints_problems_and_fails(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [record("a", answer="e")])
    assert main(["textvid", "stats", str(path)]) == 1
    assert "QAs[0].answer: expected one of A, B, C, D, E, got 'e'" in capsys.readouterr().out


def test_textvid_requires_an_action(capsys):
    with pytest.raises(SystemExit) as info:
        main(["textvid"])
    assert info.value.code == 2
    assert "ACTION" in capsys.readouterr().err


# ---------------------------------------------------------------- report, dedup, balance

def _planted(tmp_path):
    from tests.helpers.textvid_synth import near_copy, unique_record

    records = [unique_record(i) for i in range(30)]
    records.insert(12, near_copy(records[4], "copy_4", changed=2))
    return write_jsonl(tmp_path / "planted.jsonl", records)


def test_report_json_has_the_fields_scripts_gate_on(tmp_path):
    result = topa("textvid", "report", str(_planted(tmp_path)), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["records"], report["qas"]) == (31, 31)
    assert report["answer_letters"] == {"A": 0, "B": 0, "C": 31, "D": 0, "E": 0}
    assert set(report["shortcuts"]) == {"longest_option", "question_overlap", "caption_overlap"}
    assert all({"rate", "chance", "low", "high"} <= set(s) for s in report["shortcuts"].values())
    assert report["near_duplicates"]["threshold"] == 0.8
    assert report["near_duplicates"]["clusters"] == [["tideo_00004", "copy_4"]]


def test_report_two_files_side_by_side_and_page(tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["textvid", "report", str(sample_path()), str(_planted(tmp_path)), "--out", str(page)]) == 0
    out = capsys.readouterr().out
    assert out.count("longest_option") == 2 and f"report: {page}" in out
    html = page.read_text(encoding="utf-8")
    assert "textvid_sample.jsonl" in html and "planted.jsonl" in html and "copy_4" in html
    assert main(["textvid", "report", str(sample_path()), str(tmp_path / "planted.jsonl"), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert [r["records"] for r in both["files"]] == [60, 31]


@pytest.mark.parametrize("argv, message", [
    (["report", "{sample}", "{tmp}/missing.jsonl"], "error: FILE_B {tmp}/missing.jsonl: no such file"),
    (["report", "{sample}", "--threshold", "0"], "threshold 0 is outside (0, 1]"),
    (["report", "{sample}", "--threshold", "1.5"], "threshold 1.5 is outside (0, 1]"),
    (["dedup", "{sample}", "--out", "{tmp}/o.jsonl", "--threshold", "-1"], "threshold -1 is outside (0, 1]"),
    (["report", "{sample}", "--threshold", "high"], "expected a number, got 'high'"),
    (["dedup", "{sample}", "--out", "{tmp}/o.txt"], "expected a .jsonl or .json file"),
    (["balance", "{sample}", "--out", "{sample}"], "is the input file"),
    (["report", "{sample}", "--out", "{tmp}/no/such/report.html"], "does not exist"),
])
def test_bad_input_is_one_error_line_exit_two(tmp_path, capsys, argv, message):
    argv = [a.format(sample=sample_path(), tmp=tmp_path) for a in argv]
    try:
        status = main(["textvid", *argv])
    except SystemExit as flag_error:  # argparse rejects a bad flag value before the handler runs
        status = flag_error.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"topa textvid {argv[0]}: error: ")
    assert message.format(tmp=tmp_path) in err[0]


@pytest.mark.parametrize("action", ["report", "dedup", "balance"])
def test_invalid_record_is_named_and_skip_invalid_goes_on(tmp_path, action):
    path = write_jsonl(tmp_path / "bad.jsonl", [record("a"), record("b", answer="F"), record("c")])
    out = [] if action == "report" else ["--out", str(tmp_path / "out.jsonl")]
    result = topa("textvid", action, str(path), *out)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"topa textvid {action}: error: {path}: line 2, record 1 (id 'b'): QAs[0].answer: expected one of A, B, C, D, "
        f"E, got 'F' (--skip-invalid leaves invalid records out; `topa textvid validate {path}` lists every problem)")
    result = topa("textvid", action, str(path), *out, "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert "left out 1 invalid record(s)" in result.stderr


def test_dedup_command_is_deterministic(tmp_path):
    source = _planted(tmp_path)
    outputs = []
    for _ in range(2):
        result = topa("textvid", "dedup", str(source), "--out", str(tmp_path / "clean.json"))
        assert result.returncode == 0, result.stderr
        outputs.append(((tmp_path / "clean.json").read_bytes(), (tmp_path / "clean.removed.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert "kept 30 of 31 Tideos" in result.stdout
    removed = json.loads(outputs[0][1])
    assert (removed["idx"], removed["cluster"], removed["record"], removed["cluster_record"]) == (
        "copy_4", "tideo_00004", 12, 4)
    assert len(read_textvid(tmp_path / "clean.json")) == 30


def test_balance_command(tmp_path):
    source = _planted(tmp_path)  # every answer at C
    result = topa("textvid", "balance", str(source), "--out", str(tmp_path / "balanced.jsonl"), "--seed", "3")
    assert result.returncode == 0, result.stderr
    letters = [qa.answer for r in read_textvid(tmp_path / "balanced.jsonl") for qa in r.qas]
    assert sorted(letters.count(x) for x in "ABCDE") == [6, 6, 6, 6, 7]
    assert "answer letters A:" in result.stdout


@pytest.mark.slow
def test_generate_report_prints_shortcuts_and_near_duplicates(tmp_path, monkeypatch):
    from tests.helpers.openai_stub_server import StubOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out, page = tmp_path / "tideos.jsonl", tmp_path / "tideos.html"
    with StubOpenAIServer(["valid"] * 3) as server:
        result = subprocess.run([sys.executable, "-m", "topa_plugin.cli", "textvid", "generate", "--out", str(out),
                                 "--num", "3", "--base-url", server.url, "--model", "stub-model", "--no-progress",
                                 "--report", str(page)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "longest_option" in result.stdout and "near-duplicates" in result.stdout and page.is_file()
    assert main(["textvid", "generate", "--out", str(out), "--num", "3", "--base-url", server.url,
                 "--report", str(tmp_path / "no" / "r.html")]) == 2


def test_a_file_that_does_not_parse_is_one_line_without_the_skip_hint(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text("[" + json.dumps(record("a")) + ",\n{oops", encoding="utf-8")
    for argv in (["report", str(path)], ["report", str(path), "--skip-invalid"],
                 ["dedup", str(path), "--out", str(tmp_path / "o.jsonl")]):
        assert main(["textvid", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"topa textvid {argv[0]}: error: {path}: line 2: invalid JSON") and "\n" not in err
        assert "--skip-invalid" not in err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.removed.jsonl").exists()
