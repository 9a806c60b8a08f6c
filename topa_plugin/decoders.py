"""Which decoder families TOPA supports, and each family's frozen key/value path for the adapter prompts.

TOPA's rule (docs/method.md section 3): a layer's prompt keys and values are what that layer's
own frozen key/value map makes of the prompt vectors, without positional encoding. The map is
the k/v projections plus whatever the family does to keys before the rotary embedding:

=====================  ==========================================================
plain                  ``k_proj``, ``v_proj`` (biases included where the family has them)
per-head key norm      ``k_norm`` over each head's ``head_dim`` after ``k_proj`` (Qwen3, Gemma3)
whole-projection norm  ``k_norm`` over all of ``k_proj``'s output, then the split into heads (OLMo2)
fused projection       the key and value slices of ``qkv_proj``'s output (Phi3)
=====================  ==========================================================

A family not listed here is refused when the model is built: its attention may transform keys
in a way TOPA would silently skip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


def _heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[P, n * head_dim] -> [1, n, P, head_dim]."""
    return states.view(1, states.shape[0], -1, head_dim).transpose(1, 2)


def plain_key_values(module: nn.Module, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _heads(module.k_proj(prompts), module.head_dim), _heads(module.v_proj(prompts), module.head_dim)


def head_norm_key_values(module: nn.Module, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keys = module.k_norm(module.k_proj(prompts).view(prompts.shape[0], -1, module.head_dim))
    return keys.unsqueeze(0).transpose(1, 2), _heads(module.v_proj(prompts), module.head_dim)


def projection_norm_key_values(module: nn.Module, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keys = module.k_norm(module.k_proj(prompts))
    return _heads(keys, module.head_dim), _heads(module.v_proj(prompts), module.head_dim)


def fused_key_values(module: nn.Module, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    config = module.config
    query_size = config.num_attention_heads * module.head_dim
    key_size = config.num_key_value_heads * module.head_dim
    qkv = module.qkv_proj(prompts)
    keys, values = qkv[:, query_size : query_size + key_size], qkv[:, query_size + key_size :]
    return _heads(keys, module.head_dim), _heads(values, module.head_dim)


@dataclass(frozen=True)
class DecoderFamily:
    """One supported family: its prompt key/value map and the attention submodules the map reads."""

    key_values: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    modules: tuple[str, ...]


_PLAIN = DecoderFamily(plain_key_values, ("k_proj", "v_proj"))
_HEAD_NORM = DecoderFamily(head_norm_key_values, ("k_proj", "k_norm", "v_proj"))

# Keyed by the Hugging Face config's ``model_type``.
FAMILIES: dict[str, DecoderFamily] = {
    "llama": _PLAIN,
    "mistral": _PLAIN,
    "qwen2": _PLAIN,
    "gemma": _PLAIN,
    "gemma2": _PLAIN,
    "qwen3": _HEAD_NORM,
    "gemma3_text": _HEAD_NORM,
    "olmo2": DecoderFamily(projection_norm_key_values, ("k_proj", "k_norm", "v_proj")),
    "phi3": DecoderFamily(fused_key_values, ("qkv_proj",)),
}


def decoder_family(llm: nn.Module) -> DecoderFamily:
    """The family of ``llm``, after checking every attention layer has what its key/value map reads.

    Raises ValueError naming the model type, or the layer and the missing submodule.
    """
    model_type = getattr(llm.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"TOPA does not support decoder model_type {model_type!r}: supported are {', '.join(sorted(FAMILIES))}. "
            "A new family needs its frozen prompt key/value map in topa_plugin.decoders.FAMILIES."
        )
    family = FAMILIES[model_type]
    layers = getattr(getattr(llm, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(llm).__name__} ({model_type}): no model.layers; TOPA needs a decoder-only causal LM")
    for index, layer in enumerate(layers):
        attention = getattr(layer, "self_attn", None)
        needed = ("head_dim", "layer_idx", *family.modules)
        missing = [name for name in needed if attention is None or not hasattr(attention, name)]
        if missing:
            raise ValueError(
                f"{type(llm).__name__} ({model_type}) layer {index}: self_attn lacks {', '.join(missing)}, "
                "which TOPA's prompt key/value path for this family reads"
            )
    return family
