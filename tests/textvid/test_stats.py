"""TextVid statistics from histograms: exactly what the statistics module gives on full lists."""

from __future__ import annotations

import random
import statistics

import pytest

from tests.helpers.textvid_records import good_record
from topa_plugin.textvid import TextVidRecord
from topa_plugin.textvid.stats import compute_stats


def random_record(i: int, rng: random.Random) -> TextVidRecord:
    d = good_record(f"r{i}")
    d["frames"] = [{f"c{j}": " ".join(["w"] * rng.randint(1, 9)) for j in range(rng.randint(1, 4))}
                   for _ in range(rng.randint(1, 6))]
    d["QAs"] = d["QAs"][:rng.randint(1, 2)]
    d["global_video_caption"] = " ".join(["g"] * rng.randint(1, 30))
    return TextVidRecord.from_dict(d)


def expected(values: list[int]) -> dict:
    return {"min": min(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "max": max(values)}


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_distributions_equal_full_list_statistics(n):
    rng = random.Random(n)
    records = [random_record(i, rng) for i in range(n)]
    d = compute_stats(records)["distributions"]
    captions = [c for r in records for f in r.frames for c in f.values()]
    assert d["frames_per_record"] == pytest.approx(expected([len(r.frames) for r in records]))
    assert d["captions_per_frame"] == pytest.approx(expected([len(f) for r in records for f in r.frames]))
    assert d["words_per_caption"] == pytest.approx(expected([len(c.split()) for c in captions]))
    assert d["words_per_global_caption"] == pytest.approx(
        expected([len(r.global_video_caption.split()) for r in records]))
    assert d["qas_per_record"] == pytest.approx(expected([len(r.qas) for r in records]))


def test_stats_accept_a_stream():
    rng = random.Random(0)
    records = [random_record(i, rng) for i in range(10)]
    assert compute_stats(iter(records)) == compute_stats(records)
