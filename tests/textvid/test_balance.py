"""Answer balancing: the release's keep-order rule, uniform letters, answers still correct, same bytes per seed."""

from __future__ import annotations

import json
import random
from collections import Counter

from tests.helpers.textvid_synth import clean_record, write_json_list, write_jsonl
from topa_plugin.textvid.balance import balance_file, keeps_order
from topa_plugin.textvid.reader import read_textvid
from topa_plugin.training.samples import balance_options


def skewed_file(path, n=150, keep=6, writer=write_jsonl):
    """Every answer at A; ``keep`` QAs answer "All of the above" (at E), which must not move."""
    rng = random.Random(3)
    records = []
    for i in range(n):
        record = clean_record(i, rng)
        for qa in record["QAs"]:
            answer = qa["options"]["ABCDE".index(qa["answer"])]
            others = [o for o in qa["options"] if o != answer][:4]
            qa["options"], qa["answer"] = [answer] + others, "A"
        records.append(record)
    for record in records[:keep]:
        qa = record["QAs"][0]
        qa["options"][4], qa["answer"] = "All of the above", "E"
    return writer(path, records)


def test_the_rule_is_the_releases():
    for text in ("Both of them", "all of the above", "None of these", "He shook hands", "Ball"):
        assert keeps_order(text)
    assert not keeps_order("He poured the milk")
    rng = random.Random(0)
    assert balance_options(["x", "y", "All of the above", "z", "w"], 2, rng) == (["x", "y", "All of the above", "z", "w"], 2)


def test_letters_become_uniform_and_answers_stay_correct(tmp_path):
    source = skewed_file(tmp_path / "skewed.jsonl")
    out = tmp_path / "balanced.jsonl"
    balancer = balance_file(source, out, seed=0)
    before, after = read_textvid(source), read_textvid(out)
    letters = Counter(qa.answer for r in after for qa in r.qas)
    assert max(letters.values()) - min(letters.values()) <= 1 and sum(letters.values()) == 300
    assert balancer.kept == 6
    for old, new in zip(before, after):
        assert new.to_dict() == {**old.to_dict(), "QAs": new.to_dict()["QAs"]}  # nothing else changed
        for qa_old, qa_new in zip(old.qas, new.qas):
            assert qa_new.answer_text == qa_old.answer_text
            assert sorted(qa_new.options) == sorted(qa_old.options)
            if qa_old.answer_text == "All of the above":
                assert qa_new.options == qa_old.options and qa_new.answer == "E"


def test_same_seed_same_bytes_other_seed_other_order(tmp_path):
    source = skewed_file(tmp_path / "skewed.json", writer=write_json_list)
    balance_file(source, tmp_path / "a.json", seed=0)
    balance_file(source, tmp_path / "b.json", seed=0)
    balance_file(source, tmp_path / "c.json", seed=1)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()
    assert isinstance(json.loads((tmp_path / "a.json").read_text()), list)
