"""The TextVid pre-alignment dataset: one prompt per visit of a Tideo, in the release's task mix.

TextVid task mix (the release's ``textvid.py`` + ``engine.py``, docs/method.md section 5): each
visit of a Tideo draws one random QA pair; with p=0.5 the sample is that QA as multiple choice,
otherwise it fills the "caption" slot: open-ended QA with p=0.5 when the QA has an open answer
(and, as in the release, its correct option mentions neither "both" nor "all"), else the summary.
The release flips the multiple-choice/caption coin once per *step*, so a batch is all one task;
so does ``TopaCollator``, with the coin of the batch's first item.

Answer balancing shuffles the options unless the correct option's text contains "both", "all",
"none" or "and" as substrings (the release's test; "ball" and "hand" count too): those answers
usually refer to other options' positions. Questions get the release's TextVid "?" rule: "?" is
appended unless the question already ends in "?" ("... the task." becomes "... the task.?"), unlike
its evaluation prompts (``question_mark``, ``TopaProcessor.normalize_question``).

Each visit draws its randomness (QA, task, option order, noise) from ``(seed, epoch, index)``:
a sample does not depend on data-loader workers or on when the loader prefetched it, so a run
resumed from a checkpoint sees the same samples as an uninterrupted one. ``set_epoch`` is called
at each epoch start (``topa_plugin.training.train`` registers a callback for it).

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
import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from topa_plugin.training.samples import (
    MULTIPLE_CHOICE,
    OPEN_ENDED,
    SUMMARY,
    DataError,
    _FeatureSource,
    _VisitRandomness,
    balance_options,
    caption_slot_task,
    check_policy,
    length_scan,
    make_sample,
    open_ended_allowed,
    prepare_frames,
    report_overlong,
    truncation_problem,
)

logger = logging.getLogger(__name__)



class TextVidDataset(_VisitRandomness, Dataset):
    """TextVid records + their fused textual frame features -> TOPA training samples."""

    def __init__(self, data_path: str | Path, feature_folder: str | Path, processor, *, max_seq_len: int = 150,
                 answer_balance: bool = True, noise_variance: float = 0.0, seed: int = 0,
                 check_lengths: bool = True, overlong: str = "error", question_mark: str = "always"):
        from topa_plugin.textvid.records import read_textvid

        self.data_path = str(data_path)
        self.records = read_textvid(data_path)  # TextVidError names file, record and field
        self.processor = processor
        self.max_seq_len = max_seq_len
        self.answer_balance = answer_balance
        self.noise_variance = noise_variance
        self.question_mark = question_mark  # the release's TextVid rule by default (see processing.py)
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
            yield q, MULTIPLE_CHOICE, self.processor.encode_multiple_choice(
                qa.question, qa.options, qa.answer_index, self.question_mark)
            if open_ended_allowed(qa.answer_open_ended, qa.answer_text):
                yield q, OPEN_ENDED, self.processor.encode_open_ended(qa.question, qa.answer_open_ended, self.question_mark)

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
            caption = self.processor.encode_open_ended(qa.question, qa.answer_open_ended, self.question_mark)
        else:
            caption = self.processor.encode_summary(record.global_video_caption)
        video = self._video(index, rng)
        where = f"{self._where(index)}: QAs[{qa_index}] as"
        multiple_choice = self.processor.encode_multiple_choice(qa.question, options, answer, self.question_mark)
        sample = make_sample(multiple_choice, video, self.max_seq_len, f"{where} {MULTIPLE_CHOICE}")
        sample["caption"] = make_sample(caption, video, self.max_seq_len, f"{where} {caption_task}")
        sample["task_coin"] = coin
        return sample


# ---------------------------------------------------------------- video QA (finetuning)


# ---------------------------------------------------------------- batching

