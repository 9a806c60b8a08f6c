"""Answer-letter balancing: which QAs may have their options reordered, and reordering a file's QAs so the
answer letters come out uniform.

The release balances answers at training time and keeps the option order when the correct option's text
contains "both", "all", "none" or "and" as a substring ("ball" and "hand" count too): such answers usually
refer to other options by position ("both A and B", "all of the above"). Training
(``topa_plugin.training.samples.balance_options``) and ``topa textvid balance`` follow that one rule.

``balance_file`` streams a file: each QA that may move gets the letter used least so far (over every QA
written, fixed ones included; ties broken by a seeded draw), its distractors shuffled by the same seeded
generator. So the letters end within one of each other when enough QAs may move, the answer field always
names the same text, and the same file and seed give the same bytes.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from topa_plugin.textvid.reader import iter_valid
from topa_plugin.textvid.records import LETTERS, Problem
from topa_plugin.textvid.writer import RecordWriter

KEEP_ORDER_WORDS = ("both", "all", "none", "and")
DEFAULT_SEED = 0


def keeps_order(answer_text: str) -> bool:
    """True when the release keeps this QA's option order (its answer may refer to other options)."""
    text = answer_text.lower()
    return any(word in text for word in KEEP_ORDER_WORDS)


def place_answer(options: list[str], answer: int, target: int, rng: random.Random) -> list[str]:
    """The options with the answer moved to ``target`` and the distractors in a random order around it."""
    distractors = options[:answer] + options[answer + 1:]
    rng.shuffle(distractors)
    return distractors[:target] + [options[answer]] + distractors[target:]


class Balancer:
    """Reorders QA dicts (release schema) one at a time, keeping count of the letters handed out."""

    def __init__(self, seed: int = DEFAULT_SEED):
        self.rng = random.Random(seed)
        self.letters: Counter = Counter({letter: 0 for letter in LETTERS})
        self.kept = 0

    def qa(self, qa: dict) -> dict:
        answer = LETTERS.index(qa["answer"])
        if keeps_order(qa["options"][answer]):
            self.kept += 1
            self.letters[qa["answer"]] += 1
            return qa
        fewest = min(self.letters.values())
        target = LETTERS.index(self.rng.choice([letter for letter in LETTERS if self.letters[letter] == fewest]))
        self.letters[LETTERS[target]] += 1
        return {**qa, "options": place_answer(list(qa["options"]), answer, target, self.rng),
                "answer": LETTERS[target]}


def balance_file(path: str | os.PathLike, out: str | os.PathLike, seed: int = DEFAULT_SEED,
                 skip_invalid: bool = False, skipped: list[Problem] | None = None) -> Balancer:
    """Write ``path``'s records to ``out`` (``.jsonl`` or ``.json``) with balanced answer letters.

    Raises:
        TextVidError: ``path`` cannot be read, or (without ``skip_invalid``) its first invalid record.
    """
    balancer = Balancer(seed)
    with RecordWriter(Path(out)) as writer:
        for item, _ in iter_valid(path, skip_invalid, f"balance {Path(path).name}", skipped):
            writer.write({**item.value, "QAs": [balancer.qa(qa) for qa in item.value["QAs"]]})
    return balancer
