"""Synthetic TextVid files with known defects, for the quality report, dedup and balance tests.

Words are made-up tokens, so overlaps happen only where a generator puts them and every planted figure is
known exactly: a clean file (every option drawn from one distribution, answers at random letters), a file whose
longest option is always the answer, one whose answers lean to a letter, and Tideos whose near-duplicates
share a known share of caption bigrams."""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = "ABCDE"
VOCABULARY = [f"w{n}" for n in range(4000)]


def _phrase(rng: random.Random, n: int, pool=VOCABULARY) -> str:
    return " ".join(rng.choice(pool) for _ in range(n))


def clean_record(i: int, rng: random.Random, qas: int = 2) -> dict:
    """Captions, questions and options from one vocabulary; each option of a QA drawn alike (length 2-7,
    words from the captions with probability 0.3), the answer at a random letter: no rule can beat chance."""
    frames = [{"frame_caption": _phrase(rng, 8), "object_1": _phrase(rng, 4)} for _ in range(6)]
    caption_words = [w for frame in frames for caption in frame.values() for w in caption.split()]

    def option() -> str:
        return " ".join(rng.choice(caption_words) if rng.random() < 0.3 else rng.choice(VOCABULARY)
                        for _ in range(rng.randint(2, 7)))

    return {"idx": f"clean_{i:05d}", "frames": frames, "global_video_caption": _phrase(rng, 20),
            "QAs": [{"question": "what " + _phrase(rng, 6), "options": [option() for _ in range(5)],
                     "answer": rng.choice(LETTERS)} for _ in range(qas)]}


def longest_is_answer(record: dict, rng: random.Random) -> dict:
    """The record with options of made-up words shared with nothing, the answer strictly the longest."""
    qas = []
    for qa in record["QAs"]:
        lengths = [rng.randint(2, 6) for _ in range(5)]
        answer = LETTERS.index(qa["answer"])
        lengths[answer] = max(lengths) + rng.randint(1, 3)
        qas.append({**qa, "options": [" ".join(f"z{rng.randrange(10**6)}" for _ in range(n)) for n in lengths]})
    return {**record, "QAs": qas}


def unique_record(i: int, captions: int = 10, words: int = 10) -> dict:
    """A Tideo whose caption words are all its own (``u<i>k<k>``): 90 distinct bigrams shared with no other."""
    tokens = iter(f"u{i}k{k}" for k in range(captions * words))
    frames = [{"frame_caption": " ".join(next(tokens) for _ in range(words))} for _ in range(captions)]
    options = [f"option {j} of tideo {i}" for j in range(5)]
    return {"idx": f"tideo_{i:05d}", "frames": frames, "global_video_caption": f"summary of tideo {i}",
            "QAs": [{"question": f"what happens in tideo {i}?", "options": options, "answer": "C"}]}


def near_copy(record: dict, idx: str, changed: int = 0, replaced: int = 0) -> dict:
    """``record`` (from ``unique_record``: 10 captions, 90 bigrams) with the last word of ``changed`` captions
    replaced (one bigram each) and ``replaced`` other captions rewritten whole (nine bigrams each): the copy
    shares 90 - d bigrams of 90 + d, d = changed + 9 replaced (``planted_similarity``)."""
    frames = [dict(frame) for frame in record["frames"]]
    tag = idx.replace("_", "")  # one word: an underscore splits words
    for k in range(changed):
        words = frames[k]["frame_caption"].split()
        frames[k]["frame_caption"] = " ".join(words[:-1] + [f"{tag}new{k}"])
    for k in range(changed, changed + replaced):
        frames[k]["frame_caption"] = " ".join(f"{tag}new{k}w{j}" for j in range(10))
    return {**record, "idx": idx, "frames": frames}


def planted_similarity(changed: int = 0, replaced: int = 0, bigrams: int = 90) -> float:
    d = changed + 9 * replaced
    return (bigrams - d) / (bigrams + d)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json_list(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path
