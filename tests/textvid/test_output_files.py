"""The generator's output files: torn tails repaired, one writer at a time, request numbers never reused."""

from __future__ import annotations

import json

import pytest

from topa_plugin.textvid import read_textvid, sample_path
from topa_plugin.textvid.errors import GenerationError
from topa_plugin.textvid.output_files import OutputFiles, fix_torn_tail, rejections_path


def test_a_torn_last_line_is_cut_and_a_complete_one_gets_its_newline(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c": ')
    assert "cut off an incomplete last line (6 bytes" in fix_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert fix_torn_tail(path) is None
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    assert "added the missing newline" in fix_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    assert fix_torn_tail(tmp_path / "missing.jsonl") is None


def test_resumed_files_know_their_records_and_next_request(tmp_path):
    out = tmp_path / "tideos.jsonl"
    record = read_textvid(sample_path())[0]
    first = OutputFiles(out)
    first.append(record, "key-1")
    first.reject({"request": 5, "reason": "schema"})
    first.close()
    again = OutputFiles(out)
    try:
        assert (again.count, again.ids, again.next_request) == (1, {record.idx}, 6)
        assert [json.loads(line)["reason"] for line in rejections_path(out).read_text().splitlines()] == ["schema"]
    finally:
        again.close()


def test_one_writer_at_a_time_and_jsonl_only(tmp_path):
    out = tmp_path / "tideos.jsonl"
    files = OutputFiles(out)
    try:
        with pytest.raises(GenerationError, match="another `topa textvid generate` run is writing this file"):
            OutputFiles(out)
    finally:
        files.close()
    OutputFiles(out).close()  # released
    with pytest.raises(GenerationError, match="expected a .jsonl file"):
        OutputFiles(tmp_path / "tideos.json")


def test_an_edited_rejections_log_is_refused(tmp_path):
    out = tmp_path / "tideos.jsonl"
    rejections_path(out).write_text("not json\n")
    with pytest.raises(GenerationError, match="line 1: invalid JSON"):
        OutputFiles(out)
