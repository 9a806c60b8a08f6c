"""Shortcut rates against chance: ties, the Wilson interval, the chance band and the flag."""

from __future__ import annotations

import math
import random

import pytest

from tests.helpers.textvid_synth import clean_record, longest_is_answer
from topa_plugin.textvid.records import TextVidRecord
from topa_plugin.textvid.shortcuts import ShortcutCount, Shortcuts, top, wilson_interval


def test_wilson_interval_matches_the_formula_and_stays_in_bounds():
    low, high = wilson_interval(127, 178)
    # Wilson (1927) by hand: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.959963984540054, 178, 127 / 178
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 10)[1] > 0 and wilson_interval(10, 10)[0] < 1


def test_ties_count_as_hits_and_raise_chance():
    assert top([3, 5, 5, 1, 5]) == [1, 2, 4]
    count = ShortcutCount()
    assert count.add([3, 5, 5, 1, 5], answer=2)  # among three tied: a hit, chance 3/5
    assert not count.add([9, 1, 1, 1, 1], answer=1)  # chance 1/5
    result = count.result()
    assert result["rate"] == 0.5 and result["chance"] == pytest.approx((3 / 5 + 1 / 5) / 2)
    assert result["hits"] == 1 and result["qas"] == 2


def test_chance_band_is_the_poisson_binomial_one():
    count = ShortcutCount()
    for i in range(100):
        count.add([1, 1, 0, 0, 0] if i % 2 else [1, 0, 0, 0, 0], answer=0)
    r = count.result()
    p = [0.4, 0.2] * 50
    sd = math.sqrt(sum(x * (1 - x) for x in p))
    assert r["chance"] == pytest.approx(0.3)
    assert r["chance_high"] - r["chance"] == pytest.approx(1.959963984540054 * sd / 100)
    assert r["z"] == pytest.approx((100 - 30) / sd) and r["flag"] == "above"


def _records(n: int, seed: int = 0) -> list[TextVidRecord]:
    rng = random.Random(seed)
    return [TextVidRecord.from_dict(clean_record(i, rng)) for i in range(n)]


def test_clean_file_sits_within_chance_and_longest_plant_is_found():
    clean, planted = Shortcuts(), Shortcuts()
    rng = random.Random(1)
    for record in _records(400):
        clean.add(record)
        planted.add(TextVidRecord.from_dict(longest_is_answer(record.to_dict(), rng)))
    for name, r in clean.result().items():
        assert r["chance_low"] <= r["rate"] <= r["chance_high"], name
        assert r["low"] <= r["chance"] <= r["high"], name
        assert r["flag"] is None, name
    found = planted.result()
    assert found["longest_option"]["rate"] == 1.0 and found["longest_option"]["flag"] == "above"
    assert found["longest_option"]["chance"] == pytest.approx(0.2)  # strictly longest: no ties
    # Options share no word with question or captions: every option ties, the rules cannot tell (chance 1).
    for name in ("question_overlap", "caption_overlap"):
        assert found[name]["chance"] == 1.0 and found[name]["flag"] is None
