"""TOPA training entry point: ``python -m topa_plugin.train`` (torchrun / deepspeed) or ``topa train``.

Arguments follow LLaVA's ``train.py`` (``ModelArguments``/``DataArguments``/``TrainingArguments``
through ``HfArgumentParser``) plus TOPA's own; ``--config x.yaml`` supplies defaults that later
command-line flags override. Training runs through LLaVA's trainer when llava imports
(``topa_plugin.llava_compat``), else through ``transformers.Trainer``.

Recipe (topa-method.md section 5): the LLM is frozen (bf16 with ``--bf16`` on an accelerator,
fp32 on CPU), the TOPA adapter trains in fp32 with AdamW betas (0.9, 0.95); weight decay applies
to the matrices (``visual_proj.weight``, ``temporal_emb.weight``, ``adapter_query.weight``, LoRA
matrices) and not to the per-head gates ``gate1``/``gate2``, biases or any 1-D parameter. The
learning rate warms up linearly, then follows a half cosine to 0; ``--base_learning_rate`` sets
``lr = blr * effective_batch / 256`` as the release does.

Checkpoints hold only trainables (``adapter_model.safetensors``, ``lora_model.safetensors`` with
LoRA) plus optimizer/scheduler/RNG/trainer state; the frozen LLM is never written. The final
output directory loads with ``TopaForCausalLM.from_pretrained``; after LoRA finetuning the LoRA
weights are merged and the LLM is saved inside it (``base/``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

from .data import OVERLONG_POLICIES
from .llava_compat import BACKENDS, default_backend, trainer_base

logger = logging.getLogger(__name__)

TASKS = ("pretrain", "finetune")
LORA_FILE = "lora_model.safetensors"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Frozen LLM: Hugging Face id or directory."})
    init_from: str | None = field(default=None, metadata={"help": "TOPA plugin directory to start from (finetuning)."})
    adapter_len: int = field(default=50, metadata={"help": "Adapter prompt vectors per layer."})
    adapter_layer: int | None = field(default=None, metadata={"help": "Top layers with adapter prompts (default: all)."})
    max_feats: int = field(default=10, metadata={"help": "Video slots (frames) per sample."})
    video_bias_init: float = field(default=-3.5, metadata={"help": "Initial video attention bias (gate2)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: no LoRA)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata={"help": "Comma-separated LLM modules for LoRA."})


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "TextVid .json/.jsonl (pretrain) or video-QA .csv/.jsonl/.json (finetune)."})
    feature_folder: str | None = field(default=None, metadata={"help": "Output folder of `topa features textvid|videos`."})
    task: str = field(default="pretrain", metadata={"help": "pretrain (TextVid task mix) or finetune (video QA).", "choices": TASKS})
    max_seq_len: int = field(default=150, metadata={"help": "Prompt tokens kept per sample (the release truncates)."})
    check_lengths: bool = field(default=True, metadata={"help": "Before training, encode every prompt a record can "
                                "produce and report all whose answer --max_seq_len cuts off."})
    overlong: str = field(default="error", metadata={"help": "Prompts whose answer --max_seq_len cuts off: error "
                          "(list them all and stop) or skip (leave them out, logged).", "choices": OVERLONG_POLICIES})
    answer_balance: bool = field(default=False, metadata={"help": "Shuffle multiple-choice options (release rule)."})
    noise_variance: float = field(default=0.0, metadata={"help": "Noise injection variance for TextVid features."})
    layout: str = field(default="auto", metadata={"help": "Video-QA column layout: auto, nextqa, star, tvqa, generic."})
    feature_fps: float | None = field(default=None, metadata={"help": "Feature rows per second, to cut STAR/TVQA segments."})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    base_learning_rate: float | None = field(default=None, metadata={"help": "If set, lr = blr * effective batch / 256."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "Warmup as a fraction of all steps (LLaVA name)."})
    trainer_backend: str = field(default_factory=default_backend, metadata={"help": "auto, llava or plain.", "choices": BACKENDS})
    group_by_modality_length: bool = field(default=False, metadata={"help": "LLaVA's length-grouped sampler."})
    mm_projector_lr: float | None = field(default=None, metadata={"help": "Read by LLaVATrainer; unused by TOPA."})
    adam_beta2: float = 0.95
    weight_decay: float = 0.1
    lr_scheduler_type: str = "cosine"
    remove_unused_columns: bool = False

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("give --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio  # transformers 5 reads a value below 1 as a ratio
        super().__post_init__()

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size


# ---------------------------------------------------------------- arguments

def build_parser(prog: str | None = None) -> transformers.HfArgumentParser:
    return transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), prog=prog)


def _pop_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove ``--config PATH`` / ``--config=PATH`` from argv."""
    rest, config = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise SystemExit("--config needs a YAML file path")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def yaml_to_argv(path: str | Path, parser: transformers.HfArgumentParser) -> list[str]:
    """A YAML mapping of argument names to values, as command-line flags (unknown keys fail here)."""
    import json

    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values")
    known = parser._option_string_actions
    argv = []
    for key, value in data.items():
        flag = f"--{key}"
        if flag not in known:
            raise ValueError(f"{path}: {key}: unknown argument (see `python -m topa_plugin.train --help`)")
        if value is None:
            continue
        if isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_arguments(argv: list[str] | None = None, prog: str | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse (YAML defaults +) flags, check the combination, and apply ``--base_learning_rate``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    config, argv = _pop_config(argv)
    if config:
        argv = yaml_to_argv(config, parser) + argv
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if not data_args.data_path or not data_args.feature_folder:
        raise SystemExit("--data_path and --feature_folder are required")
    if not model_args.model_name_or_path and not model_args.init_from:
        raise SystemExit("give --model_name_or_path (the frozen LLM) or --init_from (a TOPA plugin directory)")
    if model_args.lora_r and data_args.task != "finetune":
        raise SystemExit("--lora_r is for --task finetune (pre-alignment keeps the LLM frozen)")
    if training_args.base_learning_rate is not None:
        training_args.learning_rate = training_args.base_learning_rate * training_args.effective_batch_size / 256
    return model_args, data_args, training_args


# ---------------------------------------------------------------- model and data

def _llm_dtype(training_args: TrainingArguments) -> torch.dtype:
    """bf16/fp16 for the frozen LLM when asked for on an accelerator; fp32 on CPU."""
    if training_args.device.type == "cpu":
        return torch.float32
    if training_args.bf16:
        return torch.bfloat16
    return torch.float16 if training_args.fp16 else torch.float32


def build_processor(model_args: ModelArguments):
    from .prompts import TopaProcessor

    if model_args.init_from:
        return TopaProcessor.from_pretrained(model_args.init_from)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    return TopaProcessor(tokenizer, max_feats=model_args.max_feats)


def build_dataset(data_args: DataArguments, processor, seed: int = 0):
    from .data import TextVidDataset, VideoQADataset

    common = {"max_seq_len": data_args.max_seq_len, "answer_balance": data_args.answer_balance, "seed": seed,
              "check_lengths": data_args.check_lengths, "overlong": data_args.overlong}
    if data_args.task == "pretrain":
        return TextVidDataset(data_args.data_path, data_args.feature_folder, processor,
                              noise_variance=data_args.noise_variance, **common)
    return VideoQADataset(data_args.data_path, data_args.feature_folder, processor, layout=data_args.layout,
                          feature_fps=data_args.feature_fps, **common)


def build_model(model_args: ModelArguments, feature_dim: int, processor, dtype: torch.dtype):
    """A fresh TOPA model on the frozen LLM, or the one in ``--init_from``; LoRA on top if asked."""
    from .configuration import TopaConfig
    from .modeling import TopaForCausalLM

    if model_args.init_from:
        model = TopaForCausalLM.from_pretrained(model_args.init_from, torch_dtype=dtype)
        base = Path(model_args.init_from) / model.config.base_model_name_or_path
        if base.exists():  # e.g. a self-contained "base": the new directory must still find it
            model.config.base_model_name_or_path = str(base.resolve())
        if model.config.feature_dim != feature_dim:
            raise ValueError(f"--init_from {model_args.init_from} expects {model.config.feature_dim}-d features, "
                             f"the feature folder has {feature_dim}-d")
        model.train()
    else:
        llm = transformers.AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=dtype)
        config = TopaConfig(text_config=llm.config, base_model_name_or_path=model_args.model_name_or_path,
                            feature_dim=feature_dim, max_feats=model_args.max_feats, adapter_len=model_args.adapter_len,
                            adapter_layer=model_args.adapter_layer, video_bias_init=model_args.video_bias_init)
        model = TopaForCausalLM(config, llm=llm)
    model.processor = processor
    if model_args.lora_r:
        import peft

        lora = peft.LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                               lora_dropout=model_args.lora_dropout,
                               target_modules=[m.strip() for m in model_args.lora_target_modules.split(",") if m.strip()])
        model.llm = peft.get_peft_model(model.llm, lora)
        for name, param in model.llm.named_parameters():
            if "lora_" in name:
                param.data = param.data.float()  # trainables in fp32 (autocast handles the matmuls)
    return model


