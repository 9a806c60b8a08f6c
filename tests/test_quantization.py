"""Quantized loading: the settings and their flags, ``from_pretrained(quantization=...)``, exactness against
transformers' own quantized LLM with the same adapter, memory of the linear layers, and clear errors."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.helpers.lmms_fixtures import build_topa_checkpoint
from tests.helpers.quantized import transformers_quantized
from topa_plugin.modeling import TopaForCausalLM
from topa_plugin.quantization import (
    QuantizationError,
    QuantizationSettings,
    add_quantization_flags,
    linear_weight_bytes,
    settings_from_args,
)
from topa_plugin.utils.constants import BASE_DIR

bnb = pytest.importorskip("bitsandbytes")
QUESTION = ("what is the person doing", ["cooking a meal", "cleaning the kitchen", "repairing a bicycle", "painting", "playing"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, toy_llama_dir):
    return build_topa_checkpoint(tmp_path_factory.mktemp("quant_ckpt"), toy_llama_dir)


def features(seed: int = 0) -> torch.Tensor:
    return torch.randn(9, 768, generator=torch.Generator().manual_seed(seed))


# ----- settings -----
def test_settings_name_unknown_values():
    with pytest.raises(QuantizationError, match=r"quantization='3bit' does not exist; use one of: 8bit, 4bit or none"):
        QuantizationSettings("3bit")
    with pytest.raises(QuantizationError, match=r"quant_type='int4' does not exist"):
        QuantizationSettings("4bit", quant_type="int4")
    with pytest.raises(QuantizationError, match=r"--bits 2 does not exist"):
        QuantizationSettings.from_bits(2)
    assert not QuantizationSettings("none").enabled and QuantizationSettings.from_bits(16).quantization is None
    assert QuantizationSettings.from_bits(8).quantization == "8bit"


def test_4bit_config_and_compute_dtype_follow_the_device():
    settings = QuantizationSettings("4bit", quant_type="fp4", double_quant=False)
    config = settings.bnb_config("cpu")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert settings.bnb_config("cuda").bnb_4bit_compute_dtype == torch.bfloat16
    assert QuantizationSettings("4bit", compute_dtype="float16").bnb_config("cuda").bnb_4bit_compute_dtype == torch.float16
    assert QuantizationSettings("8bit").bnb_config().load_in_8bit
    assert QuantizationSettings(None).bnb_config() is None


def test_argparse_flags_round_trip():
    parser = argparse.ArgumentParser()
    add_quantization_flags(parser)
    assert settings_from_args(parser.parse_args([])) == QuantizationSettings()
    got = settings_from_args(parser.parse_args(["--quantization", "4bit", "--quant_type", "fp4", "--double_quant", "false"]))
    assert got == QuantizationSettings("4bit", quant_type="fp4", double_quant=False)


def test_missing_bitsandbytes_names_the_extra(monkeypatch, checkpoint):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(QuantizationError) as err:
        TopaForCausalLM.from_pretrained(checkpoint, quantization="8bit")
    assert str(err.value) == "quantization needs bitsandbytes, which is not installed: pip install 'topa-plugin[quant]'"
    TopaForCausalLM.from_pretrained(checkpoint)  # full precision needs no bitsandbytes


def test_unknown_quantization_is_refused_before_loading(checkpoint):
    with pytest.raises(QuantizationError, match="quantization='int8' does not exist"):
        TopaForCausalLM.from_pretrained(checkpoint, quantization="int8")


def test_importing_the_package_prints_nothing_on_stderr():
    """bitsandbytes' notice about the optional `kernels` package (logged when transformers imports peft) stays quiet."""
    done = subprocess.run([sys.executable, "-c", "import topa_plugin, transformers, peft, bitsandbytes"],
                          capture_output=True, text=True, check=True)
    assert "gemm_4bit_forward" not in done.stderr


def test_the_notice_is_demoted_to_debug_not_dropped(caplog):
    notice = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.DEBUG, logger="bitsandbytes.backends.cpu.ops"):
        notice.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no kernels")
        notice.warning("some other bitsandbytes warning")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "Failed to load CPU gemm_4bit_forward from kernels-community: no kernels."),
        ("WARNING", "some other bitsandbytes warning")]


