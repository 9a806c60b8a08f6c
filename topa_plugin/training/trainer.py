"""TOPA on top of LLaVA's or transformers' trainer: optimizer groups, trainables-only checkpoints
(never the frozen LLM), exact resume, and the epoch callback the datasets need."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from pathlib import Path

import torch
import transformers

from topa_plugin.training.llava_compat import trainer_base
from topa_plugin.utils.constants import LORA_FILE
from topa_plugin.utils.save_and_load import load_adapter

logger = logging.getLogger(__name__)

def has_lora(model) -> bool:
    return hasattr(model.llm, "peft_config")


def decays(name: str, param: torch.nn.Parameter) -> bool:
    """Weight decay for matrices only: not for gates (gate1/gate2), biases or 1-D parameters."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim >= 2 and not leaf.startswith("gate") and leaf != "bias"


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
    """TOPA on top of either trainer: optimizer groups, trainables-only checkpoints, resume."""

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, param in model.named_parameters() if decays(name, param)]

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
                    import peft
                    from safetensors.torch import save_file

                    state = peft.get_peft_model_state_dict(model.llm)
                    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, os.path.join(output_dir, LORA_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(model or self.model)
        path = Path(resume_from_checkpoint)
        load_adapter(model.adapter, path)
        if has_lora(model):
            import peft

            peft.set_peft_model_state_dict(model.llm, load_file(str(path / LORA_FILE)))
        logger.info("Resumed TOPA trainables from %s", path)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.is_deepspeed_enabled:
            # The engine checkpoint holds the module too: keep the frozen LLM out of it.
            self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
            return
        super()._save_optimizer_and_scheduler(output_dir)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if not (self.is_deepspeed_enabled and resume_from_checkpoint):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        # Engine checkpoints lack the frozen weights (above), so the module must load non-strictly.
        import transformers.trainer as hf_trainer

        strict_loader = hf_trainer.deepspeed_load_checkpoint
        hf_trainer.deepspeed_load_checkpoint = functools.partial(strict_loader, load_module_strict=False)
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
    """A directory ``TopaForCausalLM.from_pretrained`` loads; with LoRA, merged into a saved LLM."""
    model = trainer._topa_model()
    if has_lora(model):
        model.llm = model.llm.merge_and_unload()
        if trainer.args.should_save:
            model.save_pretrained(output_dir, save_base=True)
    else:
        trainer.save_model(output_dir)