def has_lora(model) -> bool:
    return hasattr(model.llm, "peft_config")


def decays(name: str, param: torch.nn.Parameter) -> bool:
    """Weight decay for matrices only: not for gates (gate1/gate2), biases or 1-D parameters."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim >= 2 and not leaf.startswith("gate") and leaf != "bias"


# ---------------------------------------------------------------- trainer

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

        from .modeling import ADAPTER_FILE

        model = self.accelerator.unwrap_model(model or self.model)
        path = Path(resume_from_checkpoint)
        adapter = load_file(str(path / ADAPTER_FILE))
        model.adapter.load_state_dict({k.removeprefix("adapter."): v for k, v in adapter.items()}, strict=True)
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


def _last_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    return transformers.trainer_utils.get_last_checkpoint(output_dir)


def save_final(trainer, output_dir: str) -> None:
    """A directory ``TopaForCausalLM.from_pretrained`` loads; with LoRA, merged into a saved LLM."""
    model = trainer._topa_model()
    if has_lora(model):
        model.llm = model.llm.merge_and_unload()
        if trainer.args.should_save:
            model.save_pretrained(output_dir, save_base=True)
    else:
        trainer.save_model(output_dir)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, callbacks=None):
    """Build everything, train (resuming from the newest checkpoint in output_dir), save; returns the trainer."""
    from .data import TopaCollator

    logger.info("effective batch %d, learning rate %.3g", training_args.effective_batch_size, training_args.learning_rate)
    transformers.set_seed(training_args.seed)
    processor = build_processor(model_args)
    dataset = build_dataset(data_args, processor, training_args.seed)
    model = build_model(model_args, dataset.feature_dim, processor, _llm_dtype(training_args))
    logger.info("trainable parameters: %d", sum(p.numel() for p in model.parameters() if p.requires_grad))
    pad_id = processor.tokenizer.pad_token_id
    trainer = topa_trainer_class(training_args.trainer_backend)(
        model=model, args=training_args, train_dataset=dataset, callbacks=[EpochSetter(dataset), *(callbacks or [])],
        data_collator=TopaCollator(pad_token_id=processor.eos_id if pad_id is None else pad_id),
    )
    resume = training_args.resume_from_checkpoint or _last_checkpoint(training_args.output_dir)
    if resume:
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    save_final(trainer, training_args.output_dir)
    return trainer


def main(argv: list[str] | None = None, prog: str = "python -m topa_plugin.train") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(*parse_arguments(argv, prog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
