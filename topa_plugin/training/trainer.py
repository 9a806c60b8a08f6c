"""TOPA on top of LLaVA's or transformers' trainer: optimizer groups, trainables-only checkpoints
(never the frozen LLM), exact resume, and the epoch callback the datasets need."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import torch
import transformers
from transformers.trainer import SCHEDULER_NAME

from topa_plugin.quantization import is_quantized
from topa_plugin.training.collator import BATCH_TASK
from topa_plugin.training.llava_compat import trainer_base
from topa_plugin.utils.save_and_load import load_adapter, load_lora, save_lora

logger = logging.getLogger(__name__)

def has_lora(model) -> bool:
    return hasattr(model.llm, "peft_config")


def decays(name: str, param: torch.nn.Parameter, decay_gates: bool) -> bool:
    """The release's rule (timm's ``param_groups_weight_decay``): every parameter with 2 or more
    dimensions decays, the per-head gates gate1/gate2 ([layers, heads]) included; biases and 1-D
    parameters do not. ``decay_gates=False`` exempts the gates too."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim >= 2 and leaf != "bias" and (decay_gates or not leaf.startswith("gate"))


@contextlib.contextmanager
def _gathered(params):
    """Gather ZeRO-3 partitioned parameters (no-op for everything else)."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned):
        yield


class TopaTrainerMixin:
    """TOPA on top of either trainer: optimizer groups, trainables-only checkpoints, resume, and the
    loss of each TextVid step kind logged apart."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss; a TextVid batch's kind (``batch_task``, no model input) is popped and its
        loss kept for the next log."""
        task = inputs.pop(BATCH_TASK, None)
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if task is not None and model.training:
            loss = result[0] if return_outputs else result
            self.__dict__.setdefault("_task_losses", {}).setdefault(task, []).append(loss.detach())
        return result

    def log(self, logs: dict, start_time=None) -> None:
        """Training logs gain ``loss_multiple_choice`` / ``loss_caption``: the mean loss of this process's
        batches of each kind since the last log. The release alternates the kinds step by step, and
        their losses sit at different levels, so one curve of both zigzags where there are two curves."""
        if "loss" in logs:
            for task, losses in self.__dict__.pop("_task_losses", {}).items():
                logs[f"loss_{task}"] = round(float(torch.stack(losses).float().mean()), 4)
        super().log(logs, start_time)

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, param in model.named_parameters() if decays(name, param, self.args.decay_gates)]

    def create_optimizer(self, model=None):
        # LLaVA's grouping ignores get_decay_parameter_names; TOPA's rule must hold on both backends.
        return transformers.Trainer.create_optimizer(self, model)

    def _topa_model(self):
        return self.accelerator.unwrap_model(self.model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write config, trainables (+ LoRA) and tokenizer: never the frozen LLM."""
        model = self._topa_model()
        output_dir = output_dir or self.args.output_dir
        trainables = [p for p in model.parameters() if p.requires_grad]
        with _gathered(trainables):
            if self.args.should_save:
                model.save_pretrained(output_dir)
                if has_lora(model):
                    save_lora(model.llm, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        path = Path(resume_from_checkpoint)
        load_adapter(model.adapter, path)
        if has_lora(model):
            load_lora(model.llm, path)
        logger.info("Resumed TOPA trainables from %s", path)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # The engine checkpoint holds the module too: keep the frozen LLM out of it (every rank
        # writes its own ZeRO shard). transformers returns here without the scheduler, which the
        # engine does not own when the Trainer made it, and then needs scheduler.pt to resume.
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def train(self, resume_from_checkpoint=None, **kwargs):
        if not (self.is_deepspeed_enabled and resume_from_checkpoint):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        # Engine checkpoints lack the frozen weights (above), so the module must load non-strictly.
        # The Trainer passes load_module_strict itself, so a partial's default would be overridden.
        import transformers.trainer as hf_trainer

        strict_loader = hf_trainer.deepspeed_load_checkpoint

        def load_without_frozen(engine, checkpoint, load_module_strict=True):
            return strict_loader(engine, checkpoint, load_module_strict=False)

        hf_trainer.deepspeed_load_checkpoint = load_without_frozen
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            hf_trainer.deepspeed_load_checkpoint = strict_loader


class EpochSetter(transformers.TrainerCallback):
    """Tells the dataset which epoch starts (its samples are drawn from seed, epoch and index)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the fractional epoch reached, e.g. 1.0 at the start of the second epoch
        self.dataset.set_epoch(math.floor((state.epoch or 0) + 1e-6))


def topa_trainer_class(backend: str | None = None) -> type:
    base = trainer_base(backend)
    return type(f"Topa{base.__name__}", (TopaTrainerMixin, base), {})


def save_final(trainer, output_dir: str) -> None:
    """A directory ``TopaForCausalLM.from_pretrained`` loads.

    With LoRA on a full-precision base, the LoRA is merged into the LLM, saved under ``base/`` (exact up to
    the LLM dtype's rounding). On a quantized base (QLoRA) it stays unmerged beside the adapter: merging would
    mean dequantizing, adding and re-quantizing, whose rounding changes every merged weight by up to a
    quantization step; ``from_pretrained`` applies the unmerged LoRA on top of the base, quantized or not.
    """
    model = trainer._topa_model()
    if has_lora(model) and not is_quantized(model.llm):
        model.llm = model.llm.merge_and_unload()
        if trainer.args.should_save:
            model.save_pretrained(output_dir, save_base=True)
    else:
        trainer.save_model(output_dir)
