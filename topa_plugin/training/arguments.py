"""Training arguments: LLaVA's ``ModelArguments``/``DataArguments``/``TrainingArguments`` names plus
TOPA's, parsed by ``HfArgumentParser`` with an optional YAML ``--config`` underneath the flags.

Every refusal, the parser's own usage errors included, is a ``LaunchError`` carrying one line, so
that each entry point (``topa train``, ``python -m topa_plugin.training.train`` under torchrun or
deepspeed) reports it as ``<prog>: error: <message>`` instead of argparse's usage block or a traceback."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import torch
import transformers

from topa_plugin.configuration import TopaConfig
from topa_plugin.processing import QUESTION_MARK_RULES
from topa_plugin.quantization import BITS, QUANT_TYPES, QuantizationSettings
from topa_plugin.training.deepspeed_config import DeepSpeedConfigError, check_deepspeed_config
from topa_plugin.training.llava_compat import BACKENDS, default_backend
from topa_plugin.training.samples import OVERLONG_POLICIES
from topa_plugin.utils.errors import first_line

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEEPSPEED_DIR = CONFIGS_DIR / "deepspeed"

TASKS = ("pretrain", "finetune")


class LaunchError(ValueError):
    """Training flags (or their ``--config``) that cannot start a run; the message is one line naming the flag or file."""


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Frozen LLM: Hugging Face id or directory."})
    init_from: str | None = field(default=None, metadata={"help": "TOPA plugin directory to start from (finetuning)."})
    # The model's defaults are TopaConfig's, read from it rather than repeated.
    adapter_len: int = field(default=TopaConfig.adapter_len, metadata={"help": "Adapter prompt vectors per layer."})
    adapter_layer: int | None = field(default=None, metadata={"help": "Top layers with adapter prompts (default: all)."})
    max_feats: int = field(default=TopaConfig.max_feats, metadata={"help": "Video slots (frames) per sample."})
    video_bias_init: float = field(default=TopaConfig.video_bias_init, metadata={"help": "Initial video attention bias (gate2)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: no LoRA)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="q_proj,k_proj,v_proj,o_proj", metadata={"help": "Comma-separated LLM modules for LoRA."})
    # LLaVA's names; the defaults are QuantizationSettings', read from it rather than repeated.
    bits: int = field(default=16, metadata={"help": "Frozen LLM precision: 16 (the dtype of --bf16/--fp16), 8 or 4 "
                      "(bitsandbytes; needs the [quant] extra). With --lora_r, 4/8 is QLoRA.", "choices": sorted(BITS)})
    quant_type: str = field(default=QuantizationSettings.quant_type, metadata={"help": "--bits 4 data type.",
                            "choices": QUANT_TYPES})
    double_quant: bool = field(default=QuantizationSettings.double_quant, metadata={
        "help": "--bits 4: also quantize the block scales."})

    @property
    def quantization(self) -> QuantizationSettings:
        return QuantizationSettings.from_bits(self.bits, self.quant_type, self.double_quant)


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={
        "help": "TextVid .json/.jsonl (pretrain) or video-QA .csv/.jsonl/.json (finetune)."})
    feature_folder: str | None = field(default=None, metadata={"help": "Output folder of `topa features textvid|videos`."})
    task: str = field(default="pretrain", metadata={"help": "pretrain (TextVid task mix) or finetune (video QA).", "choices": TASKS})
    # None means the dataset's own default for the task (TextVidDataset / VideoQADataset), the one source.
    max_seq_len: int | None = field(default=None, metadata={"help": "Prompt tokens kept per sample, as the release "
                                    "truncates (default: 150 for pretrain, 128 for finetune)."})
    check_lengths: bool | None = field(default=None, metadata={"help": "Before training, encode every prompt a record "
                                       "can produce and report all whose answer --max_seq_len cuts off (default: on)."})
    overlong: str | None = field(default=None, metadata={"help": "Prompts whose answer --max_seq_len cuts off: error "
                                 "(list them all and stop; default) or skip (leave them out, logged).",
                                 "choices": OVERLONG_POLICIES})
    answer_balance: bool | None = field(default=None, metadata={"help": "Shuffle multiple-choice options, release rule "
                                        "(default: on for pretrain, off for finetune)."})
    noise_variance: float | None = field(default=None, metadata={"help": "Noise injection variance for TextVid "
                                         "features (default 0: off, as released)."})
    skip_invalid: bool = field(default=False, metadata={"help": "TextVid pretraining: leave out invalid records and "
                               "records without usable features, listed in <output_dir>.rejects.jsonl (default: stop, "
                               "naming them all)."})
    layout: str = field(default="auto", metadata={"help": "Video-QA column layout: auto, nextqa, star, tvqa, generic."})
    feature_fps: float | None = field(default=None, metadata={"help": "Feature rows per second, to cut STAR/TVQA segments."})
    question_mark: str | None = field(default=None, metadata={
        "help": "TextVid questions: always (default, the release's training rule: append \"?\" unless the question "
                "ends in \"?\", so \"x.\" becomes \"x.?\") or keep_period (no \"?\" after a final \".\", the "
                "evaluation rule).", "choices": QUESTION_MARK_RULES})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    base_learning_rate: float | None = field(default=None, metadata={"help": "If set, lr = blr * effective batch / 256."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "Warmup as a fraction of all steps (LLaVA name)."})
    trainer_backend: str = field(default_factory=default_backend, metadata={"help": "auto, llava or plain.", "choices": BACKENDS})
    group_by_modality_length: bool = field(default=False, metadata={"help": "LLaVA's length-grouped sampler."})
    mm_projector_lr: float | None = field(default=None, metadata={"help": "Read by LLaVATrainer; unused by TOPA."})
    decay_gates: bool = field(default=True, metadata={"help": "Weight decay on the per-head gates gate1/gate2 too "
                              "(release: every >= 2-D parameter decays); False exempts them like biases."})
    adam_beta2: float = 0.95
    weight_decay: float = 0.1
    lr_scheduler_type: str = "cosine"
    remove_unused_columns: bool = False

    def __post_init__(self):
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise LaunchError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise LaunchError("give --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio  # transformers 5 reads a value below 1 as a ratio
        if not self.use_cpu and not torch.accelerator.is_available():
            # Without it accelerate sees one process on a CPU-only host: torchrun ranks train as
            # independent copies and DeepSpeed's batch check fails.
            self.use_cpu = True
        if isinstance(self.deepspeed, str):
            self.deepspeed = str(resolve_deepspeed(self.deepspeed))
            _read_json(self.deepspeed)  # names the file before transformers reads it
        super().__post_init__()

    @property
    def effective_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DeepSpeedConfigError(f"--deepspeed {path}: cannot read the DeepSpeed config ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise DeepSpeedConfigError(f"{path}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None


def check_world_size(training_args: TrainingArguments) -> None:
    """A launcher that started N processes must give a trainer that sees N (else N independent runs)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != training_args.world_size:
        raise LaunchError(f"the launcher started {launched} processes (WORLD_SIZE) but the trainer sees "
                          f"{training_args.world_size}: on a host without GPUs add --use_cpu True")


