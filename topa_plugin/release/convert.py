"""Convert the authors' TOPA release (also called "official") into a plugin directory for :class:`TopaForCausalLM`.

The release is a Meta-format Llama (``params.json``, ``consolidated.*.pth``, ``tokenizer.model``)
plus ``checkpoint_N.pth`` (trainables, optimizer, ``args``) and ``memory.pkl``. Every file is
read through :mod:`topa_plugin.utils.safeload`. With ``llama_dir`` the output is self-contained (the
Hugging Face base goes to ``OUT/base``); with ``base`` only the TOPA parts are written and the
config references the existing Hugging Face model (the route for Llama-3-8B, whose Meta
directory has a tiktoken tokenizer).
"""

from __future__ import annotations

import argparse
import re
import shutil
import warnings
from pathlib import Path

import torch

from topa_plugin.release.meta_llama import (
    ConversionError,
    find_meta_files,
    meta_device_llm,
    meta_llama_config,
    write_hf_base,
)
from topa_plugin.utils.constants import BASE_DIR, DTYPES
from topa_plugin.utils.safeload import load_release_pickle

RELEASE_MEMORY_ROWS = 1_000_000  # the release keeps memory.pkl's first 1M rows

_GATE_KEY = re.compile(r"layers\.(\d+)\.attention\.(gate1|gate2)")


def read_release_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], argparse.Namespace]:
    """The trainables (``model``) and training ``args`` of a release ``checkpoint_N.pth``."""
    path = Path(path)
    content = load_release_pickle(path)
    if not isinstance(content, dict) or "model" not in content:
        raise ConversionError(f"{path}: expected a dict with a 'model' entry (a TOPA release checkpoint)")
    model, args = content["model"], content.get("args")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise ConversionError(f"{path}: 'model' must map names to tensors")
    if not isinstance(args, argparse.Namespace):
        raise ConversionError(f"{path}: 'args' must be the training argparse.Namespace, got {type(args).__name__}")
    return {k: v.detach() for k, v in model.items()}, args


