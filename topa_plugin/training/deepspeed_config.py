"""Checks a ``--deepspeed`` config against the training flags before any model loads.

transformers fills a DeepSpeed config's ``"auto"`` values from the flags in two stages
(``HfTrainerDeepSpeedConfig``): batch sizes, clipping and precision when the arguments are parsed;
bucket sizes (from the model's hidden size) and scheduler lengths once the model is built. A key
that neither stage fills, or a number that contradicts the flags, otherwise surfaces after the
model has loaded, as an accelerate or DeepSpeed assertion that names neither the file nor the key
(``allgather_bucket_size: "auto"`` in LLaVA-style configs is one). ``check_deepspeed_config``
runs the second stage on a copy with a stand-in model and reports every problem at once.

``optimizer`` and ``scheduler`` sections are refused: DeepSpeed would then build its own optimizer
over one parameter group (TOPA's weight-decay rule lost) and its own schedule (the recipe's
warmup + cosine and ``--base_learning_rate`` lost).
"""

from __future__ import annotations

import copy
import re
from types import SimpleNamespace

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
OWN_SECTIONS = {
    "optimizer": "TOPA builds AdamW with its weight-decay groups from the flags (--learning_rate, --weight_decay, "
                 "--adam_beta1/2); remove this section",
    "scheduler": "TOPA's schedule comes from the flags (--lr_scheduler_type, --warmup_ratio); remove this section",
}


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config that cannot work with the given flags; the message names file and key."""


def auto_keys(config: dict, prefix: str = "") -> list[str]:
    """Dotted names of every key whose value is still ``"auto"``."""
    keys = []
    for key, value in config.items():
        if isinstance(value, dict):
            keys += auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            keys.append(prefix + key)
    return keys


def batch_problems(config: dict, micro: int, accumulation: int, world_size: int) -> list[str]:
    """Batch keys that contradict the flags; DeepSpeed needs total = micro x accumulation x processes."""
    flags = {"train_micro_batch_size_per_gpu": (micro, "--per_device_train_batch_size"),
             "gradient_accumulation_steps": (accumulation, "--gradient_accumulation_steps")}
    problems = []
    for key, (value, flag) in flags.items():
        given = config.get(key, "auto")
        if given not in ("auto", value):
            problems.append(f"{key}: {given}, but {flag} is {value} (use \"auto\" or {value})")
    total = config.get("train_batch_size", "auto")
    per_step = micro * accumulation * world_size
    if total not in ("auto", per_step):
        per_round = micro * world_size
        if isinstance(total, int) and total > 0 and total % per_round == 0:
            hint = f"--gradient_accumulation_steps {total // per_round} gives {total}"
        else:
            hint = f"{total} is not a multiple of {micro} per device x {world_size} processes = {per_round}"
        problems.append(f"train_batch_size: {total}, but {micro} per device x {accumulation} accumulation x "
                        f"{world_size} processes = {per_step} ({hint}; or use \"auto\")")
    return problems


def _mismatch(line: str) -> str:
    """transformers' "- ds KEY=VALUE vs hf ARG=VALUE" as "KEY: VALUE, but the flags give ARG=VALUE"."""
    found = re.fullmatch(r"- ds (\S+)=(.*) vs hf (.+?)=(.*)", line)
    if not found:
        return line
    key, given, flag, value = found.groups()
    return f"{key}: {given}, but the flags give {flag}={value} (use \"auto\" or {value})"


def check_deepspeed_config(training_args) -> None:
    """Raise DeepSpeedConfigError naming the file and every key of ``--deepspeed`` that cannot work."""
    where = training_args.deepspeed if isinstance(training_args.deepspeed, str) else "--deepspeed"
    filled = copy.deepcopy(training_args.hf_deepspeed_config)  # stage 1 already ran on the parsed flags
    config = filled.config
    problems = [f"{section}: {why}" for section, why in OWN_SECTIONS.items() if section in config]
    problems += batch_problems(config, training_args.per_device_train_batch_size,
                               training_args.gradient_accumulation_steps, training_args.world_size)
    filled.mismatches = [m for m in filled.mismatches if not any(f"ds {key}=" in m for key in BATCH_KEYS)]
    stand_in = SimpleNamespace(config=SimpleNamespace(hidden_size=1))  # only which keys fill matters here
    try:
        filled.trainer_config_finalize(training_args, stand_in, num_training_steps=1)  # stage 2
    except ValueError as e:
        problems += [_mismatch(m) for m in filled.mismatches] or [str(e)]
    problems += [f"{key}: \"auto\", but neither transformers nor accelerate fills this key: set a number"
                 for key in auto_keys(config)]
    if problems:
        raise DeepSpeedConfigError(f"{where}: this DeepSpeed config cannot work with these flags:\n"
                                   + "\n".join(f"{where}: {problem}" for problem in problems))
