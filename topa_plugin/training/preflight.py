"""Pre-flight of a training launch: parse its flags and check what needs no model weights, before the model loads.

Every entry point runs it (``topa train``, and ``python -m topa_plugin.training.train`` under torchrun or
deepspeed, on each rank: it only reads configs). Without it a path typo surfaces after the tokenizer or LLM
started loading, as a traceback on every rank. It refuses, with one ``LaunchError`` line naming the flag or
file: what the parser refuses (``training.arguments``), a ``--model_name_or_path`` whose config does not
load, an ``--init_from`` that is not a TOPA plugin directory or whose fixed settings the flags contradict,
a ``--data_path`` that is not a file, and ``--bits 8|4`` where it cannot work (bitsandbytes missing, FSDP,
4-bit options without ``--bits 4``).
"""

from __future__ import annotations

from pathlib import Path

import transformers

from topa_plugin.configuration import TopaConfig
from topa_plugin.quantization import QuantizationError, require_bitsandbytes
from topa_plugin.training.arguments import (
    DataArguments,
    LaunchError,
    ModelArguments,
    TrainingArguments,
    build_parser,
    parse_flags,
    with_config,
)
from topa_plugin.training.deepspeed_config import DeepSpeedConfigError
from topa_plugin.utils.constants import LORA_FILE
from topa_plugin.utils.errors import first_line

# Flags whose value an --init_from checkpoint fixes: giving a different one is a contradiction.
CHECKPOINT_FIXED = ("adapter_len", "max_feats")


def _parse(argv: list[str], prog: str) -> tuple[tuple[ModelArguments, DataArguments, TrainingArguments], set[str]]:
    """(the parsed arguments, the flag names given on the command line or in --config)."""
    parser = build_parser(prog)
    try:
        flags = with_config(argv, parser)
        parsed = parse_flags(parser, flags)
    except LaunchError:
        raise
    except DeepSpeedConfigError as exc:  # lists every bad key, one per line
        raise LaunchError(str(exc)) from None
    except (OSError, ValueError) as exc:  # transformers' own refusals of a flag combination
        raise LaunchError(first_line(exc)) from None
    return parsed, {flag[2:].split("=", 1)[0] for flag in flags if flag.startswith("--")}


def _check_llm(name: str, hint: str) -> None:
    """--model_name_or_path must name a loadable Hugging Face model (a local folder, or a cached hub id)."""
    try:
        transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise LaunchError(f"--model_name_or_path {name}: not a Hugging Face model folder or reachable hub id{hint} "
                          f"({first_line(exc)})") from None


def _check_init_from(model_args: ModelArguments, given: set[str]) -> None:
    """--init_from must be a TOPA plugin directory, and flags it fixes must not say otherwise."""
    directory = Path(model_args.init_from)
    if not (directory / "config.json").is_file():
        raise LaunchError(f"--init_from {directory}: no config.json there (not a TOPA plugin directory)")
    try:
        config = TopaConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise LaunchError(f"--init_from {directory / 'config.json'}: not a TOPA config ({first_line(exc)})") from None
    if model_args.lora_r and (directory / LORA_FILE).exists():
        raise LaunchError(f"--lora_r {model_args.lora_r} with --init_from {directory}, which already holds an unmerged "
                          f"LoRA ({LORA_FILE}); drop --lora_r to train on with it frozen")
    for name in CHECKPOINT_FIXED:
        value = getattr(model_args, name)
        if name in given and value != getattr(config, name):
            raise LaunchError(f"--{name} {value} contradicts --init_from {directory}, whose {name} is "
                              f"{getattr(config, name)}; drop --{name}")


def _check_quantization(model_args: ModelArguments, training_args: TrainingArguments, given: set[str]) -> None:
    """--bits 8|4 needs bitsandbytes and no FSDP; 4-bit options need --bits 4.

    FSDP flattens each wrapped block's parameters into one tensor of one dtype: int8/uint8 quantized weights
    beside float norms cannot be flattened together, and their scales live outside the tensors. DeepSpeed
    ZeRO-2 and ZeRO-3 both train on a bitsandbytes LLM (ZeRO-3 partitions the quantized weights too;
    integration_tests/test_train_quantized.py runs both on two processes and compares them)."""
    bits = model_args.bits
    options = sorted(f"--{name}" for name in ("quant_type", "double_quant") if name in given)
    if options and bits != 4:
        raise LaunchError(f"{' and '.join(options)} apply to --bits 4 only (this run has --bits {bits})")
    if bits == 16:
        return
    try:
        require_bitsandbytes()
    except QuantizationError as exc:
        raise LaunchError(f"--bits {bits}: {exc}") from None
    if training_args.fsdp:
        raise LaunchError(f"--bits {bits} cannot run under FSDP (--fsdp): it flattens each block's weights into one "
                          "tensor of one dtype, and bitsandbytes' int8/uint8 weights sit beside float norms with their "
                          "scales outside the tensors; use DDP or DeepSpeed ZeRO-2/3 (configs/zero2.json, zero3.json)")


def _check_data(data_args: DataArguments) -> None:
    path = Path(data_args.data_path)
    if path.is_dir():
        raise LaunchError(f"--data_path {path}: is a folder; give the TextVid or video-QA file")
    if not path.is_file():
        raise LaunchError(f"--data_path {path}: no such file")


def preflight(argv: list[str], prog: str) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The parsed arguments, once every check passed; else ``LaunchError`` (``--help`` prints and exits first)."""
    (model_args, data_args, training_args), given = _parse(argv, prog)
    if model_args.model_name_or_path:
        hint = "; with --init_from the LLM comes from the checkpoint, drop it" if model_args.init_from else ""
        _check_llm(model_args.model_name_or_path, hint)
    if model_args.init_from:
        _check_init_from(model_args, given)
    _check_quantization(model_args, training_args, given)
    _check_data(data_args)
    return model_args, data_args, training_args
