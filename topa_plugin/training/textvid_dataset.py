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
field; ``skip_invalid`` instead leaves such records out and lists each, with why, in a rejects file.
Answers cut off by ``max_seq_len`` are found before training starts (``check_lengths``): every
prompt a record can produce is checked at construction (one batched tokenizer pass, see
``truncation_problems``), so a bad record costs seconds, not a day of training. ``overlong="skip"``
instead leaves those QAs (and records) out of the draw and logs how many; the per-sample check in
``make_sample`` stays as the backstop (answer balancing can reorder options, which may change a
prompt's length by a token).

The file is read once as a stream at construction; the dataset keeps each usable record's byte
span and reads the record again when it is visited, so memory does not grow with the file's text.
With ``scan_cache`` the outcome of that pass is kept, keyed by content (``scan_cache.py``): a
restart on the same file, features, tokenizer and settings reads no record.
"""

from __future__ import annotations

import json
import logging
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from topa_plugin.features.store import INDEX
from topa_plugin.features.writer import rejects_path
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
    make_sample,
    open_ended_allowed,
    prepare_frames,
    report_overlong,
    truncation_problems,
)
from topa_plugin.training.scan_cache import load_scan, save_scan, scan_key

logger = logging.getLogger(__name__)
# Records whose prompts are length-checked together (one batched tokenizer call).
SCAN_BATCH = 2048


@dataclass
class _Kept:
    """The usable records: where each is in the file, and the QAs to draw from where some were left out."""

    positions: list[int] = field(default_factory=list)
    offsets: array = field(default_factory=lambda: array("q"))  # compact: 721k records
    sizes: array = field(default_factory=lambda: array("q"))
    ids: list[str] = field(default_factory=list)
    usable_qas: dict[int, list[int]] = field(default_factory=dict)

    def add(self, item, record, usable: list[int] | None) -> None:
        if usable is not None:
            self.usable_qas[len(self.ids)] = usable
        self.positions.append(item.index)
        self.offsets.append(item.offset)
        self.sizes.append(item.size)
        self.ids.append(record.idx)

    def to_json(self) -> dict:
        return {"positions": self.positions, "offsets": self.offsets.tolist(), "sizes": self.sizes.tolist(),
                "ids": self.ids, "usable_qas": self.usable_qas}

    @classmethod
    def from_json(cls, d: dict) -> _Kept:
        return cls(d["positions"], array("q", d["offsets"]), array("q", d["sizes"]), d["ids"],
                   {int(k): v for k, v in d["usable_qas"].items()})


class TextVidDataset(_VisitRandomness, Dataset):
    """TextVid records + their fused textual frame features -> TOPA training samples."""

    def __init__(self, data_path: str | Path, feature_folder: str | Path, processor, *, max_seq_len: int = 150,
                 answer_balance: bool = True, noise_variance: float = 0.0, seed: int = 0,
                 check_lengths: bool = True, overlong: str = "error", question_mark: str = "always",
                 skip_invalid: bool = False, rejects: str | Path | None = None, scan_cache: str | Path | None = None,
                 main_process: bool = True):
        self.data_path = str(data_path)
        self.processor = processor
        self.max_seq_len = max_seq_len
        self.answer_balance = answer_balance
        self.noise_variance = noise_variance
        self.question_mark = question_mark  # the release's TextVid rule by default (see processing.py)
        self.seed, self.epoch = seed, 0
        self.features = _FeatureSource(feature_folder, [], self.data_path, "idx")
        self.check_lengths, self.overlong = check_lengths, check_policy(overlong)
        self.scan_cache = Path(scan_cache) if scan_cache else None
        self.main_process = main_process  # the one writer of the rejects and cache files (global rank 0)
        self.kept = _Kept()
        key = self._scan_key(skip_invalid)
        cached = load_scan(self.scan_cache, key) if key else None
        if cached is None:
            rejected, length = self._scan(skip_invalid)
        else:
            self.kept, rejected, length = _Kept.from_json(cached["kept"]), cached["rejected"], cached["length"]
        self._report(rejected, rejects, length)
        if key and cached is None and self.main_process:
            save_scan(self.scan_cache, key, {"kept": self.kept.to_json(), "rejected": rejected, "length": length})

    # ------------------------------------------------------------ construction

    def _scan_key(self, skip_invalid: bool) -> str | None:
        """The start-up scan's cache key (None: no cache)."""
        if not self.scan_cache:
            return None
        settings = {"max_seq_len": self.max_seq_len, "question_mark": self.question_mark, "check_lengths":
                    self.check_lengths, "overlong": self.overlong, "skip_invalid": skip_invalid,
                    "data_path": self.data_path}  # the cached messages name the file
        return scan_key(self.data_path, self.features.store.directory / INDEX, self.processor, settings)

    def _feature_problem(self, record) -> str | None:
        """Why the store cannot serve this record (missing, or another frame count), or None."""
        store = self.features.store
        if record.idx not in store:
            return f"idx: not in the feature index of {self.features.folder}"
        n = store.n_frames[store.position(record.idx)]
        if n != len(record.frames):
            return f"frames: {len(record.frames)} frames but {n} feature rows in {self.features.folder}"
        return None

    def _scan(self, skip_invalid: bool) -> tuple[list[dict], dict]:
        """One streamed pass: schema, features and (batched) prompt lengths of every record; fills
        ``kept`` and returns (records left out, the length check's findings)."""
        from topa_plugin.textvid.reader import record_of, scan_textvid
        from topa_plugin.textvid.records import TextVidError

        schema, unusable, rejected, pending = [], [], [], []
        length = {"problems": [], "qas": 0, "records": 0}
        for item, problems in scan_textvid(self.data_path, desc=f"reading {Path(self.data_path).name}"):
            if item is None:
                raise TextVidError(problems)
            record = None if problems else record_of(item)
            reasons = [str(p) for p in problems] or [p for p in [self._feature_problem(record)] if p]
            if reasons:
                schema += problems
                unusable += [] if problems else [f"{self._at(item.index, record.idx)}: {r}" for r in reasons]
                rejected.append({"source": self.data_path, "record": item.index, "line": item.line,
                                 "id": problems[0].id if problems else record.idx, "problems": reasons})
                continue
            pending.append((item, record))
            if len(pending) == SCAN_BATCH:
                self._keep(pending, length)
                pending = []
        self._keep(pending, length)
        if not skip_invalid:
            self._refuse(schema, unusable)
        return rejected, length

    def _refuse(self, schema: list, unusable: list[str]) -> None:
        """Without ``skip_invalid``: every invalid record (TextVidError) or record without usable features."""
        from topa_plugin.textvid.records import TextVidError

        if schema:
            raise TextVidError(schema)
        if unusable:
            shown = "\n".join(unusable[:50]) + (f"\n... and {len(unusable) - 50} more" if len(unusable) > 50 else "")
            raise DataError(f"{self.data_path}: {len(unusable)} record(s) without usable features in "
                            f"{self.features.folder} (--skip-invalid leaves them out):\n{shown}")

    def _report(self, rejected: list[dict], rejects, length: dict) -> None:
        """Write the rejects file, then report (or refuse) prompts cut off by ``max_seq_len``."""
        if rejected:
            path = Path(rejects) if rejects else rejects_path(self.data_path)
            if self.main_process:
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected), encoding="utf-8")
            logger.warning("--skip-invalid: left out %d unusable record(s) of %s, listed in %s",
                           len(rejected), self.data_path, path)
        report_overlong(length["problems"], self.overlong, self.max_seq_len,
                        f"{length['qas']} QA(s) and {length['records']} record(s) (no usable QA or summary left) "
                        f"of {self.data_path}")
        if not self.kept.ids:
            raise DataError(f"{self.data_path}: no usable record left (see the messages above)")

    def _templates(self, record):
        """Every prompt a visit of ``record`` can produce (options in the file's order): (QA index, task, template)."""
        yield None, SUMMARY, self.processor.summary_template(record.global_video_caption)
        for q, qa in enumerate(record.qas):
            yield q, MULTIPLE_CHOICE, self.processor.multiple_choice_template(
                qa.question, qa.options, qa.answer_index, self.question_mark)
            if open_ended_allowed(qa.answer_open_ended, qa.answer_text):
                yield q, OPEN_ENDED, self.processor.open_ended_template(qa.question, qa.answer_open_ended, self.question_mark)

    def _cut_off(self, batch: list) -> list[tuple[int, int | None, str, str]]:
        """(batch row, QA index or None, task, why) of each prompt whose answer ``max_seq_len`` cuts off."""
        prompts = [(n, q, task, t) for n, (_, record) in enumerate(batch) for q, task, t in self._templates(record)]
        found = truncation_problems(self.processor, [p[3] for p in prompts], self.max_seq_len)
        return [(n, q, task, why) for (n, q, task, _), why in zip(prompts, found) if why]

    def _keep(self, batch: list, length: dict) -> None:
        """Keep a batch of valid records, leaving out (``overlong="skip"``) QAs whose answer ``max_seq_len`` cuts off."""
        bad: dict[int, set] = {}
        for n, q, task, why in self._cut_off(batch) if self.check_lengths else []:
            item, record = batch[n]
            field = "global_video_caption" if q is None else f"QAs[{q}]"
            length["problems"].append(f"{self._at(item.index, record.idx)}: {field} as {task}: {why}")
            bad.setdefault(n, set()).add(q)
        for n, (item, record) in enumerate(batch):
            bad_qas = bad.get(n, set())
            good_qas = [q for q in range(len(record.qas)) if q not in bad_qas]
            length["qas"] += len(record.qas) - len(good_qas)
            if None in bad_qas or not good_qas:
                length["records"] += 1
            elif self.overlong == "skip" or not bad_qas:
                self.kept.add(item, record, good_qas if bad_qas else None)

    # ------------------------------------------------------------ visits

    def __len__(self) -> int:
        return len(self.kept.ids)

    @property
    def feature_dim(self) -> int:
        return self.features.dim

    @property
    def positions(self) -> list[int]:
        """Each dataset item's record position in the file."""
        return self.kept.positions

    @property
    def usable_qas(self) -> dict[int, list[int]]:
        """Dataset index -> the QAs to draw from, for records where some were left out."""
        return self.kept.usable_qas

    def _at(self, position: int, idx: str) -> str:
        return f"{self.data_path}: record {position} (id {idx!r})"

    def _where(self, index: int) -> str:
        return self._at(self.kept.positions[index], self.kept.ids[index])

    def record(self, index: int):
        """The record behind dataset item ``index``, read again from its place in the file."""
        from topa_plugin.textvid.reader import read_record

        record = read_record(self.data_path, self.kept.offsets[index], self.kept.sizes[index])
        if record.idx != self.kept.ids[index]:
            raise DataError(f"{self._where(index)}: the file changed after it was read (found id {record.idx!r} "
                            "there); restart training")
        return record

    def _video(self, index: int, record, rng: random.Random) -> torch.Tensor:
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
        record = self.record(index)
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
        video = self._video(index, record, rng)
        where = f"{self._where(index)}: QAs[{qa_index}] as"
        multiple_choice = self.processor.encode_multiple_choice(qa.question, options, answer, self.question_mark)
        sample = make_sample(multiple_choice, video, self.max_seq_len, f"{where} {MULTIPLE_CHOICE}")
        sample["caption"] = make_sample(caption, video, self.max_seq_len, f"{where} {caption_task}")
        sample["task_coin"] = coin
        return sample


# ---------------------------------------------------------------- video QA (finetuning)


# ---------------------------------------------------------------- batching

