"""Training data for TOPA: TextVid pre-alignment, video-QA finetuning, and a dynamic-padding collator.

TextVid task mix (the release's ``textvid.py`` + ``engine.py``, topa-method.md section 5): each
visit of a Tideo draws one random QA pair; with p=0.5 the sample is that QA as multiple choice,
otherwise it fills the "caption" slot: open-ended QA with p=0.5 when the QA has an open answer
(and, as in the release, its correct option mentions neither "both" nor "all"), else the summary.
The release flips the multiple-choice/caption coin once per *step*, so a batch is all one task;
so does ``TopaCollator``, with the coin of the batch's first item.

Answer balancing shuffles the options unless the correct option's text contains "both", "all",
"none" or "and" as substrings (the release's test; "ball" and "hand" count too): those answers
usually refer to other options' positions.

Each visit draws its randomness (QA, task, option order, noise) from ``(seed, epoch, index)``:
a sample does not depend on data-loader workers or on when the loader prefetched it, so a run
resumed from a checkpoint sees the same samples as an uninterrupted one. ``set_epoch`` is called
at each epoch start (``topa_plugin.train`` registers a callback for it).

Unlike the release, nothing is skipped or substituted silently: a bad record, a missing feature
entry or a sample whose answer tokens were truncated away raises an error naming file, record and
field. Answers cut off by ``max_seq_len`` are found before training starts (``check_lengths``): every
prompt a record can produce is encoded once at construction, so a bad record costs seconds, not a
day of training. ``overlong="skip"`` instead leaves those QAs (and records) out of the draw and logs
how many; the per-sample check in ``make_sample`` stays as the backstop (answer balancing can
reorder options, which may change a prompt's length by a token).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .bridge import l2_normalize, noise_injection, sample_frames
from .prompts import IGNORE_INDEX, TopaPrompt
from .rowfiles import read_rows

logger = logging.getLogger(__name__)

MULTIPLE_CHOICE, SUMMARY, OPEN_ENDED = "multiple_choice", "summary", "open_ended"
KEEP_ORDER_WORDS = ("both", "all", "none", "and")
NO_OPEN_ENDED_WORDS = ("both", "all")
LAYOUTS = ("auto", "nextqa", "star", "tvqa", "generic")
OVERLONG_POLICIES = ("error", "skip")
SHOWN_PROBLEMS = 50


class DataError(ValueError):
    """A training record or its features cannot be used; the message names file, record and field."""


def balance_options(options: Sequence[str], answer: int, rng: random.Random) -> tuple[list[str], int]:
    """Shuffle the options (returns new list and answer index) unless the answer text refers to others."""
    options = list(options)
    text = options[answer]
    if any(word in text.lower() for word in KEEP_ORDER_WORDS):
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


class _FeatureSource:
    """Features of one ``topa features`` output folder, with errors that name the record."""

    def __init__(self, folder: str | Path, ids: Sequence[str], data_path: str, id_field: str):
        from .features import FeatureStore

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


class TextVidDataset(_VisitRandomness, Dataset):
    """TextVid records + their fused textual frame features -> TOPA training samples."""

    def __init__(self, data_path: str | Path, feature_folder: str | Path, processor, *, max_seq_len: int = 150,
                 answer_balance: bool = True, noise_variance: float = 0.0, seed: int = 0,
                 check_lengths: bool = True, overlong: str = "error"):
        from .textvid.records import read_textvid

        self.data_path = str(data_path)
        self.records = read_textvid(data_path)  # TextVidError names file, record and field
        self.processor = processor
        self.max_seq_len = max_seq_len
        self.answer_balance = answer_balance
        self.noise_variance = noise_variance
        self.seed, self.epoch = seed, 0
        self.features = _FeatureSource(feature_folder, [r.idx for r in self.records], self.data_path, "idx")
        self.positions: list[int] | None = None  # record positions in the file, once records were left out
        self.usable_qas: dict[int, list[int]] = {}  # dataset index -> QAs to draw from, once some were left out
        if check_lengths:
            self._check_lengths(check_policy(overlong))

    def _prompts(self, record):
        """Every prompt a visit of ``record`` can produce (options in the file's order): (QA index, task, prompt)."""
        yield None, SUMMARY, self.processor.encode_summary(record.global_video_caption)
        for q, qa in enumerate(record.qas):
            yield q, MULTIPLE_CHOICE, self.processor.encode_multiple_choice(qa.question, qa.options, qa.answer_index)
            if open_ended_allowed(qa.answer_open_ended, qa.answer_text):
                yield q, OPEN_ENDED, self.processor.encode_open_ended(qa.question, qa.answer_open_ended)

    def _check_lengths(self, overlong: str) -> None:
        """Encode every prompt once, before any model loads; report all whose answer ``max_seq_len`` cuts off."""
        problems, kept, positions, usable_qas, skipped_qas = [], [], [], {}, 0
        for index, record in enumerate(length_scan(self.records, f"checking prompt lengths in {self.data_path}")):
            bad_qas, summary_ok = set(), True
            for q, task, prompt in self._prompts(record):
                problem = truncation_problem(prompt, self.max_seq_len)
                if problem:
                    field = "global_video_caption" if q is None else f"QAs[{q}]"
                    problems.append(f"{self._where(index)}: {field} as {task}: {problem}")
                    summary_ok = summary_ok and q is not None
                    bad_qas.add(q)
            good_qas = [q for q in range(len(record.qas)) if q not in bad_qas]
            skipped_qas += len(record.qas) - len(good_qas)
            if summary_ok and good_qas:
                if bad_qas:
                    usable_qas[len(kept)] = good_qas
                kept.append(record)
                positions.append(index)
        dropped = len(self.records) - len(kept)
        report_overlong(problems, overlong, self.max_seq_len,
                        f"{skipped_qas} QA(s) and {dropped} record(s) (no usable QA or summary left) of {self.data_path}")
        if problems:
            self.records, self.positions, self.usable_qas = kept, positions, usable_qas
            if not kept:
                raise DataError(f"{self.data_path}: --overlong skip left no record at max_seq_len={self.max_seq_len}")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def feature_dim(self) -> int:
        return self.features.dim

    def _where(self, index: int) -> str:
        position = index if self.positions is None else self.positions[index]
        return f"{self.data_path}: record {position} (id {self.records[index].idx!r})"

    def _video(self, index: int, rng: random.Random) -> torch.Tensor:
        record = self.records[index]
        features = self.features.get(record.idx)
        if features.ndim != 2 or features.shape[0] != len(record.frames):
            raise DataError(f"{self._where(index)}: frames: {len(record.frames)} frames but features in "
                            f"{self.features.folder} have shape {tuple(features.shape)} (expected [n_frames, D])")
        noise = torch.Generator().manual_seed(rng.getrandbits(63)) if self.noise_variance else None
        return prepare_frames(features, self.processor.max_feats, self.noise_variance, noise)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Both of the release's candidate samples for this visit, and the visit's coin.

        The release flips one coin per training step: the whole batch is multiple-choice QA
        (p=0.5) or the caption slot. Deciding per sample would let the long summaries dominate
        every batch's mean loss; so the item is the multiple-choice sample, with the caption-slot
        sample under ``"caption"`` and the coin under ``"task_coin"``, and ``TopaCollator``
        applies the first item's coin to its whole batch.
        """
        record = self.records[index]
        rng = self.visit_rng(index)
        usable = self.usable_qas.get(index)
        qa_index = rng.randrange(len(record.qas)) if usable is None else usable[rng.randrange(len(usable))]
        qa = record.qas[qa_index]
        coin = rng.random() < 0.5
        options, answer = qa.options, qa.answer_index
        if self.answer_balance:
            options, answer = balance_options(options, answer, rng)
        caption_task = caption_slot_task(qa.answer_open_ended, qa.answer_text, rng)
        if caption_task == OPEN_ENDED:
            caption = self.processor.encode_open_ended(qa.question, qa.answer_open_ended)
        else:
            caption = self.processor.encode_summary(record.global_video_caption)
        video = self._video(index, rng)
        where = f"{self._where(index)}: QAs[{qa_index}] as"
        sample = make_sample(self.processor.encode_multiple_choice(qa.question, options, answer), video,
                             self.max_seq_len, f"{where} {MULTIPLE_CHOICE}")
        sample["caption"] = make_sample(caption, video, self.max_seq_len, f"{where} {caption_task}")
        sample["task_coin"] = coin
        return sample


# ---------------------------------------------------------------- video QA (finetuning)

@dataclass
class VideoQAItem:
    """One multiple-choice question about a video; ``start``/``end`` in seconds when the layout has them."""

    video_id: str
    question: str
    options: list[str]
    answer: int
    start: float | None = None
    end: float | None = None


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .csv, .jsonl or .json (list) file."""
    return read_rows(path, DataError, (".csv", ".jsonl", ".json"))


def detect_layout(row: dict[str, Any]) -> str:
    """Column layout from the keys of the first row."""
    if "choices" in row:
        return "star"
    if "q" in row and "answer_idx" in row:
        return "tvqa"
    if "a0" in row:
        return "nextqa"
    if "options" in row:
        return "generic"
    raise DataError(f"cannot tell the column layout from keys {sorted(row)}: expected NExT-QA (a0..a4, answer), "
                    "STAR (choices), TVQA (q, a0..a4, answer_idx) or generic (question, options, answer)")


def _field(row: dict[str, Any], key: str) -> Any:
    if key not in row or row[key] in (None, ""):
        raise KeyError(key)
    return row[key]


def _text(row: dict[str, Any], key: str) -> str:
    value = _field(row, key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}: expected non-empty text, got {value!r}")
    return value


def _index(value: Any, n: int, key: str) -> int:
    if isinstance(value, str) and len(value) == 1 and value.isalpha():
        index = ord(value.upper()) - ord("A")
    else:
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected an option index or letter, got {value!r}") from None
    if not 0 <= index < n:
        raise ValueError(f"{key}: answer {value!r} out of range for {n} options")
    return index


def _seconds(row: dict[str, Any], key: str) -> float | None:
    """A time in seconds; NaN (TVQA's unknown segments) means the whole video."""
    value = _field(row, key)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected seconds, got {value!r}") from None
    return None if math.isnan(seconds) else seconds


def _segment(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """Both ends known, or neither (whole video)."""
    return (start, end) if start is not None and end is not None else (None, None)


def _lettered_options(row: dict[str, Any]) -> list[str]:
    n = 0
    while f"a{n}" in row:
        n += 1
    return [_text(row, f"a{i}") for i in range(n)]


def _parse_row(row: dict[str, Any], layout: str) -> VideoQAItem:
    if layout == "nextqa":
        options = _lettered_options(row)
        return VideoQAItem(str(_field(row, "video")), _text(row, "question"), options,
                           _index(_field(row, "answer"), len(options), "answer"))
    if layout == "tvqa":
        options = _lettered_options(row)
        ts = str(_field(row, "ts")).split("-")
        if len(ts) != 2:
            raise ValueError(f"ts: expected 'start-end' seconds, got {row['ts']!r}")
        start, end = (_seconds({"ts": part}, "ts") for part in ts)
        return VideoQAItem(str(_field(row, "vid_name")), _text(row, "q"), options,
                           _index(_field(row, "answer_idx"), len(options), "answer_idx"), *_segment(start, end))
    if layout == "star":
        choices = _field(row, "choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) and "choice" in c for c in choices):
            raise ValueError("choices: expected a list of {choice_id, choice}")
        ordered = sorted(choices, key=lambda c: int(c.get("choice_id", 0)))
        options = [c["choice"] for c in ordered]
        answer_text = _text(row, "answer")
        if answer_text not in options:
            raise ValueError(f"answer: {answer_text!r} is not one of the choices")
        return VideoQAItem(str(_field(row, "video_id")), _text(row, "question"), options, options.index(answer_text),
                           *_segment(_seconds(row, "start"), _seconds(row, "end")))
    options = _field(row, "options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o.strip() for o in options):
        raise ValueError("options: expected a non-empty list of non-empty strings")
    video = row.get("video_id", row.get("video"))
    if video in (None, ""):
        raise KeyError("video_id")
    return VideoQAItem(str(video), _text(row, "question"), list(options), _index(_field(row, "answer"), len(options), "answer"))


def read_video_qa(path: str | Path, layout: str = "auto") -> list[VideoQAItem]:
    """Parse every row; raises DataError listing each bad row with its field."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise DataError(f"{path}: unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no records")
    if layout == "auto":
        try:
            layout = detect_layout(rows[0])
        except DataError as e:
            raise DataError(f"{path}: record 0: {e}") from None
    items, problems = [], []
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"expected an object, got {type(row).__name__}")
            items.append(_parse_row(row, layout))
        except KeyError as e:
            problems.append(f"{path}: record {i}: {e.args[0]}: missing ({layout} layout)")
        except ValueError as e:
            problems.append(f"{path}: record {i}: {e}")
    if problems:
        raise DataError(f"{len(problems)} bad video-QA record(s):\n" + "\n".join(problems[:50]))
    return items


class VideoQADataset(_VisitRandomness, Dataset):
    """Multiple-choice video QA on real-video CLIP features (``topa features videos`` output).

    STAR and TVQA name a time segment; with ``feature_fps`` set, rows
    ``[round(start) * fps, (round(end) + 1) * fps)`` of the video's features are used (the release's
    slicing), otherwise the whole video's features, which a notice says once.
    """

    def __init__(self, data_path: str | Path, feature_folder: str | Path, processor, *, layout: str = "auto",
                 max_seq_len: int = 128, answer_balance: bool = False, feature_fps: float | None = None,
                 seed: int = 0, check_lengths: bool = True, overlong: str = "error"):
        self.data_path = str(data_path)
        self.items = read_video_qa(data_path, layout)
        self.processor = processor
        self.max_seq_len = max_seq_len
        self.answer_balance = answer_balance
        self.feature_fps = feature_fps
        self.seed, self.epoch = seed, 0
        self.features = _FeatureSource(feature_folder, [it.video_id for it in self.items], self.data_path, "video")
        if feature_fps is None and any(it.start is not None for it in self.items):
            logger.warning("%s has time segments but no feature_fps was given: using whole-video features", data_path)
        self.positions: list[int] | None = None  # row positions in the file, once rows were left out
        if check_lengths:
            self._check_lengths(check_policy(overlong))

    def _check_lengths(self, overlong: str) -> None:
        """Encode every question once (options in the file's order); report all whose answer gets cut off."""
        problems, kept = [], []
        for index, item in enumerate(length_scan(self.items, f"checking prompt lengths in {self.data_path}")):
            problem = truncation_problem(
                self.processor.encode_multiple_choice(item.question, item.options, item.answer), self.max_seq_len)
            if problem:
                problems.append(f"{self._where(index)}: question as {MULTIPLE_CHOICE}: {problem}")
            else:
                kept.append(index)
        report_overlong(problems, overlong, self.max_seq_len, f"{len(problems)} row(s) of {self.data_path}")
        if problems:
            self.items, self.positions = [self.items[i] for i in kept], kept
            if not kept:
                raise DataError(f"{self.data_path}: --overlong skip left no row at max_seq_len={self.max_seq_len}")

    def _where(self, index: int) -> str:
        position = index if self.positions is None else self.positions[index]
        return f"{self.data_path}: record {position} (video {self.items[index].video_id!r})"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def feature_dim(self) -> int:
        return self.features.dim

    def _video(self, index: int) -> torch.Tensor:
        item = self.items[index]
        features = self.features.get(item.video_id)
        if self.feature_fps is not None and item.start is not None:
            first = int(round(item.start) * self.feature_fps)
            last = int((round(item.end) + 1) * self.feature_fps)
            features = features[first:last]
            if features.shape[0] == 0:
                raise DataError(f"{self._where(index)}: start/end: segment "
                                f"{item.start}-{item.end}s is outside the video's features at {self.feature_fps} fps")
        return prepare_frames(features, self.processor.max_feats)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        options, answer = item.options, item.answer
        if self.answer_balance:
            options, answer = balance_options(options, answer, self.visit_rng(index))
        prompt = self.processor.encode_multiple_choice(item.question, options, answer)
        return make_sample(prompt, self._video(index), self.max_seq_len, self._where(index))


# ---------------------------------------------------------------- batching

@dataclass
class TopaCollator:
    """Right-pads each batch to its own longest sample; never to a fixed length.

    TextVid items carry two candidate samples; the first item's ``task_coin`` picks which one
    the whole batch uses (see ``TextVidDataset.__getitem__``).

    Returns the model's inputs: ``input_ids``/``attention_mask``/``labels`` [B, L],
    ``video_features`` [B, max_feats, F] and ``video_start`` LongTensor [B] (may differ per sample).
    """

    pad_token_id: int = 0

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "task_coin" in samples[0]:  # TextVid: one task for the whole batch, as the release's step
            samples = samples if samples[0]["task_coin"] else [s["caption"] for s in samples]
        longest = max(len(s["input_ids"]) for s in samples)
        batch = len(samples)
        input_ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "video_features": torch.stack([s["video_features"] for s in samples]),
            "video_start": torch.tensor([int(s["video_start"]) for s in samples], dtype=torch.long),
        }
