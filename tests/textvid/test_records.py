"""TextVid records: validation names file, record, id and field; reading round trips; bundled sample."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest

from tests.helpers.textvid_records import good_record
from topa_plugin.textvid import (
    QA,
    TextVidError,
    TextVidRecord,
    compute_stats,
    read_textvid,
    sample_path,
    validate_records,
    write_jsonl,
)


def write_json(tmp_path, records, name="textvid.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def problems_of(path) -> list[str]:
    with pytest.raises(TextVidError) as info:
        read_textvid(path)
    return [str(p) for p in info.value.problems]


def _set(path_keys, value):
    def mutate(d):
        target = d
        for key in path_keys[:-1]:
            target = target[key]
        target[path_keys[-1]] = value
    return mutate


def _delete(path_keys):
    def mutate(d):
        target = d
        for key in path_keys[:-1]:
            target = target[key]
        del target[path_keys[-1]]
    return mutate


# (mutation of record 1, expected "field: message" substring)
BAD_CASES = {
    "missing idx": (_delete(["idx"]), "record 1: idx: missing key"),
    "missing frames": (_delete(["frames"]), "frames: missing key"),
    "missing global caption": (_delete(["global_video_caption"]), "global_video_caption: missing key"),
    "missing QAs": (_delete(["QAs"]), "QAs: missing key"),
    "missing question": (_delete(["QAs", 1, "question"]), "QAs[1].question: missing key"),
    "missing options": (_delete(["QAs", 0, "options"]), "QAs[0].options: missing key"),
    "missing answer": (_delete(["QAs", 1, "answer"]), "QAs[1].answer: missing key"),
    "idx wrong type": (_set(["idx"], None), "idx: expected a string, got null"),
    "idx empty": (_set(["idx"], "  "), "idx: empty text"),
    "frames wrong type": (_set(["frames"], "frame one"), "frames: expected a list of frames, got string"),
    "empty frames": (_set(["frames"], []), "frames: no frames (empty list)"),
    "frame not object": (_set(["frames", 1], ["a caption"]), "frames[1]: expected an object of captions, got array"),
    "empty frame dict": (_set(["frames", 0], {}), "frames[0]: frame has no captions (empty object)"),
    "caption not string": (_set(["frames", 1, "object_2"], 7), "frames[1].object_2: expected a string, got number"),
    "caption empty": (_set(["frames", 0, "frame_caption"], " "), "frames[0].frame_caption: empty text"),
    "odd caption key": (_set(["frames", 0, "object 9"], None), "frames[0]['object 9']: expected a string, got null"),
    "global caption type": (_set(["global_video_caption"], ["x"]), "global_video_caption: expected a string, got array"),
    "global caption empty": (_set(["global_video_caption"], ""), "global_video_caption: empty text"),
    "QAs wrong type": (_set(["QAs"], {"q": 1}), "QAs: expected a list of QAs, got object"),
    "empty QAs": (_set(["QAs"], []), "QAs: no QAs (empty list)"),
    "QA not object": (_set(["QAs", 0], "question?"), "QAs[0]: expected an object, got string"),
    "question empty": (_set(["QAs", 0, "question"], ""), "QAs[0].question: empty text"),
    "options not list": (_set(["QAs", 1, "options"], "A B C D E"), "QAs[1].options: expected a list of 5 options, got string"),
    "options count": (_set(["QAs", 1, "options"], ["a", "b", "c", "d", "e", "f"]), "QAs[1].options: expected 5 options, got 6"),
    "option not string": (_set(["QAs", 0, "options", 3], 4), "QAs[0].options[3]: expected a string, got number"),
    "option empty": (_set(["QAs", 0, "options", 2], ""), "QAs[0].options[2]: empty text"),
    "duplicate options": (_set(["QAs", 0, "options", 4], "Left"), "QAs[0].options: duplicate options"),
    "answer letter": (_set(["QAs", 1, "answer"], "F"), "QAs[1].answer: expected one of A, B, C, D, E, got 'F'"),
    "answer lower case": (_set(["QAs", 1, "answer"], "c"), "QAs[1].answer: expected one of A, B, C, D, E, got 'c'"),
    "answer index": (_set(["QAs", 1, "answer"], 2), "QAs[1].answer: expected one of A, B, C, D, E, got 2"),
    "answer empty": (_set(["QAs", 1, "answer"], ""), "QAs[1].answer: expected one of A, B, C, D, E, got ''"),
    "open answer type": (_set(["QAs", 1, "answer_open_ended"], None), "QAs[1].answer_open_ended: expected a string, got null"),
    "open answer empty": (_set(["QAs", 0, "answer_open_ended"], "   "), "QAs[0].answer_open_ended: empty text"),
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_each_error_kind_names_file_record_and_field(tmp_path, name, suffix):
    mutate, expected = BAD_CASES[name]
    bad = good_record("rec_b")
    mutate(bad)
    records = [good_record("rec_a"), bad, good_record("rec_c")]
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ")
    assert "record 1" in problems[0]
    if suffix == ".jsonl":
        assert "line 2, record 1" in problems[0]
    if name not in ("missing idx", "idx wrong type", "idx empty"):
        assert "(id 'rec_b')" in problems[0]
    assert expected in problems[0]


def test_message_format_matches_the_documented_example(tmp_path):
    records = [good_record(f"r{i}") for i in range(18)]
    records[17]["idx"] = "abc"
    records[17]["QAs"].append(copy.deepcopy(records[17]["QAs"][0]))
    records[17]["QAs"][2]["options"] = ["a", "b", "c", "d"]
    records[17]["QAs"][2]["answer"] = "B"
    path = write_json(tmp_path, records)
    assert problems_of(path) == [f"{path}: record 17 (id 'abc'): QAs[2].options: expected 5 options, got 4"]


def test_answer_beyond_the_given_options_is_out_of_range(tmp_path):
    bad = good_record()
    bad["QAs"][0]["options"] = ["a", "b", "c"]
    bad["QAs"][0]["answer"] = "D"
    problems = problems_of(write_json(tmp_path, [bad]))
    assert [p.split(": ", 2)[2] for p in problems] == [
        "QAs[0].options: expected 5 options, got 3",
        "QAs[0].answer: answer 'D' is out of range for 3 options",
    ]


def test_duplicate_ids_name_both_records(tmp_path):
    records = [good_record("x"), good_record("y"), good_record("x"), good_record("x")]
    problems = problems_of(write_json(tmp_path, records))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "record 2 (id 'x'): idx: duplicate id, first used by record 0",
        "record 3 (id 'x'): idx: duplicate id, first used by record 0",
    ]


def test_every_problem_in_every_record_is_reported(tmp_path):
    first = good_record("one")
    first["frames"][0] = {}
    first["QAs"][1]["answer"] = "Z"
    second = good_record("two")
    del second["global_video_caption"]
    second["QAs"][0]["options"].pop()
    problems = problems_of(write_json(tmp_path, [first, good_record("ok"), second, "not a record"]))
    tails = [p.split(": ", 1)[1] for p in problems]
    assert tails == [
        "record 0 (id 'one'): frames[0]: frame has no captions (empty object)",
        "record 0 (id 'one'): QAs[1].answer: expected one of A, B, C, D, E, got 'Z'",
        "record 2 (id 'two'): global_video_caption: missing key",
        "record 2 (id 'two'): QAs[0].options: expected 5 options, got 4",
        "record 3: expected a JSON object, got string",
    ]


def test_invalid_json_lines_report_file_and_line_and_keep_checking(tmp_path):
    path = tmp_path / "data.jsonl"
    bad = good_record("b")
    bad["QAs"] = []
    path.write_text(
        json.dumps(good_record("a")) + "\n"
        + '{"idx": "broken", "frames": [\n'
        + "\n"
        + json.dumps(bad) + "\n"
        + "[1, 2]\n",
        encoding="utf-8",
    )
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}: line 2, record 1: invalid JSON: ")
    assert problems[1:] == [
        f"{path}: line 3: blank line (JSON Lines needs one record per line)",
        f"{path}: line 4, record 2 (id 'b'): QAs: no QAs (empty list)",
        f"{path}: line 5, record 3: expected a JSON object, got array",
    ]


def test_invalid_utf8_line_is_reported(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(good_record("a")).encode() + b"\n" + b'{"idx": "\xff"}\n')
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: line 2, record 1: not UTF-8 text")


def test_release_json_must_be_a_valid_list(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"idx": "a",\n  oops\n]', encoding="utf-8")
    problems = problems_of(broken)
    assert len(problems) == 1 and problems[0].startswith(f"{broken}: line 3: invalid JSON: ")
    not_list = write_json(tmp_path, good_record())
    assert problems_of(not_list) == [f"{not_list}: expected a JSON list of records, got object"]


def test_unsupported_suffix_is_an_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("idx\n", encoding="utf-8")
    assert problems_of(path) == [f"{path}: unsupported file type: expected .json (release list) or .jsonl (JSON Lines)"]


def test_error_message_lists_problems_and_counts_the_rest():
    err = TextVidError(validate_records([{"idx": f"r{i}"} for i in range(20)], "mem"))
    lines = str(err).splitlines()
    assert lines[0] == "60 TextVid problems:"
    assert lines[1] == "mem: record 0 (id 'r0'): frames: missing key"
    assert len(lines) == 1 + 50 + 1
    assert lines[-1].startswith("... and 10 more")


def test_validate_records_accepts_good_dicts_and_integer_ids():
    assert validate_records([good_record("a"), good_record("b")], "mem") == []
    numbered = good_record()
    numbered["idx"] = 1234
    record = TextVidRecord.from_dict(numbered)
    assert record.idx == "1234"
    clash = good_record("1234")
    assert [p.message for p in validate_records([numbered, clash], "mem")] == ["duplicate id, first used by record 0"]


def test_typed_record_accessors():
    record = TextVidRecord.from_dict(good_record())
    assert record.captions_per_frame == [
        ["A man opens a fridge.", "A white fridge."],
        ["He pours milk into a glass.", "A glass.", "A carton of milk."],
    ]
    assert [qa.answer_index for qa in record.qas] == [0, 2]
    assert [qa.answer_text for qa in record.qas] == ["Poured milk", "Milk"]
    assert record.qas[1].answer_open_ended is None
    assert "answer_open_ended" not in record.to_dict()["QAs"][1]


def test_from_dict_raises_with_every_problem():
    bad = good_record("z")
    bad["frames"] = []
    bad["QAs"][0]["answer"] = "G"
    with pytest.raises(TextVidError) as info:
        TextVidRecord.from_dict(bad, source="inline", index=4)
    assert [str(p) for p in info.value.problems] == [
        "inline: record 4 (id 'z'): frames: no frames (empty list)",
        "inline: record 4 (id 'z'): QAs[0].answer: expected one of A, B, C, D, E, got 'G'",
    ]


def test_release_json_to_jsonl_round_trip_is_lossless(tmp_path):
    release = [good_record("a"), good_record("b"), good_record("c")]
    release[1]["frames"][0] = {"Frame caption": "Rain on a window.", "Object 1": "Water drops.", "z": "é ünïcode ✓"}
    release[1]["source"] = "webvid"  # keys outside the schema survive
    release[2]["QAs"][0]["qtype"] = "temporal"
    src = write_json(tmp_path, release)

    records = read_textvid(src)
    assert [r.to_dict() for r in records] == release
    assert list(records[1].frames[0]) == ["Frame caption", "Object 1", "z"]  # key order = feature row order

    out = write_jsonl(tmp_path / "out.jsonl", records)
    assert out.stat().st_mode & 0o777 == 0o644
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == release
    again = read_textvid(out)
    assert again == records
    assert [list(f) for r in again for f in r.frames] == [list(f) for r in release for f in r["frames"]]


def test_compute_stats_counts_and_distributions():
    a = TextVidRecord.from_dict(good_record("a"))
    b = TextVidRecord.from_dict(good_record("b"))
    b.frames.append({"frame_caption": "He drinks it all."})
    b.qas.append(QA("Why?", ["1", "2", "3", "4", "5"], "E", "Because."))
    stats = compute_stats([a, b])
    assert {k: stats[k] for k in ("records", "frames", "captions", "qas", "qas_with_open_answer")} == {
        "records": 2, "frames": 5, "captions": 11, "qas": 5, "qas_with_open_answer": 3}
    d = stats["distributions"]
    assert d["frames_per_record"] == {"min": 2, "mean": 2.5, "median": 2.5, "max": 3}
    assert d["captions_per_frame"] == {"min": 1, "mean": 2.2, "median": 2, "max": 3}
    # words: 5,3 | 6,2,4 per record; plus "He drinks it all." (4)
    assert d["words_per_caption"] == {"min": 2, "mean": 44 / 11, "median": 4, "max": 6}
    assert d["qas_per_record"] == {"min": 2, "mean": 2.5, "median": 2.5, "max": 3}
    assert compute_stats([])["distributions"]["frames_per_record"] is None


# ---------------------------------------------------------------- bundled sample

def test_bundled_sample_is_valid_and_covers_the_required_content():
    path = sample_path()
    assert path.is_file() and path.suffix == ".jsonl"
    records = read_textvid(path)
    assert len(records) >= 50
    categories = Counter(r.idx.split("_")[1] for r in records)
    for needed in ("cooking", "sports", "household", "outdoor", "egowork"):
        assert categories[needed] >= 5, categories
    assert len(categories) >= 6  # a few other kinds too
    for r in records:
        assert r.idx.startswith("sample_")
        assert 5 <= len(r.frames) <= 15, r.idx
        for frame in r.frames:
            keys = list(frame)
            assert keys[0] == "frame_caption" and 1 <= len(keys) - 1 <= 3, (r.idx, keys)
            assert all(k.startswith("object_") for k in keys[1:]), (r.idx, keys)
        assert 2 <= r.global_video_caption.count(". ") + 1 <= 4, r.idx
        assert 2 <= len(r.qas) <= 4, r.idx
        assert all(qa.answer_open_ended for qa in r.qas), r.idx
    letters = Counter(qa.answer for r in records for qa in r.qas)
    assert set(letters) == set("ABCDE") and min(letters.values()) >= 10, letters


def test_bundled_sample_text_is_not_repeated_boilerplate():
    records = read_textvid(sample_path())
    captions = [c for r in records for f in r.captions_per_frame for c in f]
    summaries = [r.global_video_caption for r in records]
    questions = [qa.question for r in records for qa in r.qas]
    assert len(set(summaries)) == len(summaries)
    assert len(set(questions)) == len(questions)
    assert len(set(captions)) >= 0.95 * len(captions)
