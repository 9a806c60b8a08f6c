"""LLaVA's ``LLaVATrainer`` on transformers 5, or the plain ``transformers.Trainer`` without llava.

llava-torch 1.2.2 was written for transformers 4.36. ``LLaVACompatTrainer`` fixes the six places
where ``LLaVATrainer`` breaks on transformers 5 (integration-notes, "llava-torch training"):

1. ``transformers.trainer.ALL_LAYERNORM_LAYERS`` moved to ``transformers.pytorch_utils``: the alias is
   restored before ``llava.train.llava_trainer`` is imported.
2. ``Trainer(tokenizer=...)`` became ``processing_class=``: the old keyword is still accepted.
3. ``_get_train_sampler`` now receives the dataset.
4. ``_save_checkpoint(model, trial)`` lost its ``metrics`` argument, which LLaVA still passes on.
5. ``maybe_zero_3`` imports deepspeed even when no parameter is ZeRO-partitioned: replaced by a
   version that imports deepspeed only for partitioned parameters.
6. ``create_optimizer(model)`` is called with the (FSDP-wrapped) model on transformers 5.

``trainer_base(backend)`` picks the class: ``"llava"`` requires llava, ``"plain"`` never uses it,
``"auto"`` uses llava when it imports and otherwise logs a notice and falls back to the plain
Trainer. The default backend comes from the ``TOPA_TRAINER_BACKEND`` environment variable.
"""

from __future__ import annotations

import logging
import os

import transformers

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "llava", "plain")
BACKEND_ENV = "TOPA_TRAINER_BACKEND"
_LLAVA_HINT = "install it with `pip install --no-deps llava-torch==1.2.2.post1` plus the [llava] extra"


def default_backend() -> str:
    """The backend named by ``TOPA_TRAINER_BACKEND`` (``auto`` when unset)."""
    backend = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def _maybe_zero_3(param, ignore_status=False, name=None):
    """A detached CPU copy of ``param``, gathered first only if ZeRO-3 partitioned it (fix 5)."""
    if hasattr(param, "ds_id"):
        from deepspeed import zero

        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def llava_trainer_class() -> type:
    """``LLaVATrainer`` patched for transformers 5; raises ImportError when llava is missing."""
    import transformers.trainer as hf_trainer
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS

    if not hasattr(hf_trainer, "ALL_LAYERNORM_LAYERS"):  # fix 1
        hf_trainer.ALL_LAYERNORM_LAYERS = ALL_LAYERNORM_LAYERS
    from llava.train import llava_trainer

    llava_trainer.maybe_zero_3 = _maybe_zero_3  # fix 5

    class LLaVACompatTrainer(llava_trainer.LLaVATrainer):
        """``LLaVATrainer`` with the transformers-5 signature changes bridged."""

        def __init__(self, *args, tokenizer=None, **kwargs):  # fix 2
            if tokenizer is not None:
                kwargs.setdefault("processing_class", tokenizer)
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):  # fix 3
            if getattr(self.args, "group_by_modality_length", False):
                return super()._get_train_sampler()  # LLaVA's sampler reads self.train_dataset
            return transformers.Trainer._get_train_sampler(self, train_dataset)

        def _save_checkpoint(self, model, trial, metrics=None):  # fix 4
            if getattr(self.args, "tune_mm_mlp_adapter", False):
                return super()._save_checkpoint(model, trial, metrics)  # projector-only branch
            return transformers.Trainer._save_checkpoint(self, model, trial)

        def create_optimizer(self, model=None):  # fix 6
            if model is None or model is self.model:
                return super().create_optimizer()
            # LLaVA builds the groups from self.model; point it at the wrapped model meanwhile.
            unwrapped, self.model = self.model, model
            try:
                return super().create_optimizer()
            finally:
                self.model = unwrapped

    return LLaVACompatTrainer


def trainer_base(backend: str | None = None) -> type:
    """The Trainer class to build on: LLaVA's (patched) or ``transformers.Trainer``."""
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"trainer backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "plain":
        logger.info("Trainer backend 'plain': using transformers.Trainer")
        return transformers.Trainer
    try:
        cls = llava_trainer_class()
    except ImportError as e:
        if backend == "llava":
            raise ImportError(f"trainer backend 'llava' needs llava-torch ({e}); {_LLAVA_HINT}") from e
        logger.warning("llava is not importable (%s): training with the plain transformers.Trainer; %s", e, _LLAVA_HINT)
        return transformers.Trainer
    logger.info("Trainer backend: llava.train.llava_trainer.LLaVATrainer (transformers-5 compat)")
    return cls