class TrainingParser(transformers.HfArgumentParser):
    """``HfArgumentParser`` whose usage errors (a bad value, an unknown flag) raise ``LaunchError``:
    argparse would print its whole usage block, hundreds of lines for the training flags, and exit."""

    def error(self, message: str) -> NoReturn:
        raise LaunchError(f"{message} (see {self.prog} --help)")


def build_parser(prog: str | None = None) -> TrainingParser:
    return TrainingParser((ModelArguments, DataArguments, TrainingArguments), prog=prog)


def _pop_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Remove ``--config PATH`` / ``--config=PATH`` from argv."""
    rest, config = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            config = next(it, None)
            if config is None:
                raise LaunchError("--config needs a YAML file path")
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return config, rest


def yaml_to_argv(path: str | Path, parser: transformers.HfArgumentParser) -> list[str]:
    """A YAML mapping of argument names to values, as command-line flags (unknown keys fail here)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:  # its message spans lines; the mark says where
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise LaunchError(f"{path}: {where}not valid YAML ({getattr(e, 'problem', None) or first_line(e)})") from None
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: expected a mapping of argument names to values")
    known = parser._option_string_actions
    argv = []
    for key, value in data.items():
        flag = f"--{key}"
        if flag not in known:
            raise LaunchError(f"{path}: {key}: unknown argument (see `python -m topa_plugin.training.train --help`)")
        if value is None:
            continue
        if isinstance(value, list):
            argv += [flag, *map(str, value)]
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, str(value)]
    return argv


def shipped_configs() -> dict[str, Path]:
    """The YAML recipes shipped in the package, by name (``pretrain_llama2_7b``) and by ``model/name``."""
    found = {}
    for path in sorted(CONFIGS_DIR.glob("*/*.yaml")):
        found[path.stem] = found[f"{path.parent.name}/{path.stem}"] = path
    return found


def resolve_config(config: str) -> Path:
    """A YAML path, or the name of a shipped recipe (``topa train --config pretrain_llama2_7b``)."""
    path = Path(config)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if config.removesuffix(".yaml") in shipped:
        return shipped[config.removesuffix(".yaml")]
    names = ", ".join(sorted(name for name in shipped if "/" not in name))
    raise LaunchError(f"--config {config}: no such file, and no shipped recipe of that name (shipped: {names})")


def resolve_deepspeed(config: str) -> Path:
    """A DeepSpeed JSON path, or a shipped config by name (``--deepspeed zero2``, ``zero3``), so a pip
    install needs no clone; ``configs/zero*.json`` in the repository are links to the same files."""
    path = Path(config)
    shipped = DEEPSPEED_DIR / f"{config.removesuffix('.json')}.json"
    if not path.exists() and "/" not in config and shipped.is_file():
        return shipped
    return path


def with_config(argv: list[str], parser: TrainingParser) -> list[str]:
    """``argv`` with ``--config PATH`` replaced by the YAML's flags, put first so that the given flags override them."""
    config, rest = _pop_config(argv)
    return [*yaml_to_argv(resolve_config(config), parser), *rest] if config else rest


def parse_arguments(argv: list[str] | None = None, prog: str | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse (YAML defaults +) flags, check the combination, and apply ``--base_learning_rate``."""
    parser = build_parser(prog)
    return parse_flags(parser, with_config(list(sys.argv[1:] if argv is None else argv), parser))


def parse_flags(parser: TrainingParser, argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """``parse_arguments`` for flags whose ``--config`` is already expanded (``with_config``)."""
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    model_args, data_args, training_args = parsed
    if not data_args.data_path or not data_args.feature_folder:
        raise LaunchError("--data_path and --feature_folder are required")
    if not model_args.model_name_or_path and not model_args.init_from:
        raise LaunchError("give --model_name_or_path (the frozen LLM) or --init_from (a TOPA plugin directory)")
    if model_args.lora_r and data_args.task != "finetune":
        raise LaunchError("--lora_r is for --task finetune (pre-alignment keeps the LLM frozen)")
    check_world_size(training_args)
    if training_args.deepspeed:
        check_deepspeed_config(training_args)
    if training_args.base_learning_rate is not None:
        training_args.learning_rate = training_args.base_learning_rate * training_args.effective_batch_size / 256
    return model_args, data_args, training_args
