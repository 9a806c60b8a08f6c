"""Per-sample rules shared by the training datasets: the release's task coin and answer balancing,
feature preparation, visit-keyed randomness, and the max_seq_len checks that run before training."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from topa_plugin.features.transforms import l2_normalize, noise_injection, sample_frames
from topa_plugin.processing import IGNORE_INDEX, PromptTemplate, TopaPrompt
from topa_plugin.textvid.balance import keeps_order
from topa_plugin.utils.errors import TopaInputError

logger = logging.getLogger(__name__)

MULTIPLE_CHOICE, SUMMARY, OPEN_ENDED = "multiple_choice", "summary", "open_ended"

NO_OPEN_ENDED_WORDS = ("both", "all")


OVERLONG_POLICIES = ("error", "skip")


SHOWN_PROBLEMS = 50


class DataError(TopaInputError, ValueError):
    """A training record or its features cannot be used; the message names file, record and field."""


def balance_options(options: Sequence[str], answer: int, rng: random.Random) -> tuple[list[str], int]:
    """Shuffle the options (returns new list and answer index) unless the answer text refers to others."""
    options = list(options)
    text = options[answer]
    if keeps_order(text):
        return options, answer
    rng.shuffle(options)
    return options, options.index(text)


def open_ended_allowed(open_answer: str | None, answer_text: str) -> bool:
    """The release trains open-ended QA only when there is an open answer and the option says neither "both" nor "all"."""
    return open_answer is not None and not any(w in answer_text.lower() for w in NO_OPEN_ENDED_WORDS)


def caption_slot_task(open_answer: str | None, answer_text: str, rng: random.Random) -> str:
    """The release's "caption" slot: open-ended QA with p=0.5 when allowed, else the summary."""
    if open_ended_allowed(open_answer, answer_text) and rng.random() < 0.5:
        return OPEN_ENDED
    return SUMMARY


def prepare_frames(features: torch.Tensor, max_feats: int, noise_variance: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """[T, F] frame features -> [max_feats, F] float32: normalise, optional noise, release sampling."""
    frames = l2_normalize(features.float())
    frames = noise_injection(frames, noise_variance, generator)
    return sample_frames(frames, max_feats)


class _VisitRandomness:
    """Per-visit random streams seeded by ``(seed, epoch, index)``."""

    seed: int
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def visit_rng(self, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{index}")


def truncation_problem(prompt: TopaPrompt, max_seq_len: int) -> str | None:
    """Why truncating ``prompt`` to ``max_seq_len`` leaves no supervised token, or None when some remain."""
    first = next((i for i, label in enumerate(prompt.labels) if label != IGNORE_INDEX), None)
    if first is None:
        return "no supervised token (the prompt has no answer tokens)"
    if first >= max_seq_len:
        return (f"no supervised token left after truncation to max_seq_len={max_seq_len} (the answer starts at "
                f"token {first} of {len(prompt.input_ids)}, raise --max_seq_len or use --overlong skip)")
    return None


def make_sample(prompt: TopaPrompt, video: torch.Tensor, max_seq_len: int, where: str) -> dict[str, Any]:
    """Truncate to ``max_seq_len`` like the release and insist on at least one supervised token."""
    problem = truncation_problem(prompt, max_seq_len)
    if problem:
        raise DataError(f"{where}: {problem}")
    return {
        "input_ids": torch.tensor(prompt.input_ids[:max_seq_len], dtype=torch.long),
        "labels": torch.tensor(prompt.labels[:max_seq_len], dtype=torch.long),
        "video_features": video,
        "video_start": prompt.video_start,
    }


def check_policy(overlong: str) -> str:
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong={overlong!r}: expected one of {', '.join(OVERLONG_POLICIES)}")
    return overlong


def report_overlong(problems: Sequence[str], overlong: str, max_seq_len: int, what: str) -> None:
    """Raise (``error``) or log (``skip``) every prompt whose answer ``max_seq_len`` cuts off; never silent."""
    if not problems:
        return
    listing = "\n".join(problems[:SHOWN_PROBLEMS])
    if len(problems) > SHOWN_PROBLEMS:
        listing += f"\n... and {len(problems) - SHOWN_PROBLEMS} more"
    if overlong == "error":
        raise DataError(f"{len(problems)} prompt(s) lose their whole answer at max_seq_len={max_seq_len} (raise "
                        f"--max_seq_len, or --overlong skip to leave them out):\n{listing}")
    logger.warning("--overlong skip: leaving out %s; %d prompt(s) lose their whole answer at max_seq_len=%d:\n%s",
                   what, len(problems), max_seq_len, listing)


def length_scan(items: Sequence[Any], desc: str):
    """Progress over a construction-time length check (shown only when it takes noticeable time)."""
    return tqdm(items, desc=desc, unit="rec", disable=len(items) < 20000, mininterval=5)


def truncation_problems(processor, templates: Sequence[PromptTemplate], max_seq_len: int) -> list[str | None]:
    """``truncation_problem`` of each template's prompt, with one batched tokenizer call for all.

    A prompt's first supervised token lies at most at the context length plus the token count of
    the text before its answer; only prompts whose bound reaches ``max_seq_len`` are encoded in
    full, so the answer is exact and costs one tokenizer pass over the question texts."""
    befores = list({t.rest[:t.answer_char] for t in templates if t.answer_char is not None})
    tokens = dict(zip(befores, processor.count_tokens(befores)))
    return [None if t.answer_char is not None
            and processor.context_length(t.instruction) + tokens[t.rest[:t.answer_char]] < max_seq_len
            else truncation_problem(processor.build(t), max_seq_len) for t in templates]


class _FeatureSource:
    """Features of one ``topa features`` output folder, with errors that name the record."""

    def __init__(self, folder: str | Path, ids: Sequence[str], data_path: str, id_field: str):
        from topa_plugin.features.store import FeatureStore

        self.folder = str(folder)
        self.store = FeatureStore(folder)
        missing = [(i, vid) for i, vid in enumerate(ids) if vid not in self.store]
        if missing:
            shown = "; ".join(f"record {i} ({id_field} {vid!r})" for i, vid in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(f"{data_path}: {len(missing)} record(s) have no features in {self.folder}: "
                            f"{shown}{more}: {id_field}: not in the feature index")

    def get(self, key: str) -> torch.Tensor:
        return self.store.get(key)

    @property
    def dim(self) -> int:
        return int(self.store.dim)
