"""Reading a reply as a Tideo: one local JSON repair, the checks and their reasons, content keys."""

from __future__ import annotations

import copy
import json

import pytest

from topa_plugin.textvid import read_textvid, sample_path
from topa_plugin.textvid.responses import ParseFailure, check_tideo, content_key, parse_json_object, record_id


@pytest.fixture
def tideo() -> dict:
    record = read_textvid(sample_path())[0].to_dict()
    record.pop("idx")
    for qa in record["QAs"]:
        qa.setdefault("answer_open_ended", "an answer")
    return record


def test_strict_json_needs_no_repair_and_chatter_gets_one(tideo):
    text = json.dumps(tideo)
    assert parse_json_object(text) == (tideo, False)
    assert parse_json_object(f"Sure! ```json\n{text}\n``` Enjoy.") == (tideo, True)
    with pytest.raises(ParseFailure, match="no JSON object"):
        parse_json_object("no braces here")
    with pytest.raises(ParseFailure, match="invalid JSON after repair"):
        parse_json_object('here: {"frames": [')


def test_a_good_tideo_passes(tideo):
    assert check_tideo(tideo) is None


@pytest.mark.parametrize("change, reason", [
    (lambda t: t.update(extra=1), "unexpected_keys"),
    (lambda t: t["QAs"][0].update(hint="x"), "unexpected_keys"),
    (lambda t: t.update(frames=t["frames"][:1] * 4), "frame_count"),
    (lambda t: t["QAs"][0].pop("answer_open_ended"), "missing_open_answer"),
    (lambda t: t.pop("global_video_caption"), "schema"),
])
def test_each_problem_has_its_reason(tideo, change, reason):
    bad = copy.deepcopy(tideo)
    change(bad)
    verdict = check_tideo(bad)
    assert verdict is not None and verdict[0] == reason and verdict[1]
    assert check_tideo([tideo]) == ("schema", ["expected a JSON object, got list"])


def test_content_key_ignores_case_and_punctuation_and_ids_follow_it():
    key = content_key("A man cooks.", ["What does he cook?"])
    assert key == content_key("a MAN cooks", ["what does he cook"])
    assert key != content_key("A man cooks.", ["What does she cook?"])
    assert record_id("howto", key) == f"howto-{key[:16]}"
