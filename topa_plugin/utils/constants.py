"""The plugin-directory format in one place: the files a TOPA directory holds and the dtype names.

A plugin directory is ``config.json`` + ``adapter_model.safetensors`` (the trainables), optionally
``memory.safetensors`` (the memory bank), ``topa_processor.json`` + tokenizer files, ``lora_model.safetensors`` +
``lora_config.json`` (LoRA kept unmerged: training checkpoints, and final outputs trained on a quantized base)
and ``base/`` (a self-contained frozen LLM).
"""

from __future__ import annotations

import torch

ADAPTER_FILE = "adapter_model.safetensors"
MEMORY_FILE = "memory.safetensors"
# Beside a memory bank ``X.safetensors``: ``X.provenance.jsonl``, where each memory row came from (``topa memory build``).
PROVENANCE_SUFFIX = ".provenance.jsonl"
PROCESSOR_FILE = "topa_processor.json"
LORA_FILE = "lora_model.safetensors"
LORA_CONFIG_FILE = "lora_config.json"
BASE_DIR = "base"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

# Names accepted wherever a dtype is given as text (CLI flags, model_args, configs).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype name (``auto``: bfloat16 on CUDA, else float32) as the torch dtype inference loads the LLM in."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]