# ----- loading -----
@pytest.mark.parametrize("quantization, layer", [("8bit", "Linear8bitLt"), ("4bit", "Linear4bit")])
def test_from_pretrained_quantizes_the_llm_linears_only(checkpoint, quantization, layer):
    model = TopaForCausalLM.from_pretrained(checkpoint, quantization=quantization)
    kinds = {type(m).__name__ for name, m in model.llm.named_modules() if name.endswith(("_proj", "lm_head"))}
    assert kinds == {layer, "Linear"}  # lm_head stays a float Linear, as transformers leaves it
    assert type(model.llm.lm_head).__name__ == "Linear"
    assert model.llm.get_input_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 and not isinstance(p, bnb.nn.Params4bit) for p in model.adapter.parameters())
    assert model.memory is not None and model.processor is not None
    scores = model.score_choices(features(), *QUESTION)
    assert scores.shape == (5,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_same_scores_as_transformers_own_quantized_llm_with_the_same_adapter(checkpoint, quantization):
    """The plugin's quantized TOPA = transformers' own quantized LLM (same BitsAndBytesConfig) + the same adapter."""
    ours = TopaForCausalLM.from_pretrained(checkpoint, quantization=quantization)
    theirs = TopaForCausalLM(ours.config, llm=transformers_quantized(checkpoint / BASE_DIR, quantization))
    theirs.adapter.load_state_dict(ours.adapter.state_dict())
    theirs.memory, theirs.processor = ours.memory, ours.processor
    theirs.eval()
    for seed in range(3):
        assert (ours.score_choices(features(seed), *QUESTION) - theirs.score_choices(features(seed), *QUESTION)).abs().max() <= 1e-4
    full = TopaForCausalLM.from_pretrained(checkpoint).score_choices(features(0), *QUESTION)
    assert (ours.score_choices(features(0), *QUESTION) - full).abs().max() > 1e-4  # it is quantized


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_with_closed_gates_topa_is_transformers_own_quantized_llm(checkpoint, quantization):
    """gate1 = gate2 = 0 and no video: TOPA's attention adds nothing, so its logits are the quantized LLM's own."""
    model = TopaForCausalLM.from_pretrained(checkpoint, quantization=quantization)
    with torch.no_grad():
        model.adapter.gate1.zero_()
        model.adapter.gate2.zero_()
    reference = transformers_quantized(checkpoint / BASE_DIR, quantization)
    for module in reference.modules():  # the same compute path as the plugin's (topa_plugin.quantization)
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    ids = torch.tensor([model.processor.encode_open_ended("what is the dog doing", None).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(input_ids=ids).logits, rtol=0, atol=1e-4)


def test_4bit_options_reach_the_layers(checkpoint):
    model = TopaForCausalLM.from_pretrained(checkpoint, quantization=QuantizationSettings("4bit", quant_type="fp4",
                                                                                           double_quant=False))
    layer = model.llm.model.layers[0].self_attn.q_proj
    assert layer.weight.quant_state.quant_type == "fp4" and not layer.weight.quant_state.nested
    assert layer.compute_dtype == torch.float32
    nested = TopaForCausalLM.from_pretrained(checkpoint, quantization="4bit").llm.model.layers[0].self_attn.q_proj
    assert nested.weight.quant_state.quant_type == "nf4" and nested.weight.quant_state.nested


def test_4bit_linear_weights_take_at_most_035_of_bf16(checkpoint):
    full = AutoModelForCausalLM.from_pretrained(checkpoint / BASE_DIR, dtype=torch.bfloat16)
    quantized = TopaForCausalLM.from_pretrained(checkpoint, quantization="4bit").llm
    eight = TopaForCausalLM.from_pretrained(checkpoint, quantization="8bit").llm
    ratio4 = linear_weight_bytes(quantized) / linear_weight_bytes(full)
    ratio8 = linear_weight_bytes(eight) / linear_weight_bytes(full)
    assert 0.25 <= ratio4 <= 0.35, ratio4  # 0.5 byte a weight + block scales, vs 2 bytes
    assert 0.5 <= ratio8 <= 0.6, ratio8
