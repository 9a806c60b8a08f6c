"""Tiny random decoders of every family TOPA supports, saved as Hugging Face model directories.

Each keeps what makes its family different (GQA, biases, sliding windows shorter than a TOPA
prompt, q/k norms, fused projections, soft-capping, Llama-3.1 rope scaling) at a size a
float64 oracle runs in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Shorter than the toy tokenizer's prompts (open-ended about 45 tokens, multiple-choice over
# 100) and longer than the video span's end (position 29), so that some queries see part of
# the video through the window and later ones none of it.
WINDOW = 40

_COMMON = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}
_LLAMA31_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # small, so that the scaling reaches the toy's frequencies
}

# name -> (transformers config class, what differs from _COMMON)
FAMILY_CONFIGS = {
    "llama2": ("LlamaConfig", {"num_key_value_heads": 4}),  # multi-head, as Llama-2 7B/13B
    "llama3.1": ("LlamaConfig", {"max_position_embeddings": 1024, "rope_parameters": _LLAMA31_ROPE}),
    "mistral": ("MistralConfig", {"sliding_window": WINDOW}),  # every layer sliding
    "qwen2": ("Qwen2Config", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", {"head_dim": 16, "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2}),
    "gemma": ("GemmaConfig", {"head_dim": 16}),
    "gemma2": ("Gemma2Config", {
        "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 24, "attn_logit_softcapping": 3.0,
        "final_logit_softcapping": 8.0,
    }),
    "gemma3": ("Gemma3TextConfig", {"head_dim": 16, "sliding_window": WINDOW, "sliding_window_pattern": 2, "query_pre_attn_scalar": 24}),
    "phi3": ("Phi3Config", {"sliding_window": WINDOW}),
    "olmo2": ("Olmo2Config", {}),
}


def toy_decoder_config(family: str, vocab_size: int, bos_id: int = 1, eos_id: int = 2):
    import transformers

    class_name, extra = FAMILY_CONFIGS[family]
    kwargs = {**_COMMON, "vocab_size": vocab_size, "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": None}
    kwargs.update(extra)
    return getattr(transformers, class_name)(**kwargs)


def build_toy_decoder(out_dir: str | Path, family: str, vocab_size: int, seed: int = 0):
    """A random decoder of ``family`` with fan-in weights, so that every sublayer moves the logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(toy_decoder_config(family, vocab_size))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:  # Gemma stores w of (1 + w)
                unit = 0.0 if family.startswith("gemma") else 1.0
                param.copy_(unit + 0.3 * torch.randn(param.shape, generator=generator))
            elif param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5)
            else:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
        model.get_input_embeddings().weight.normal_(0.0, 1.0, generator=generator)
        model.get_output_embeddings().weight.mul_(4.0)
    model.save_pretrained(out_dir)
    return Path(out_dir)
