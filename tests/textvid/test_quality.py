"""The whole report on synthetic files: every planted defect is named, nothing else is."""

from __future__ import annotations

import random

import pytest

from tests.helpers.textvid_synth import clean_record, longest_is_answer, write_json_list, write_jsonl
from topa_plugin.textvid import sample_path
from topa_plugin.textvid.quality import quality_report
from topa_plugin.textvid.records import TextVidError

LETTERS = "ABCDE"


def move_answer(qa: dict, letter: str) -> None:
    """Swap the answer with the option at ``letter`` (the options' texts stay the same set)."""
    i, j = LETTERS.index(qa["answer"]), LETTERS.index(letter)
    qa["options"][i], qa["options"][j] = qa["options"][j], qa["options"][i]
    qa["answer"] = letter


def planted_records() -> list[dict]:
    rng = random.Random(5)
    records = [clean_record(i, rng) for i in range(300)]
    for record in records[:150]:  # letter bias: half the Tideos put both answers at A
        for qa in record["QAs"]:
            move_answer(qa, "A")
    copies = []
    for k in (10, 20, 30):  # three near-duplicates: one caption word changed
        copy = {**records[k], "idx": f"copy_of_{k}", "frames": [dict(f) for f in records[k]["frames"]]}
        copy["frames"][0]["frame_caption"] = copy["frames"][0]["frame_caption"].rsplit(" ", 1)[0] + " changed"
        copies.append(copy)
    degenerate = records[40]["QAs"]
    degenerate[0]["options"][1] = degenerate[0]["options"][2].upper() + "."  # exact copies are invalid
    degenerate[1]["options"][3] = "..."
    records[41]["QAs"][0]["options"][4] = records[41]["QAs"][0]["question"]
    return records[:100] + copies + records[100:]


def test_clean_file_shows_no_defect(tmp_path):
    rng = random.Random(11)
    report = quality_report(write_jsonl(tmp_path / "clean.jsonl", [clean_record(i, rng) for i in range(300)]))
    assert report["records"] == 300 and report["qas"] == 600
    assert all(s["flag"] is None for s in report["shortcuts"].values())
    assert not report["letter_test"]["biased"]
    assert report["near_duplicates"]["clusters"] == []
    assert all(found["qas"] == 0 for found in report["degenerate_options"].values())


@pytest.mark.parametrize("writer", [write_jsonl, write_json_list], ids=["jsonl", "json"])
def test_planted_defects_are_found_and_nothing_else(tmp_path, writer):
    path = writer(tmp_path / ("planted.jsonl" if writer is write_jsonl else "planted.json"), planted_records())
    report = quality_report(path)
    assert report["records"] == 303
    assert report["letter_test"]["biased"] and max(report["answer_letters"], key=report["answer_letters"].get) == "A"
    assert report["answer_letters"]["A"] == sum(report["letter_test"]["counts"][x] for x in "A")
    assert sorted(report["near_duplicates"]["clusters"]) == [[f"clean_{k:05d}", f"copy_of_{k}"] for k in (10, 20, 30)]
    assert all(s["flag"] is None for s in report["shortcuts"].values())  # no false shortcut
    degenerate = {kind: [(e["id"], e["qa"]) for e in found["examples"]]
                  for kind, found in report["degenerate_options"].items()}
    assert degenerate == {"duplicate_options": [("clean_00040", 0)], "empty_options": [("clean_00040", 1)],
                          "option_is_question": [("clean_00041", 0)]}


def test_longest_answer_plant_is_the_only_shortcut(tmp_path):
    rng = random.Random(2)
    records = [longest_is_answer(clean_record(i, rng), rng) for i in range(200)]
    report = quality_report(write_jsonl(tmp_path / "long.jsonl", records))
    assert {name for name, s in report["shortcuts"].items() if s["flag"]} == {"longest_option"}
    assert report["shortcuts"]["longest_option"]["rate"] == 1.0


def test_json_fields_the_issue_names():
    report = quality_report(sample_path())
    assert report["records"] == 60 and report["qas"] == 178
    assert set(report["answer_letters"]) == set(LETTERS) and sum(report["answer_letters"].values()) == 178
    for name in ("longest_option", "question_overlap", "caption_overlap"):
        s = report["shortcuts"][name]
        assert s["low"] <= s["rate"] <= s["high"] and 0 < s["chance"] <= 1
    assert report["near_duplicates"]["threshold"] == 0.8 and isinstance(report["near_duplicates"]["clusters"], list)


def test_invalid_record_is_named_or_skipped(tmp_path):
    rng = random.Random(0)
    records = [clean_record(i, rng) for i in range(5)]
    records[3]["QAs"][1]["options"] = records[3]["QAs"][1]["options"][:4]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(TextVidError, match=r"line 4, record 3 \(id 'clean_00003'\): QAs\[1\]\.options"):
        quality_report(path)
    report = quality_report(path, skip_invalid=True)
    assert report["records"] == 4 and report["skipped_invalid"] == 1
