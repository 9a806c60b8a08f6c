"""Quantized copies of the test models: a bitsandbytes LLM loaded through transformers' own
``BitsAndBytesConfig`` (not through topa_plugin), and the float weights a 4-bit model really computes with."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

# The configs the plugin's "8bit" / "4bit" must amount to on CPU (QuantizationSettings' defaults).
BNB_CONFIGS = {
    "8bit": lambda: BitsAndBytesConfig(load_in_8bit=True),
    "4bit": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.float32),
}


def transformers_quantized(base, bits: str):
    """transformers' own quantized LLM (same BitsAndBytesConfig), fp32 elsewhere, on CPU."""
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, quantization_config=BNB_CONFIGS[bits](),
                                                device_map={"": "cpu"})


def dequantized_view(llm) -> SimpleNamespace:
    """An object with ``config`` and ``state_dict()`` whose 4-bit weights are dequantized: what a 4-bit layer
    multiplies with when its compute dtype is fp32 (the float64 oracle reads it like a float model)."""
    import bitsandbytes.functional as bnb_functional

    state = {}
    for name, module in llm.named_modules():
        weight = getattr(module, "weight", None)
        if getattr(weight, "quant_state", None) is not None:
            state[f"{name}.weight"] = bnb_functional.dequantize_4bit(weight.data, weight.quant_state).float()
    for name, tensor in llm.state_dict().items():
        if name.endswith(".weight") and name in state:
            continue
        if not any(name.endswith(suffix) for suffix in (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                                        ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")):
            state.setdefault(name, tensor)
    return SimpleNamespace(config=llm.config, state_dict=lambda: state)
