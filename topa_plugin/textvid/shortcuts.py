"""Answer shortcuts: how often a rule that never looks at the video picks the correct option, against chance.

Each rule scores the five options and picks those with the top score (several when they tie). A QA is a hit
when the correct option is among them; the rule's **rate** is the share of hits. Ties make chance differ per
QA: when k options tie for the top score, an answer placed at random among the five is among them with
probability k/5. So **chance** is the mean of k/5 over the QAs (0.2 only when no rule ever ties), and hits are
a sum of independent Bernoulli(k_i/5) under the hypothesis "the answer's place is unrelated to the rule"
(a Poisson-binomial count).

Two intervals, both at 95%:

- ``low``..``high``: the Wilson score interval of the rate (the binomial proportion's interval that stays
  inside [0, 1] and keeps its coverage for small counts and rates near 0 or 1). With per-QA success
  probabilities that differ, the true variance of the count is at most the binomial one, so the interval
  is conservative.
- ``chance_low``..``chance_high``: where the rate falls 95% of the time when there is no shortcut: chance
  +- 1.96 sd, with the Poisson-binomial sd sqrt(sum k_i/5 (1 - k_i/5)) / n (normal approximation).

A rule is flagged ``above`` (a shortcut: the data teaches it) or ``below`` (an anti-shortcut, also
learnable) when its rate lies outside the chance band, i.e. |z| > 1.96 with
z = (hits - sum p_i) / sqrt(sum p_i (1 - p_i)); ``None`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from topa_plugin.textvid.records import NUM_OPTIONS, QA, TextVidRecord
from topa_plugin.textvid.words import content_words, words

Z95 = 1.959963984540054


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``hits / n``."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def top(scores: Sequence[float]) -> list[int]:
    """Indices of the options holding the highest score (all of the ties)."""
    best = max(scores)
    return [i for i, s in enumerate(scores) if s == best]


def longest_option(qa: QA, captions: set[str]) -> list[int]:
    """Option length in words."""
    return [len(words(option)) for option in qa.options]


def question_overlap(qa: QA, captions: set[str]) -> list[int]:
    """Content words an option shares with its question."""
    question = content_words(qa.question)
    return [len(content_words(option) & question) for option in qa.options]


def caption_overlap(qa: QA, captions: set[str]) -> list[int]:
    """Content words an option shares with the Tideo's frame captions (what the model sees as frames)."""
    return [len(content_words(option) & captions) for option in qa.options]


def caption_vocabulary(record: TextVidRecord) -> set[str]:
    """The content words of a Tideo's frame captions."""
    return {w for frame in record.frames for caption in frame.values() for w in content_words(caption)}


# Each shortcut: the name the report and --json use, the option score it maximises (from the QA and the
# Tideo's caption vocabulary), and what a hit means.
RULES: dict[str, Callable[[QA, set[str]], list[int]]] = {
    "longest_option": longest_option,
    "question_overlap": question_overlap,
    "caption_overlap": caption_overlap,
}
DESCRIPTIONS = {
    "longest_option": "the longest option (in words) is the answer",
    "question_overlap": "the option sharing most content words with the question is the answer",
    "caption_overlap": "the option sharing most content words with the Tideo's frame captions is the answer",
}


@dataclass
class ShortcutCount:
    """Hits of one rule and the sums that give its chance and the chance band."""

    n: int = 0
    hits: int = 0
    chance_sum: float = 0.0
    variance_sum: float = 0.0

    def add(self, scores: Sequence[float], answer: int) -> bool:
        """Count one QA; True when the rule picks the answer (among ties)."""
        picked = top(scores)
        p = len(picked) / NUM_OPTIONS
        hit = answer in picked
        self.n += 1
        self.hits += hit
        self.chance_sum += p
        self.variance_sum += p * (1 - p)
        return hit

    def result(self) -> dict:
        if not self.n:
            return {"rate": None, "chance": None, "low": None, "high": None, "chance_low": None,
                    "chance_high": None, "hits": 0, "qas": 0, "z": None, "flag": None}
        rate, chance = self.hits / self.n, self.chance_sum / self.n
        low, high = wilson_interval(self.hits, self.n)
        sd = math.sqrt(self.variance_sum)
        z = (self.hits - self.chance_sum) / sd if sd > 0 else 0.0
        band = Z95 * sd / self.n
        flag = "above" if z > Z95 else "below" if z < -Z95 else None
        return {"rate": rate, "chance": chance, "low": low, "high": high, "chance_low": max(0.0, chance - band),
                "chance_high": min(1.0, chance + band), "hits": self.hits, "qas": self.n, "z": z, "flag": flag}


class Shortcuts:
    """Every rule's counts over records added one by one."""

    def __init__(self):
        self.counts = {name: ShortcutCount() for name in RULES}

    def add(self, record: TextVidRecord) -> None:
        captions = caption_vocabulary(record)
        for qa in record.qas:
            for name, rule in RULES.items():
                self.counts[name].add(rule(qa, captions), qa.answer_index)

    def result(self) -> dict[str, dict]:
        return {name: count.result() for name, count in self.counts.items()}
