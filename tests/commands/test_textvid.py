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
