"""The video-QA finetuning dataset (NExT-QA, STAR, TVQA and a generic layout) over real-video features."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from topa_plugin.training.samples import (
    MULTIPLE_CHOICE,
    DataError,
    _FeatureSource,
    _VisitRandomness,
    balance_options,
    check_policy,
    length_scan,
    make_sample,
    prepare_frames,
    report_overlong,
    truncation_problem,
)
from topa_plugin.utils.rowfiles import read_rows

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "nextqa", "star", "tvqa", "generic")


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
