"""Quantized frozen LLMs: the settings (8-bit / 4-bit bitsandbytes), their ``BitsAndBytesConfig``, and the flags.

TOPA's LLM is frozen, so a bitsandbytes base fits it well: the LLM's linear layers are quantized
(embeddings, norms and ``lm_head`` stay as transformers leaves them), the adapter and any LoRA stay in
full precision. One :class:`QuantizationSettings` serves every entry point: ``TopaForCausalLM.from_pretrained(...,
quantization=...)``, lmms-eval's ``quantization=`` model_arg, ``topa train --bits`` and any command that
calls :func:`add_quantization_flags` / :func:`settings_from_args`. The choices are LLaVA's (``--bits``,
``--quant_type``, ``--double_quant``; ``--load-8bit``/``--load-4bit`` become ``--quantization 8bit|4bit``).

This module imports neither torch's heavy parts nor bitsandbytes until a config is built, so the
CLI stays fast and a missing bitsandbytes is reported only when quantization is asked for.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass

from topa_plugin.utils.errors import TopaInputError

QUANTIZATIONS = ("8bit", "4bit")
QUANT_TYPES = ("nf4", "fp4")
BITS = {16: None, 8: "8bit", 4: "4bit"}  # LLaVA's --bits -> quantization
INSTALL_HINT = "pip install 'topa-plugin[quant]'"
# Not given (None, "") means full precision; "none" says it explicitly.
_NO_QUANTIZATION = (None, "", "none")


class QuantizationError(TopaInputError, ValueError):
    """A quantization request that cannot work (unknown value, missing bitsandbytes, contradictory options)."""


@dataclass(frozen=True)
class QuantizationSettings:
    """How to load the frozen LLM.

    Attributes:
        quantization: ``"8bit"``, ``"4bit"`` or None (full precision).
        quant_type: 4-bit data type, ``"nf4"`` (default, LLaVA's) or ``"fp4"``.
        double_quant: 4-bit only: also quantize the per-block scales (LLaVA's default: on).
        compute_dtype: 4-bit only: dtype of the matmuls (``"bfloat16"``, ``"float16"``, ``"float32"``);
            None picks bf16 on an accelerator and fp32 on CPU.
    """

    quantization: str | None = None
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str | None = None

    def __post_init__(self):
        value = self.quantization.lower() if isinstance(self.quantization, str) else self.quantization
        if value in _NO_QUANTIZATION:
            value = None
        elif value not in QUANTIZATIONS:
            raise QuantizationError(f"quantization={self.quantization!r} does not exist; use one of: "
                                    f"{', '.join(QUANTIZATIONS)} or none")
        object.__setattr__(self, "quantization", value)
        if self.quant_type not in QUANT_TYPES:
            raise QuantizationError(f"quant_type={self.quant_type!r} does not exist; use one of: {', '.join(QUANT_TYPES)}")
        if self.compute_dtype not in (None, "bfloat16", "float16", "float32"):
            raise QuantizationError(f"compute_dtype={self.compute_dtype!r}; use bfloat16, float16 or float32")

    @classmethod
    def coerce(cls, value) -> QuantizationSettings:
        """A settings object from None, ``"8bit"``/``"4bit"`` or an existing settings object."""
        return value if isinstance(value, cls) else cls(value)

    @classmethod
    def from_bits(cls, bits: int, quant_type: str = "nf4", double_quant: bool = True) -> QuantizationSettings:
        """LLaVA's ``--bits 4|8|16``."""
        if bits not in BITS:
            raise QuantizationError(f"--bits {bits} does not exist; use 16 (no quantization), 8 or 4")
        return cls(BITS[bits], quant_type=quant_type, double_quant=double_quant)

    @property
    def enabled(self) -> bool:
        return self.quantization is not None

    def describe(self) -> str:
        if self.quantization == "4bit":
            return f"4-bit {self.quant_type}{' (double quant)' if self.double_quant else ''}"
        return self.quantization or "full precision"

    def resolved_compute_dtype(self, device_type: str = "cpu"):
        """The 4-bit matmul dtype: the chosen one, else bf16 on an accelerator and fp32 on CPU."""
        import torch

        if self.compute_dtype is not None:
            return getattr(torch, self.compute_dtype)
        return torch.float32 if device_type == "cpu" else torch.bfloat16

    def bnb_config(self, device_type: str = "cpu"):
        """transformers' ``BitsAndBytesConfig`` for these settings (None for full precision).

        Raises QuantizationError naming the extra to install when bitsandbytes is missing.
        """
        if not self.enabled:
            return None
        require_bitsandbytes()
        from transformers import BitsAndBytesConfig

        if self.quantization == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=self.resolved_compute_dtype(device_type))


def require_bitsandbytes() -> None:
    """Fail with one line naming the extra when bitsandbytes is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"quantization needs bitsandbytes, which is not installed: {INSTALL_HINT}")


def is_quantized(llm) -> bool:
    """Whether ``llm`` was loaded through bitsandbytes (transformers sets ``is_quantized``)."""
    return bool(getattr(llm, "is_quantized", False) or getattr(getattr(llm, "base_model", None), "is_quantized", False))


def compute_in_chosen_dtype(llm) -> None:
    """Keep bitsandbytes' 4-bit layers on their chosen compute dtype on CPU.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit``'s weight the first time it
    runs in eval mode without grad, and from then on always computes it in bfloat16 through a kernel
    that has no autograd: an fp32 compute dtype would silently become bf16, and a model evaluated once
    would then train without gradient through those layers. Turning the repacking off keeps 4-bit
    layers on the dequantize-then-matmul path in the compute dtype, for inference and training alike.
    """
    for module in llm.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def linear_weight_bytes(llm) -> int:
    """Bytes held by the weights of the LLM's linear layers (quantized storage + 4-bit scales), lm_head excluded
    (transformers keeps it in full precision)."""
    import torch

    total = 0
    for name, module in llm.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight is None or name.endswith("lm_head"):
            continue
        total += weight.numel() * weight.element_size()
        state = getattr(weight, "quant_state", None)
        if state is not None:  # absmax (and, with double quant, its own scales) of the 4-bit blocks
            total += state.absmax.numel() * state.absmax.element_size()
            if getattr(state, "state2", None) is not None:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
        scb = getattr(weight, "SCB", None)
        if scb is not None:  # 8-bit row scales
            total += scb.numel() * scb.element_size()
    return total


def parse_bool(text: str) -> bool:
    """argparse type for true/false flags given as text (``--double_quant False``)."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise QuantizationError(f"expected true or false, got {text!r}")


def add_quantization_flags(parser: argparse.ArgumentParser) -> None:
    """``--quantization 8bit|4bit|none``, ``--quant_type nf4|fp4``, ``--double_quant true|false`` on ``parser``.

    Read them back with :func:`settings_from_args`.
    """
    group = parser.add_argument_group("quantization (needs the [quant] extra)")
    group.add_argument("--quantization", default=None, choices=[*QUANTIZATIONS, "none"],
                       help="load the frozen LLM's linear layers in 8-bit or 4-bit (bitsandbytes); default: full precision")
    group.add_argument("--quant_type", default=QuantizationSettings.quant_type, choices=QUANT_TYPES,
                       help="4-bit data type (default: %(default)s)")
    group.add_argument("--double_quant", default=QuantizationSettings.double_quant, type=parse_bool,
                       help="4-bit: also quantize the block scales (default: %(default)s)")


def settings_from_args(args: argparse.Namespace) -> QuantizationSettings:
    """The settings the flags of :func:`add_quantization_flags` describe."""
    return QuantizationSettings(args.quantization, quant_type=args.quant_type, double_quant=args.double_quant)


class _OptionalKernelNotice(logging.Filter):
    """Demote bitsandbytes' CPU notice about the optional ``kernels`` package to DEBUG.

    bitsandbytes 0.50 logs "Failed to load CPU gemm_4bit_forward from kernels-community" as a warning at
    import (peft imports it, and transformers imports peft, so every command would print it): the
    ``kernels`` package would download a faster kernel from the Hugging Face Hub; without it bitsandbytes
    uses its own CPU kernel, with the same results. Only that message is demoted.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_optional_kernel_notice() -> None:
    """Install :class:`_OptionalKernelNotice` on bitsandbytes' CPU backend logger (before bitsandbytes loads)."""
    notice_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _OptionalKernelNotice) for f in notice_logger.filters):
        notice_logger.addFilter(_OptionalKernelNotice())
