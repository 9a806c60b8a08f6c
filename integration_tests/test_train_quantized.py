"""``topa train --bits 4|8`` end to end: TOPA on a bitsandbytes LLM, QLoRA, exact resume, and adapters that
move between a quantized and a full-precision base (tiny random Llama and CLIP, on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.interrupt import InterruptAt, Interrupted
from tests.helpers.videoqa_rows import write_videoqa_csv
from topa_plugin.cli import main as topa_main
from topa_plugin.demo import toy
from topa_plugin.features.store import FeatureStore
from topa_plugin.modeling import TopaForCausalLM
from topa_plugin.textvid import read_textvid, sample_path
from topa_plugin.training.arguments import parse_arguments
from topa_plugin.training.train import run

pytest.importorskip("bitsandbytes")

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ["it moves left", "it moves right", "it stays still", "it turns red", "it disappears"]


@pytest.fixture(scope="module")
def textvid_features(tmp_path_factory, toy_clip):
    out = tmp_path_factory.mktemp("textvid_features")
    clip = ["--clip-model", str(toy_clip[0]), "--clip-pretrained", str(toy_clip[1]), "--device", "cpu"]
    assert topa_main(["features", "textvid", "--textvid", str(sample_path()), "--out", str(out), *clip]) == 0
    return out


def flags(out, features, *extra, steps=4, save_steps=2) -> list[str]:
    return ["--data_path", str(sample_path()), "--feature_folder", str(features), "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--max_steps", str(steps), "--save_steps", str(save_steps),
            "--learning_rate", "5e-2", "--logging_steps", "1", "--adapter_len", "4", "--max_seq_len", "400",
            "--report_to", "none", "--use_cpu", "True", "--seed", "0", "--disable_tqdm", "True",
            "--trainer_backend", "plain", *extra]


def scores(model, features):
    record = read_textvid(sample_path())[0]
    qa = record.qas[0]
    return model.score_choices(FeatureStore(features).get(record.idx), qa.question, qa.options, use_memory=False)


@pytest.fixture(scope="module")
def pretrained_4bit(tmp_path_factory, toy_llama_dir, textvid_features):
    out = tmp_path_factory.mktemp("pretrain_4bit")
    trainer = run(*parse_arguments(flags(out, textvid_features, "--model_name_or_path", str(toy_llama_dir), "--bits", "4")))
    return trainer, out


def test_bits_4_trains_the_adapter_on_a_4bit_llm(pretrained_4bit, toy_llama_dir):
    import bitsandbytes as bnb

    trainer, out = pretrained_4bit
    model = trainer._topa_model()
    assert isinstance(model.llm.model.layers[0].self_attn.k_proj, bnb.nn.Linear4bit)
    assert trainer.state.global_step == 4
    fresh = TopaForCausalLM.from_pretrained(out, quantization="4bit")
    moved = [name for name, value in fresh.adapter.state_dict().items()
             if not torch.equal(value, TopaForCausalLM(fresh.config).adapter.state_dict()[name])]
    assert "gate1" in moved and "visual_proj.weight" in moved  # gradient reached the adapter through 4-bit layers
    for weights in Path(out).glob("*.safetensors"):
        assert all(key.startswith("adapter.") for key in load_file(str(weights)))
    assert not (Path(out) / "base").exists()


def test_adapter_from_a_4bit_base_loads_into_full_precision_and_back(pretrained_4bit, textvid_features, tmp_path):
    trainer, out = pretrained_4bit
    full = TopaForCausalLM.from_pretrained(out)  # the same trainables on the fp32 base
    quantized = TopaForCausalLM.from_pretrained(out, quantization="4bit")
    for name, value in trainer._topa_model().adapter.state_dict().items():
        assert torch.equal(full.adapter.state_dict()[name], value) and torch.equal(quantized.adapter.state_dict()[name], value)
    assert not any("Linear4bit" in type(m).__name__ for m in full.llm.modules())
    trainer._topa_model().eval()
    torch.testing.assert_close(scores(quantized, textvid_features), scores(trainer._topa_model(), textvid_features))
    assert (scores(full, textvid_features) - scores(quantized, textvid_features)).abs().max() < 2.0
    full.save_pretrained(tmp_path / "again")  # saved from a full-precision model, loaded quantized: the reverse way
    again = TopaForCausalLM.from_pretrained(tmp_path / "again", quantization="8bit")
    torch.testing.assert_close(again.adapter.state_dict()["gate1"], full.adapter.state_dict()["gate1"], rtol=0, atol=0)


@pytest.mark.parametrize("bits", ["8", "4"])
def test_resume_on_a_quantized_llm_is_bit_identical(tmp_path, toy_llama_dir, textvid_features, bits):
    def argv(out):
        return flags(out, textvid_features, "--model_name_or_path", str(toy_llama_dir), "--bits", bits)

    straight = run(*parse_arguments(argv(tmp_path / "straight")))
    with pytest.raises(Interrupted):
        run(*parse_arguments(argv(tmp_path / "resumed")), callbacks=[InterruptAt(3)])
    resumed = run(*parse_arguments(argv(tmp_path / "resumed")))  # from checkpoint-2
    assert resumed.state.global_step == straight.state.global_step == 4
    for name, value in straight._topa_model().adapter.state_dict().items():
        assert torch.equal(resumed._topa_model().adapter.state_dict()[name], value), name


@pytest.fixture(scope="module")
def qlora(tmp_path_factory, pretrained_4bit, toy_clip):
    """QLoRA finetuning (--bits 4 --lora_r 4) from the 4-bit pre-alignment, on video-QA features."""
    root = tmp_path_factory.mktemp("qlora")
    for i in range(2):
        toy.write_toy_video(root / "videos" / f"clip{i}.mp4", seed=i)
    clip = ["--clip-model", str(toy_clip[0]), "--clip-pretrained", str(toy_clip[1]), "--device", "cpu"]
    assert topa_main(["features", "videos", "--videos", str(root / "videos"), "--out", str(root / "features"),
                      "--frames", "6", "--workers", "1", *clip]) == 0
    write_videoqa_csv(root / "train.csv", OPTIONS)
    out = root / "finetuned"
    argv = ["--init_from", str(pretrained_4bit[1]), "--task", "finetune", "--data_path", str(root / "train.csv"),
            "--feature_folder", str(root / "features"), "--output_dir", str(out), "--lora_r", "4", "--bits", "4",
            "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "5e-2",
            "--max_seq_len", "400", "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True",
            "--trainer_backend", "plain"]
    return run(*parse_arguments(argv)), out, root / "features"


def test_qlora_keeps_lora_in_fp32_on_the_4bit_llm_and_saves_it_unmerged(qlora):
    import bitsandbytes as bnb

    trainer, out, _ = qlora
    model = trainer._topa_model()
    lora = {name: p for name, p in model.llm.named_parameters() if "lora_" in name}
    assert lora and all(p.requires_grad and p.dtype == torch.float32 for p in lora.values())
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules())
    assert not (out / "base").exists()  # not merged: no re-quantization, no full-precision copy of the LLM
    saved = load_file(str(out / "lora_model.safetensors"))
    assert saved and all("lora_" in key for key in saved)
    trained_b = [p for name, p in lora.items() if "lora_B" in name]
    assert any(p.abs().sum() > 0 for p in trained_b)  # LoRA B starts at zero: it trained


def test_qlora_output_loads_on_4bit_and_full_precision_bases(qlora):
    trainer, out, features = qlora
    model = trainer._topa_model().eval()
    video = FeatureStore(features).get("clip0")
    question = "where does the square go"
    again = TopaForCausalLM.from_pretrained(out, quantization="4bit")
    assert not any(p.requires_grad for p in again.llm.parameters())
    torch.testing.assert_close(again.score_choices(video, question, OPTIONS, use_memory=False),
                               model.score_choices(video, question, OPTIONS, use_memory=False))
    full = TopaForCausalLM.from_pretrained(out)  # the LoRA on the fp32 LLM
    assert sum("lora_" in name for name, _ in full.llm.named_parameters()) == len(load_file(str(out / "lora_model.safetensors")))
    ours = full.score_choices(video, question, OPTIONS, use_memory=False)
    with full.llm.disable_adapter():
        assert not torch.allclose(full.score_choices(video, question, OPTIONS, use_memory=False), ours)  # LoRA applied
    assert (ours - again.score_choices(video, question, OPTIONS, use_memory=False)).abs().max() < 2.0


def deepspeed_run(out: Path, llm, features, zero_config: Path, bits: str) -> dict:
    """``python -m topa_plugin.training.train`` on 2 CPU ranks under torchrun + DeepSpeed; the final adapter."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(port.getsockname()[1]), "-m", "topa_plugin.training.train",
               *flags(out, features, "--model_name_or_path", str(llm), "--bits", bits, "--deepspeed", str(zero_config),
                      steps=2, save_steps=2)]
    port.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return load_file(str(out / "adapter_model.safetensors"))


@pytest.mark.parametrize("bits", ["8", "4"])
def test_deepspeed_zero3_partitions_a_quantized_llm_and_trains_as_zero2(tmp_path, toy_llama_dir, textvid_features, bits):
    """What DeepSpeed really accepts: ZeRO-2 and ZeRO-3 both train on a bitsandbytes LLM. ZeRO-3 here partitions
    every weight (persistence threshold 0; the shipped 12M threshold would keep the toy's weights whole)."""
    zero3 = json.loads((ROOT / "configs" / "zero3.json").read_text())
    zero3["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(zero3))
    zero2 = deepspeed_run(tmp_path / "zero2", toy_llama_dir, textvid_features, ROOT / "configs" / "zero2.json", bits)
    partitioned = deepspeed_run(tmp_path / "zero3", toy_llama_dir, textvid_features, tmp_path / "zero3.json", bits)
    for name, value in zero2.items():
        torch.testing.assert_close(partitioned[name], value, rtol=0, atol=1e-6)
    assert not torch.equal(zero2["adapter.gate1"], torch.zeros_like(zero2["adapter.gate1"]))
