"""Writing TextVid files: validated, atomic, appends a crash cannot tear, streamed rewrites."""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers.textvid_records import good_record
from topa_plugin.textvid.reader import read_textvid
from topa_plugin.textvid.records import TextVidError, TextVidRecord
from topa_plugin.textvid.writer import RecordWriter, append_jsonl, write_jsonl


def test_write_jsonl_refuses_invalid_records_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("previous contents\n", encoding="utf-8")
    record = TextVidRecord.from_dict(good_record("same"))
    broken = TextVidRecord.from_dict(good_record("other"))
    broken.qas[0].options = broken.qas[0].options[:4]
    with pytest.raises(TextVidError) as info:
        write_jsonl(target, [record, record, broken])
    assert [p.field for p in info.value.problems] == ["idx", "QAs[0].options"]
    assert target.read_text(encoding="utf-8") == "previous contents\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temp file left behind

def test_write_jsonl_replaces_atomically_and_cleans_up_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    target.write_text("previous contents\n", encoding="utf-8")
    records = [TextVidRecord.from_dict(good_record("a"))]

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_jsonl(target, records)
    assert target.read_text(encoding="utf-8") == "previous contents\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]
    monkeypatch.undo()
    target.chmod(0o640)
    write_jsonl(target, records)
    assert target.stat().st_mode & 0o777 == 0o640  # replacing keeps the file's permissions
    assert read_textvid(target) == records

def test_append_jsonl_adds_one_line_per_record(tmp_path):
    path = tmp_path / "gen.jsonl"
    first, second = TextVidRecord.from_dict(good_record("a")), TextVidRecord.from_dict(good_record("b"))
    append_jsonl(path, first)
    append_jsonl(path, second)
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert read_textvid(path) == [first, second]

def test_append_jsonl_refuses_bad_records_and_partial_lines(tmp_path):
    path = tmp_path / "gen.jsonl"
    bad = TextVidRecord.from_dict(good_record("bad"))
    bad.qas[1].answer = "K"
    with pytest.raises(TextVidError, match=r"record id 'bad': QAs\[1\]\.answer"):
        append_jsonl(path, bad)
    assert not path.exists() or path.read_bytes() == b""

    path.write_text(json.dumps(good_record("a")) + "\n" + '{"idx": "half', encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(TextVidError, match="partial line"):
        append_jsonl(path, TextVidRecord.from_dict(good_record("b")))
    assert path.read_bytes() == before

def test_record_writer_writes_lists_and_lines_atomically(tmp_path):
    records = [{"idx": str(i), "text": "é"} for i in range(3)]
    for name in ("out.json", "out.jsonl", "empty.json"):
        with RecordWriter(tmp_path / name) as writer:
            for r in records if name != "empty.json" else []:
                writer.write(r)
    assert json.loads((tmp_path / "out.json").read_text(encoding="utf-8")) == records
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()] == records
    assert json.loads((tmp_path / "empty.json").read_text()) == []
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "broken.jsonl") as writer:
        writer.write(records[0])
        raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.json", "out.json", "out.jsonl"]
