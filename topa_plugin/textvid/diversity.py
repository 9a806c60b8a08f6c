"""How varied the text is: distinct-1/distinct-2, the most frequent caption openings, and question types.

distinct-n is the number of distinct word n-grams over the total number of n-grams (Li et al., 2016), counted
within each caption or question (never across two). Distinct n-grams are kept as 64-bit hashes in sorted
numpy arrays (8 bytes each, merged every million), so the count is exact up to hash collisions (about one in
10^11 pairs) and memory grows with the vocabulary, not with the file.

Question types come from the question's opening words (rules below, first match wins; "goal" anywhere, since
"What is the goal of ..." asks for the goal, not a thing).
"""

from __future__ import annotations

import re
from array import array
from collections import Counter

import numpy as np

from topa_plugin.textvid.records import TextVidRecord
from topa_plugin.textvid.words import words

OPENING_WORDS = 3
TOP_OPENINGS = 15
_FLUSH = 1 << 20

# (type, pattern on the lower-cased question): the first that matches names the type, else "other".
QUESTION_TYPES = (
    ("goal", r"\b(goal|purpose|objective|aim|intention|trying to)\b"),
    ("how many", r"^how (many|much)\b"),
    ("why", r"^why\b"),
    ("how", r"^how\b"),
    ("which", r"^which\b"),
    ("who", r"^who\b"),
    ("where", r"^where\b"),
    ("when", r"^when\b"),
    ("what", r"^what\b"),
    ("describe", r"^(describe|summari[sz]e|explain)\b"),
    ("yes/no", r"^(is|are|was|were|do|does|did|can|could|has|have|had|will|would|should)\b"),
)
_TYPES = tuple((name, re.compile(pattern)) for name, pattern in QUESTION_TYPES)
OTHER = "other"


def question_type(question: str) -> str:
    text = question.strip().lower()
    return next((name for name, pattern in _TYPES if pattern.search(text)), OTHER)


class DistinctNgrams:
    """Total and distinct word n-grams (n = 1, 2) of texts added one at a time."""

    def __init__(self):
        self.totals = [0, 0]
        self.seen = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]
        self.pending = [array("q"), array("q")]  # hashes not yet merged, 8 bytes each

    def add(self, text_words: list[str]) -> None:
        bigrams = [f"{a} {b}" for a, b in zip(text_words, text_words[1:])]
        for n, grams in enumerate((text_words, bigrams)):
            self.totals[n] += len(grams)
            self.pending[n].extend(map(hash, grams))
            if len(self.pending[n]) >= _FLUSH:
                self._merge(n)

    def _merge(self, n: int) -> None:
        self.seen[n] = np.union1d(self.seen[n], np.frombuffer(self.pending[n], dtype=np.int64))
        self.pending[n] = array("q")

    def result(self) -> dict:
        for n in (0, 1):
            self._merge(n)
        out = {}
        for n, name in ((0, "distinct_1"), (1, "distinct_2")):
            distinct = int(self.seen[n].size)
            out[name] = distinct / self.totals[n] if self.totals[n] else None
            out[f"{name}_counts"] = [distinct, self.totals[n]]
        return out


class Diversity:
    """distinct-n of captions and of questions, caption openings and question types, record by record."""

    def __init__(self):
        self.captions, self.questions = DistinctNgrams(), DistinctNgrams()
        self.openings: Counter = Counter()
        self.types: Counter = Counter()

    def add(self, record: TextVidRecord) -> None:
        for frame in record.frames:
            for caption in frame.values():
                w = words(caption)
                self.captions.add(w)
                if w:
                    self.openings[" ".join(w[:OPENING_WORDS])] += 1
        for qa in record.qas:
            self.questions.add(words(qa.question))
            self.types[question_type(qa.question)] += 1

    def result(self) -> dict:
        order = [name for name, _ in QUESTION_TYPES] + [OTHER]
        return {
            "captions": self.captions.result(),
            "questions": self.questions.result(),
            "caption_openings": [[text, count] for text, count in
                                 sorted(self.openings.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_OPENINGS]],
            "distinct_caption_openings": len(self.openings),
            "question_types": {name: self.types[name] for name in order if self.types[name]},
        }
