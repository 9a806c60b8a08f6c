"""Counts and length distributions of TextVid records, gathered one record at a time.

Distributions are kept as histograms of small integers (frames per record, words per
caption, ...), so min/mean/median/max are exact and memory does not grow with the file:
the release's 721k Tideos hold about 180M captions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from topa_plugin.textvid.records import TextVidRecord

DISTRIBUTIONS = ("frames_per_record", "captions_per_frame", "words_per_caption",
                 "words_per_global_caption", "qas_per_record")


def _median(histogram: Counter, total: int) -> float:
    """Median of ``total`` values given as value -> count (mean of the two middle values when even)."""
    lower, upper = (total - 1) // 2, total // 2
    seen, low = 0, None
    for value in sorted(histogram):
        seen += histogram[value]
        if low is None and seen > lower:
            low = value
        if seen > upper:
            return low if low == value else (low + value) / 2
    raise ValueError("empty histogram")


def _distribution(histogram: Counter) -> dict[str, float] | None:
    total = sum(histogram.values())
    if not total:
        return None
    return {"min": min(histogram), "mean": sum(v * n for v, n in histogram.items()) / total,
            "median": _median(histogram, total), "max": max(histogram)}


class TextVidStats:
    """Accumulates ``compute_stats`` over records added one by one."""

    def __init__(self):
        self.histograms = {name: Counter() for name in DISTRIBUTIONS}
        self.open_answers = 0

    def add(self, record: TextVidRecord) -> None:
        h = self.histograms
        h["frames_per_record"][len(record.frames)] += 1
        h["captions_per_frame"].update(len(frame) for frame in record.frames)
        for frame in record.frames:
            h["words_per_caption"].update(len(caption.split()) for caption in frame.values())
        h["words_per_global_caption"][len(record.global_video_caption.split())] += 1
        h["qas_per_record"][len(record.qas)] += 1
        self.open_answers += sum(qa.answer_open_ended is not None for qa in record.qas)

    def result(self) -> dict[str, Any]:
        h = self.histograms

        def total(name: str) -> int:
            return sum(v * n for v, n in h[name].items())

        return {
            "records": sum(h["frames_per_record"].values()),
            "frames": total("frames_per_record"),
            "captions": total("captions_per_frame"),
            "qas": total("qas_per_record"),
            "qas_with_open_answer": self.open_answers,
            "distributions": {name: _distribution(h[name]) for name in DISTRIBUTIONS},
        }


def compute_stats(records: Iterable[TextVidRecord]) -> dict[str, Any]:
    """Counts and length distributions (min/mean/median/max) for a set of Tideos."""
    stats = TextVidStats()
    for record in records:
        stats.add(record)
    return stats.result()
