"""Training arguments: launch scripts and YAML parse through the real parser with the release numbers."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from topa_plugin.training import llava_compat
from topa_plugin.training.arguments import LaunchError, check_world_size, parse_arguments
from topa_plugin.training.trainer import decays

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REQUIRED = ["--data_path", "d.jsonl", "--feature_folder", "feats", "--model_name_or_path", "llm", "--use_cpu", "True"]

# (effective batch, base lr, epochs, max_seq_len) from the release scripts (docs/method.md section 5)
RELEASE = {
    "pretrain_llama2_7b": (288, 5e-3, 20, 150),
    "pretrain_llama2_13b": (128, 8e-3, 20, 150),
    "pretrain_llama3_8b": (448, 5e-3, 20, 150),
    "finetune_nextqa_llama2_13b": (384, 5e-3, 5, 128),
    "finetune_star_llama2_13b": (384, 5e-3, 5, 128),
    "finetune_tvqa_llama2_13b": (384, 5e-3, 5, 128),
}
# Recipes beyond the release, scaled from pretrain_llama3_8b (their headers say how):
# (effective batch on 4 GPUs, base lr, adapter_layer = the model's depth)
SCALED = {"pretrain_qwen2.5_7b": (448, 5e-3, 28), "pretrain_llama3.1_8b": (448, 5e-3, 32)}


def hide_llava(monkeypatch):
    """Make every `import llava...` fail as if llava-torch were not installed (cached submodules too)."""
    for name in [n for n in sys.modules if n == "llava" or n.startswith("llava.")] + ["llava"]:
        monkeypatch.setitem(sys.modules, name, None)


def script_argv(script: Path) -> list[str]:
    """The arguments the script hands to topa_plugin.training.train (bash expands them; printf shows them)."""
    env = {**os.environ, "LAUNCHER": r"printf %s\0"}
    out = subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True).stdout
    argv = out.decode().split("\0")[:-1]
    assert argv[0] == "topa_plugin.training.train"
    return argv[1:]


def test_every_release_setting_has_a_script():
    assert sorted(p.stem for p in CONFIGS.glob("*.sh") if p.name != "launch.sh") == sorted(RELEASE)


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_launch_script_parses_with_the_release_hyperparameters(name):
    script = CONFIGS / f"{name}.sh"
    text = script.read_text()
    gpus = int(re.search(r"^NUM_GPUS=\$\{NUM_GPUS:-(\d+)\}$", text, re.MULTILINE).group(1))
    stated = int(re.search(r"^EFFECTIVE_BATCH=(\d+)\b", text, re.MULTILINE).group(1))
    argv = script_argv(script)
    # DeepSpeed is not installed here: check its config file, parse the rest.
    ds_index = argv.index("--deepspeed")
    ds_config = json.loads(Path(argv[ds_index + 1]).read_text())
    assert ds_config["zero_optimization"]["stage"] in (2, 3)
    assert ds_config["train_micro_batch_size_per_gpu"] == "auto"
    del argv[ds_index:ds_index + 2]
    model_args, data_args, args = parse_arguments(argv + ["--use_cpu", "True"])

    effective, blr, epochs, max_seq_len = RELEASE[name]
    per_process = args.per_device_train_batch_size * args.gradient_accumulation_steps
    assert stated == effective == per_process * gpus
    assert args.base_learning_rate == pytest.approx(blr)
    assert args.learning_rate == pytest.approx(blr * per_process / 256)  # one process here
    assert args.num_train_epochs == epochs and args.warmup_steps == pytest.approx(1 / epochs)
    assert data_args.max_seq_len == max_seq_len
    assert (args.adam_beta1, args.adam_beta2, args.weight_decay) == (0.9, 0.95, 0.1)
    assert args.lr_scheduler_type.value == "cosine" and args.bf16
    assert model_args.adapter_len == 50 and model_args.max_feats == 10
    if name.startswith("pretrain"):
        assert data_args.task == "pretrain" and data_args.answer_balance
    else:
        assert data_args.task == "finetune" and model_args.init_from and data_args.layout in name


@pytest.mark.parametrize("name", sorted(SCALED))
def test_scaled_recipes_parse_with_the_llama3_8b_hyperparameters(name):
    model_args, data_args, args = parse_arguments(["--config", name, "--use_cpu", "True"])
    effective, blr, depth = SCALED[name]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * 4 == effective
    assert args.base_learning_rate == pytest.approx(blr) and args.num_train_epochs == 20
    assert model_args.adapter_layer == depth and model_args.adapter_len == 50 and data_args.max_seq_len == 150
    assert data_args.task == "pretrain" and args.bf16


def test_zero3_config_is_valid_json():
    config = json.loads((CONFIGS / "zero3.json").read_text())
    assert config["zero_optimization"]["stage"] == 3


def test_yaml_values_are_defaults_that_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data_path: a.jsonl\nfeature_folder: f\nmodel_name_or_path: m\nmax_seq_len: 99\n"
                      "per_device_train_batch_size: 3\ngradient_accumulation_steps: 2\nbase_learning_rate: 2.56e-2\n")
    _, data_args, args = parse_arguments(["--config", str(config), "--max_seq_len", "120", "--use_cpu", "True"])
    assert data_args.max_seq_len == 120 and data_args.data_path == "a.jsonl"
    assert args.learning_rate == pytest.approx(2.56e-2 * 6 / 256)


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("data_path: a.jsonl\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(config))}: learning_rat: unknown argument"):
        parse_arguments(["--config", str(config)])


def test_warmup_ratio_becomes_a_ratio_of_warmup_steps():
    _, _, args = parse_arguments(REQUIRED + ["--warmup_ratio", "0.05"])
    assert args.warmup_steps == 0.05 and args.get_warmup_steps(1000) == 50
    with pytest.raises(ValueError, match="not both"):
        parse_arguments(REQUIRED + ["--warmup_ratio", "0.05", "--warmup_steps", "10"])


def test_unset_data_settings_take_the_datasets_release_defaults_and_overlong_is_validated():
    import inspect

    from topa_plugin.training.textvid_dataset import TextVidDataset
    from topa_plugin.training.videoqa_dataset import VideoQADataset

    _, data_args, _ = parse_arguments(REQUIRED)
    unset = (data_args.max_seq_len, data_args.answer_balance, data_args.check_lengths, data_args.overlong)
    assert unset == (None, None, None, None)
    textvid, videoqa = (inspect.signature(d).parameters for d in (TextVidDataset, VideoQADataset))
    # the release: pre-alignment 150 tokens with balanced answers, finetuning 128 without
    assert (textvid["max_seq_len"].default, textvid["answer_balance"].default) == (150, True)
    assert (videoqa["max_seq_len"].default, videoqa["answer_balance"].default) == (128, False)
    assert all(d["check_lengths"].default is True and d["overlong"].default == "error" for d in (textvid, videoqa))
    _, data_args, _ = parse_arguments(REQUIRED + ["--overlong", "skip", "--check_lengths", "False"])
    assert data_args.overlong == "skip" and data_args.check_lengths is False
    with pytest.raises(LaunchError, match=r"argument --overlong: invalid choice: 'truncate'"):
        parse_arguments(REQUIRED + ["--overlong", "truncate"])


def test_missing_inputs_are_rejected():
    with pytest.raises(LaunchError, match="--data_path and --feature_folder are required"):
        parse_arguments(["--model_name_or_path", "llm", "--use_cpu", "True"])
    with pytest.raises(LaunchError, match="give --model_name_or_path"):
        parse_arguments(["--data_path", "d", "--feature_folder", "f", "--use_cpu", "True"])
    with pytest.raises(LaunchError, match="lora_r"):
        parse_arguments(REQUIRED + ["--lora_r", "8"])


def test_topa_train_help_lists_llava_and_topa_flags(capsys):
    from topa_plugin.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model_name_or_path", "--deepspeed", "--feature_folder", "--base_learning_rate",
                 "--warmup_ratio", "--noise_variance", "--answer_balance", "--lora_r", "--init_from"):
        assert flag in out


@pytest.mark.parametrize("name, decayed, without_gates", [
    ("adapter.visual_proj.weight", True, True), ("adapter.temporal_emb.weight", True, True),
    ("adapter.adapter_query.weight", True, True), ("adapter.gate1", True, False), ("adapter.gate2", True, False),
    ("llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", True, True),
    ("some.proj.bias", False, False), ("some.norm.weight", False, False),
])
def test_weight_decay_rule(name, decayed, without_gates):
    """The release (timm's param_groups_weight_decay) decays every parameter with 2 or more dimensions
    except biases: the [layers, heads] gates included. --decay_gates False exempts the gates."""
    import torch

    shape = (4,) if name.endswith(("bias", "norm.weight")) else (2, 4)
    assert decays(name, torch.nn.Parameter(torch.zeros(shape)), decay_gates=True) is decayed
    assert decays(name, torch.nn.Parameter(torch.zeros(shape)), decay_gates=False) is without_gates


def test_use_cpu_defaults_to_true_on_a_host_without_accelerators(monkeypatch):
    """Else accelerate sees one process per rank: torchrun ranks would train as independent copies."""
    import torch

    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    _, _, args = parse_arguments(REQUIRED[:-2])
    assert args.use_cpu is True


def test_a_launch_the_trainer_does_not_see_whole_is_refused(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match=r"started 2 processes \(WORLD_SIZE\) but the trainer sees 1: .* --use_cpu True"):
        check_world_size(SimpleNamespace(world_size=1))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_world_size(SimpleNamespace(world_size=1))


def test_release_objective_is_the_default_and_flags_select_the_alternative():
    _, data_args, args = parse_arguments(REQUIRED)
    assert data_args.question_mark is None and args.decay_gates is True  # None: TextVidDataset's default, "always"
    _, data_args, args = parse_arguments(REQUIRED + ["--question_mark", "keep_period", "--decay_gates", "False"])
    assert data_args.question_mark == "keep_period" and args.decay_gates is False


# ---------------------------------------------------------------- trainer backend choice

def test_backend_plain_is_the_transformers_trainer():
    assert llava_compat.trainer_base("plain") is transformers.Trainer


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv(llava_compat.BACKEND_ENV, "plain")
    assert llava_compat.trainer_base() is transformers.Trainer
    monkeypatch.setenv(llava_compat.BACKEND_ENV, "bogus")
    with pytest.raises(ValueError, match="TOPA_TRAINER_BACKEND"):
        llava_compat.trainer_base()


def test_without_llava_auto_falls_back_with_a_notice_and_llava_fails(monkeypatch, caplog):
    hide_llava(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="topa_plugin.training.llava_compat"):
        assert llava_compat.trainer_base("auto") is transformers.Trainer
    assert "plain transformers.Trainer" in caplog.text
    with pytest.raises(ImportError, match="llava-torch"):
        llava_compat.trainer_base("llava")


def test_shipped_recipes_resolve_by_name_and_by_model_folder(tmp_path):
    from topa_plugin.training.arguments import resolve_config, shipped_configs

    names = {name for name in shipped_configs() if "/" not in name}
    assert names == set(RELEASE) | set(SCALED)
    assert resolve_config("pretrain_llama2_7b") == resolve_config("llama2/pretrain_llama2_7b.yaml")
    own = tmp_path / "pretrain_llama2_7b"
    own.write_text("seed: 3\n")
    assert resolve_config(str(own)) == own  # a file wins over a recipe name
    with pytest.raises(LaunchError, match="no shipped recipe of that name.*pretrain_llama2_7b"):
        resolve_config("pretrain_llama9")


def test_lora_targets_must_each_name_a_module_of_the_llm(toy_llama_dir):
    """Phi3 fuses q/k/v: the default q_proj,k_proj,v_proj,o_proj would silently adapt only o_proj."""
    import transformers

    from topa_plugin.training.train import lora_targets

    llm = transformers.AutoModelForCausalLM.from_pretrained(toy_llama_dir)
    assert lora_targets(llm, "q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match=r"qkv_proj name no module of llama; its linear layers are: .*q_proj"):
        lora_targets(llm, "qkv_proj,o_proj")
