"""Ids become file names: separators and '.'/'..' are refused where ids enter."""

from __future__ import annotations

import json

import pytest

from topa_plugin.utils.ids import id_problem


@pytest.mark.parametrize("value", ["../x", "a/b", "a\\b", "..", ".", "nul\0"])
def test_unsafe_ids(value):
    assert id_problem(value) is not None


@pytest.mark.parametrize("value", ["ego-42", "a..b", "0f3c_9.mp4", "v 1"])
def test_safe_ids(value):
    assert id_problem(value) is None


def test_textvid_and_task_rows_refuse_path_ids(tmp_path):
    from topa_plugin.lmms.taskdata import TaskDataError, prepare_rows
    from topa_plugin.textvid import TextVidError, read_textvid, sample_path

    record = json.loads(sample_path().read_text(encoding="utf-8").splitlines()[0])
    (tmp_path / "t.jsonl").write_text(json.dumps({**record, "idx": "../../etc/x"}) + "\n")
    with pytest.raises(TextVidError, match=r"record 0 \(id '\.\./\.\./etc/x'\): idx: id .* contains a path separator"):
        read_textvid(tmp_path / "t.jsonl")
    row = {"video_idx": "..", "question": "q?", "option": ["a", "b", "c", "d", "e"], "answer": 0}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(TaskDataError, match=r"row 0 \(video_idx '\.\.'\) field 'video_idx': id '\.\.' names a directory"):
        prepare_rows(tmp_path / "rows.jsonl", tmp_path)