def _arg(args: argparse.Namespace, name: str, source: Path) -> int:
    value = getattr(args, name, None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConversionError(f"{source}: args.{name} must be a positive int, got {value!r}")
    return value


def release_adapter_state(model: dict[str, torch.Tensor], args: argparse.Namespace, text_config, source: Path):
    """Map release trainables onto TopaForCausalLM's adapter; returns (state dict, TopaConfig fields).

    Release gates ``layers.{i}.attention.gate1/gate2`` [1, H, 1, 1] exist for every layer; adapter
    slot s uses LLM layer ``n_layers - adapter_layer + s``, so only those rows are taken.
    """
    adapter_len, adapter_layer, max_feats = (_arg(args, n, source) for n in ("adapter_len", "adapter_layer", "max_feats"))
    n_layers, n_heads, d = text_config.num_hidden_layers, text_config.num_attention_heads, text_config.hidden_size
    if adapter_layer > n_layers:
        raise ConversionError(f"{source}: args.adapter_layer={adapter_layer} exceeds the LLM's {n_layers} layers")
    for key in model:
        match = _GATE_KEY.fullmatch(key)
        if match:
            if int(match.group(1)) >= n_layers:
                raise ConversionError(f"{source}: {key} refers to a layer beyond the LLM's {n_layers} layers")
        elif key not in ("adapter_query.weight", "visual_proj.weight", "temporal_emb.weight"):
            raise ConversionError(f"{source}: unexpected trainable {key!r} in 'model'")

    def take(key: str, shape: tuple[int | None, ...], why: str) -> torch.Tensor:
        if key not in model:
            raise ConversionError(f"{source}: 'model' has no {key!r}")
        tensor = model[key]
        if tensor.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
            raise ConversionError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected {shape} ({why})")
        return tensor.float()

    llm = f"hidden size {d}, {n_heads} heads"
    visual_proj = take("visual_proj.weight", (d, None), llm)
    state = {
        "adapter_query.weight": take(
            "adapter_query.weight", (adapter_len * adapter_layer, d), f"args.adapter_len*adapter_layer, {llm}"
        ),
        "visual_proj.weight": visual_proj,
        "temporal_emb.weight": take("temporal_emb.weight", (max_feats, d), f"args.max_feats, {llm}"),
    }
    first = n_layers - adapter_layer
    for gate in ("gate1", "gate2"):
        rows = [take(f"layers.{i}.attention.{gate}", (1, n_heads, 1, 1), llm) for i in range(first, n_layers)]
        state[gate] = torch.stack([row.reshape(n_heads) for row in rows])
    fields = {
        "feature_dim": visual_proj.shape[1],
        "max_feats": max_feats,
        "adapter_len": adapter_len,
        "adapter_layer": adapter_layer,
        "video_bias_init": -float(getattr(args, "bias", 3.5)),
        # The release's forward hard-codes softmax(100 * M f), whatever args.tau says.
        "memory_temperature": 100.0,
    }
    return state, fields


def _base_reference(base: str) -> str:
    """Local paths become absolute (the plugin directory may move); hub ids stay as given."""
    return str(Path(base).resolve()) if Path(base).exists() else base


def convert_official(
    out: str | Path,
    checkpoint: str | Path,
    *,
    llama_dir: str | Path | None = None,
    base: str | None = None,
    memory: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    memory_rows: int | None = RELEASE_MEMORY_ROWS,
    progress: bool = True,
) -> Path:
    """Convert a TOPA release into a plugin directory loadable by ``TopaForCausalLM.from_pretrained(out)``.

    Writes into ``out.partial`` and renames at the end, so ``out`` is either complete or absent.

    Args:
        out: the plugin directory to create (absent or empty).
        checkpoint: the release's ``checkpoint_N.pth`` (read through the restricted unpickler).
        llama_dir: a Meta-format Llama directory; the output is self-contained (``out/base``).
        base: instead of ``llama_dir``, a Hugging Face id or path the output refers to (only the
            TOPA parts are written; the route for Llama-3-8B).
        memory: the release's ``memory.pkl`` (or a memory ``.safetensors``) for zero-shot projection.
        dtype: dtype of the converted base weights (default: the shards' own).
        memory_rows: keep the first N memory rows (the release used 1M); None keeps all.
        progress: show progress bars while converting shards.

    Returns:
        ``out``.

    Raises:
        ConversionError: inconsistent inputs; the message names the file and the field.
    """
    from transformers import AutoConfig, AutoTokenizer

    from topa_plugin.configuration import TopaConfig
    from topa_plugin.features.memory import load_memory
    from topa_plugin.modeling import TopaForCausalLM
    from topa_plugin.processing import TopaProcessor

    if (llama_dir is None) == (base is None):
        raise ConversionError("give exactly one of llama_dir (Meta-format Llama) or base (Hugging Face model)")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    if memory_rows is not None and memory_rows < 1:
        raise ConversionError(f"memory_rows must be a positive number of rows or None (all), got {memory_rows}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out}: output directory exists and is not empty")
    checkpoint = Path(checkpoint)
    trainables, args = read_release_checkpoint(checkpoint)
    memory_tensor = None
    if memory is not None:  # read before the big part so a bad file fails fast
        memory_tensor = load_memory(memory)[:memory_rows]

    if llama_dir is not None:
        files = find_meta_files(llama_dir)
        text_config, base_ref = meta_llama_config(files), BASE_DIR
    else:
        text_config, base_ref = AutoConfig.from_pretrained(base), _base_reference(base)
        text_config.dtype = dtype or text_config.dtype
    adapter_state, fields = release_adapter_state(trainables, args, text_config, checkpoint)
    if memory_tensor is not None and memory_tensor.shape[1] != fields["feature_dim"]:
        raise ConversionError(
            f"{memory}: memory rows have {memory_tensor.shape[1]} features, "
            f"{checkpoint}'s visual_proj expects {fields['feature_dim']}"
        )
    if fields["adapter_layer"] < text_config.num_hidden_layers:
        warnings.warn(
            f"{checkpoint}: adapter_layer={fields['adapter_layer']} < {text_config.num_hidden_layers} layers; the "
            "release skipped the lower layers at run time, the plugin runs all of them (docs/method.md section 7)",
            stacklevel=2,
        )

    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        if llama_dir is not None:
            llm, tokenizer = write_hf_base(files, text_config, partial / BASE_DIR, dtype=dtype, progress=progress)
        else:
            llm, tokenizer = meta_device_llm(text_config), AutoTokenizer.from_pretrained(base)
        model = TopaForCausalLM(TopaConfig(text_config=llm.config, base_model_name_or_path=base_ref, **fields), llm)
        model.adapter.load_state_dict(adapter_state, strict=True)
        model.memory = memory_tensor
        model.processor = TopaProcessor(tokenizer, max_feats=fields["max_feats"])
        model.save_pretrained(partial)
    except BaseException:
        shutil.rmtree(partial)
        raise
    partial.rename(out)
    return out
