"""The quality report of a TextVid file: what an LLM wrote, seen before training on it.

One streaming pass gathers the counts and length distributions (``stats``), the answer-letter distribution,
the answer shortcuts against chance (``shortcuts``), question types and text diversity (``diversity``),
degenerate options, and near-duplicate clusters (``near_duplicates``). Memory holds counters, the
near-duplicate index and two integers per record, never the records' text, so the release's 721k Tideos fit
in about a gigabyte (``benchmarks/bench_textvid_scale.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from topa_plugin.textvid.diversity import Diversity
from topa_plugin.textvid.near_duplicates import DEFAULT_THRESHOLD, NearDuplicates
from topa_plugin.textvid.reader import iter_valid
from topa_plugin.textvid.records import LETTERS, NUM_OPTIONS, Problem, TextVidError, TextVidRecord
from topa_plugin.textvid.shortcuts import Shortcuts, wilson_interval
from topa_plugin.textvid.stats import TextVidStats
from topa_plugin.textvid.words import words

EXAMPLES = 5
# Answer letters are called biased when a chi-square test against uniform rejects at this level.
LETTER_ALPHA = 0.05
DEGENERATE_KINDS = {
    "duplicate_options": "two options say the same words (up to case and punctuation: exact copies are invalid)",
    "empty_options": "an option has no word (only punctuation or symbols)",
    "option_is_question": "an option repeats the question's words",
}


def answer_letters(counts: Counter) -> dict[str, Any]:
    """Counts per letter, each letter's share with its Wilson interval, and a chi-square test against uniform."""
    from scipy.stats import chi2

    n = sum(counts.values())
    letters = {letter: counts[letter] for letter in LETTERS}
    if not n:
        return {"counts": letters, "shares": {}, "chi2": None, "p_value": None, "biased": False}
    expected = n / NUM_OPTIONS
    statistic = sum((c - expected) ** 2 / expected for c in letters.values())
    p_value = float(chi2.sf(statistic, NUM_OPTIONS - 1))
    shares = {letter: {"share": c / n, "low": wilson_interval(c, n)[0], "high": wilson_interval(c, n)[1]}
              for letter, c in letters.items()}
    return {"counts": letters, "shares": shares, "chi2": statistic, "p_value": p_value,
            "biased": p_value < LETTER_ALPHA}


class DegenerateOptions:
    """QAs with duplicate options, option without words, or an option equal to the question."""

    def __init__(self):
        self.counts = Counter()
        self.examples: dict[str, list[dict]] = {kind: [] for kind in DEGENERATE_KINDS}

    def add(self, record: TextVidRecord) -> None:
        for q, qa in enumerate(record.qas):
            options = [tuple(words(option)) for option in qa.options]
            found = {"duplicate_options": len(set(options)) < len(options),
                     "empty_options": any(not option for option in options),
                     "option_is_question": tuple(words(qa.question)) in options}
            for kind, present in found.items():
                if present:
                    self.counts[kind] += 1
                    if len(self.examples[kind]) < EXAMPLES:
                        self.examples[kind].append({"id": record.idx, "qa": q, "question": qa.question,
                                                    "options": list(qa.options), "answer": qa.answer})

    def result(self) -> dict:
        return {kind: {"qas": self.counts[kind], "examples": self.examples[kind]} for kind in DEGENERATE_KINDS}


class QualityReport:
    """Every figure of the report, gathered from the records of one file added in order."""

    def __init__(self, path: str | os.PathLike, threshold: float = DEFAULT_THRESHOLD):
        self.path = Path(path)
        self.stats = TextVidStats()
        self.letters: Counter = Counter()
        self.question_words: Counter = Counter()
        self.shortcuts = Shortcuts()
        self.diversity = Diversity()
        self.degenerate = DegenerateOptions()
        self.near_duplicates = NearDuplicates(self.path, threshold)
        self.skipped: list[Problem] = []

    def add(self, index: int, record: TextVidRecord, offset: int, size: int) -> None:
        self.stats.add(record)
        self.letters.update(qa.answer for qa in record.qas)
        self.question_words.update(len(words(qa.question)) for qa in record.qas)
        self.shortcuts.add(record)
        self.diversity.add(record)
        self.degenerate.add(record)
        self.near_duplicates.add(index, record.idx, record.frames, offset, size)

    def result(self) -> dict[str, Any]:
        stats = self.stats.result()
        histograms = {name: dict(sorted(h.items())) for name, h in self.stats.histograms.items()}
        histograms["words_per_question"] = dict(sorted(self.question_words.items()))
        return {
            "file": str(self.path), "records": stats["records"], "qas": stats["qas"],
            "frames": stats["frames"], "captions": stats["captions"],
            "skipped_invalid": len({(p.index, p.line) for p in self.skipped}),
            "answer_letters": {letter: self.letters[letter] for letter in LETTERS},
            "letter_test": answer_letters(self.letters),
            "shortcuts": self.shortcuts.result(),
            "near_duplicates": self.near_duplicates.result(EXAMPLES),
            "degenerate_options": self.degenerate.result(),
            "diversity": self.diversity.result(),
            "distributions": stats["distributions"],
            "histograms": histograms,
        }


def quality_report(path: str | os.PathLike, threshold: float = DEFAULT_THRESHOLD, skip_invalid: bool = False,
                   desc: str | None = None) -> dict[str, Any]:
    """The report of one TextVid file (``.json`` list or ``.jsonl``), read as a stream.

    Raises:
        TextVidError: the file cannot be read, or (without ``skip_invalid``) its first invalid record.
    """
    report = QualityReport(path, threshold)
    for item, record in iter_valid(path, skip_invalid, desc, report.skipped):
        report.add(item.index, record, item.offset, item.size)
    if not report.stats.histograms["frames_per_record"]:
        raise TextVidError([Problem(str(path), None, None, None, "no valid records (all were skipped as invalid)")])
    return report.result()
