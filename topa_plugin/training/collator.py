"""The dynamic-padding collator: right-pads each batch to its own longest sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from topa_plugin.processing import IGNORE_INDEX

# A TextVid batch says which of the release's two step kinds it is under this key; the trainer pops it
# before the forward pass and logs each kind's loss apart (``TopaTrainerMixin``).
BATCH_TASK = "batch_task"
MULTIPLE_CHOICE_BATCH, CAPTION_BATCH = "multiple_choice", "caption"


@dataclass
class TopaCollator:
    """Right-pads each batch to its own longest sample; never to a fixed length.

    TextVid items carry two candidate samples; the first item's ``task_coin`` picks which one
    the whole batch uses (see ``TextVidDataset.__getitem__``).

    Returns the model's inputs: ``input_ids``/``attention_mask``/``labels`` [B, L],
    ``video_features`` [B, max_feats, F] and ``video_start`` LongTensor [B] (may differ per sample);
    TextVid batches add ``batch_task`` (``"multiple_choice"`` or ``"caption"``), which is no model input.
    """

    pad_token_id: int = 0

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        task = None
        if "task_coin" in samples[0]:  # TextVid: one task for the whole batch, as the release's step
            task = MULTIPLE_CHOICE_BATCH if samples[0]["task_coin"] else CAPTION_BATCH
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
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "video_features": torch.stack([s["video_features"] for s in samples]),
            "video_start": torch.tensor([int(s["video_start"]) for s in samples], dtype=torch.long),
        }
        if task is not None:
            inputs[BATCH_TASK] = task
        return inputs
