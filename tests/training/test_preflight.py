"""The pre-flight's quantization checks (the one-line refusals themselves are in tests/commands/test_errors.py)."""

from __future__ import annotations

import importlib.util

import pytest

from topa_plugin.textvid import sample_path
from topa_plugin.training.arguments import LaunchError
from topa_plugin.training.preflight import preflight
from topa_plugin.utils.constants import LORA_FILE

PROG = "topa train"


def argv(tmp_path, *flags):
    return ["--data_path", str(sample_path()), "--feature_folder", str(tmp_path), "--output_dir", str(tmp_path / "out"),
            "--report_to", "none", "--use_cpu", "True", *flags]


def test_bits_without_bitsandbytes_names_the_extra(tmp_path, toy_llama_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(LaunchError, match=r"^--bits 4: quantization needs bitsandbytes, which is not installed: "
                                          r"pip install 'topa-plugin\[quant\]'$"):
        preflight(argv(tmp_path, "--model_name_or_path", str(toy_llama_dir), "--bits", "4"), PROG)
    model_args, _, _ = preflight(argv(tmp_path, "--model_name_or_path", str(toy_llama_dir)), PROG)  # 16: no need
    assert model_args.bits == 16 and not model_args.quantization.enabled


def test_bits_and_4bit_options_become_the_settings(tmp_path, toy_llama_dir):
    model_args, _, _ = preflight(argv(tmp_path, "--model_name_or_path", str(toy_llama_dir), "--bits", "4",
                                      "--quant_type", "fp4", "--double_quant", "False"), PROG)
    settings = model_args.quantization
    assert (settings.quantization, settings.quant_type, settings.double_quant) == ("4bit", "fp4", False)


def test_lora_on_an_init_from_that_already_holds_one_is_refused(tmp_path, toy_llama_dir):
    from tests.helpers.lmms_fixtures import build_topa_checkpoint

    plugin = build_topa_checkpoint(tmp_path / "plugin", toy_llama_dir)
    (plugin / LORA_FILE).write_bytes(b"")
    with pytest.raises(LaunchError, match=r"--lora_r 4 with --init_from .*plugin, which already holds an unmerged LoRA"):
        preflight(argv(tmp_path, "--init_from", str(plugin), "--task", "finetune", "--lora_r", "4"), PROG)
