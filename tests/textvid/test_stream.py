"""Streamed TextVid reading: the release's JSON list and JSON Lines, record by record, with byte spans."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest

from tests.helpers.textvid_records import good_record
from topa_plugin.textvid import stream
from topa_plugin.textvid.reader import read_record, scan_textvid


def records_of(data: bytes) -> list:
    return list(stream.iter_json_list(io.BytesIO(data)))


@pytest.mark.parametrize("chunk", [1, 3, 16, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_list_records_and_spans_at_any_chunk_size(monkeypatch, chunk, indent):
    monkeypatch.setattr(stream, "CHUNK", chunk)
    values = [good_record("a"), {"idx": "é\u00e9 \\u", "n": 12345, "x": [1.5e3, None, True]}, 7, "s"]
    data = json.dumps(values, indent=indent, ensure_ascii=False).encode("utf-8")
    items = records_of(data)
    assert [item.value for item in items] == values
    assert [item.index for item in items] == [0, 1, 2, 3]
    for item in items:  # each span holds exactly that record
        assert json.loads(data[item.offset:item.offset + item.size]) == item.value


@pytest.mark.parametrize(("data", "line", "message"), [
    (b'[{"a": 1},\n{"b": 2}', 2, "expected ',' or ']' after record 1"),
    (b'[{"a": 1}\n {"b": 2}]', 2, "expected ',' or ']' after record 0"),
    (b'[{"a": 1},\n]', 2, "invalid JSON: Expecting value"),
    (b'[{"a": 1}] extra', 1, "extra data after the list"),
    (b'[\n{"a": 1,\n oops}]', 3, "invalid JSON: Expecting property name"),
    (b'{"a": 1}', None, "expected a JSON list of records, got object"),
    (b"", None, "empty file"),
])
def test_json_list_syntax_errors_name_the_line(monkeypatch, data, line, message):
    monkeypatch.setattr(stream, "CHUNK", 4)
    *_, last = records_of(data)
    assert last[0] == line and message in last[1]


def test_jsonl_lines_blank_lines_and_bad_lines():
    data = b'{"a": 1}\n\n{bad\n{"c": 3}\n'
    items = list(stream.iter_jsonl(io.BytesIO(data)))
    assert items[1] == (2, "blank line (JSON Lines needs one record per line)")
    assert items[2].index == 1 and items[2].line == 3 and items[2].error.startswith("invalid JSON")
    assert items[3].index == 2 and items[3].value == {"c": 3}
    assert data[items[3].offset:items[3].offset + items[3].size] == b'{"c": 3}\n'


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_scan_holds_one_record_at_a_time(tmp_path, monkeypatch, suffix):
    """Checking a file takes memory for its ids, not its text: reading it whole would take many times its size."""
    monkeypatch.setattr(stream, "CHUNK", 1 << 16)
    path = tmp_path / f"big{suffix}"
    records = [good_record(f"rec{i:05d}") for i in range(3000)]
    if suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    size = path.stat().st_size
    warm = tmp_path / f"warm{suffix}"  # first calls import modules; trace the reading only
    warm.write_text("[]" if suffix == ".json" else "", encoding="utf-8")
    list(scan_textvid(warm))
    tracemalloc.start()
    try:
        n = sum(1 for item, problems in scan_textvid(path) if item is not None and not problems)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == len(records)
    assert peak < size / 2, (peak, size)


def test_read_record_comes_back_from_its_span(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([good_record("a"), good_record("b")], indent=1), encoding="utf-8")
    items = [item for item, _ in scan_textvid(path)]
    assert read_record(path, items[1].offset, items[1].size).idx == "b"
    path.write_text(json.dumps([good_record("a")]), encoding="utf-8")  # the file changed
    with pytest.raises(ValueError, match="changed after it was checked"):
        read_record(path, items[1].offset, items[1].size)
