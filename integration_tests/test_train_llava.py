"""TOPA training end to end through LLaVA's trainer (llava-torch) and, without llava, transformers.Trainer.

Tiny random Llama (conftest) + tiny random CLIP text features of the bundled TextVid sample,
extracted with `topa features textvid`. The conftest Llama's logits are nearly uniform (lm_head
std 0.02), so no adapter can move its loss by more than step-to-step noise; the runs here use a
copy with v_proj/o_proj/lm_head scaled up, which makes the frozen LLM responsive to the adapter.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from tests.helpers.interrupt import InterruptAt, Interrupted
from tests.helpers.videoqa_rows import write_videoqa_csv
from topa_plugin.cli import main as topa_main
from topa_plugin.demo import toy
from topa_plugin.features.store import FeatureStore
from topa_plugin.modeling import TopaForCausalLM
from topa_plugin.textvid import read_textvid, sample_path
from topa_plugin.training.arguments import parse_arguments
from topa_plugin.training.train import main as train_main
from topa_plugin.training.train import run

STEPS = 40


def hide_llava(monkeypatch):
    """Make every `import llava...` fail as if llava-torch were not installed (cached submodules too)."""
    for name in [n for n in sys.modules if n == "llava" or n.startswith("llava.")] + ["llava"]:
        monkeypatch.setitem(sys.modules, name, None)


def llava_trainer_class():
    from llava.train.llava_trainer import LLaVATrainer

    return LLaVATrainer


@pytest.fixture(scope="module")
def clip_flags(toy_clip):
    config_json, weights = toy_clip
    return ["--clip-model", str(config_json), "--clip-pretrained", str(weights), "--device", "cpu"]


@pytest.fixture(scope="module")
def textvid_features(tmp_path_factory, clip_flags):
    out = tmp_path_factory.mktemp("textvid_features")
    assert topa_main(["features", "textvid", "--textvid", str(sample_path()), "--out", str(out), *clip_flags]) == 0
    return out


@pytest.fixture(scope="module")
def responsive_llm(tmp_path_factory, toy_llama_dir):
    out = tmp_path_factory.mktemp("responsive_llm")
    llm = transformers.AutoModelForCausalLM.from_pretrained(toy_llama_dir)
    with torch.no_grad():
        for name, param in llm.named_parameters():
            if name.endswith(("v_proj.weight", "o_proj.weight", "lm_head.weight")):
                param.mul_(10)
    llm.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(toy_llama_dir).save_pretrained(out)
    return out


def flags(out, llm, features, *extra, steps=STEPS, save_steps=20) -> list[str]:
    return [
        "--model_name_or_path", str(llm), "--data_path", str(sample_path()), "--feature_folder", str(features),
        "--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_steps", str(steps),
        "--learning_rate", "5e-2", "--warmup_ratio", "0.1", "--save_steps", str(save_steps), "--logging_steps", "1",
        "--adapter_len", "4", "--max_seq_len", "400", "--answer_balance", "True", "--report_to", "none",
        "--use_cpu", "True", "--seed", "0", "--disable_tqdm", "True", *extra,
    ]


def log_history(out) -> list[dict]:
    return json.loads((Path(out) / "trainer_state.json").read_text())["log_history"]


def check_run(trainer, out, llm_dir, features):
    """Loss fell, frozen LLM untouched, checkpoints hold trainables only, output reloads and scores."""
    losses = [h["loss"] for h in log_history(out) if "loss" in h]
    assert len(losses) == STEPS
    # each step is one of the release's two kinds, and its loss is logged under that kind too
    steps = [h for h in log_history(out) if "loss" in h]
    kinds = [[k for k in ("loss_multiple_choice", "loss_caption") if k in h] for h in steps]
    assert all(len(k) == 1 for k in kinds) and {k[0] for k in kinds} == {"loss_multiple_choice", "loss_caption"}
    assert all(h[k[0]] == pytest.approx(h["loss"], abs=2e-4) for h, k in zip(steps, kinds))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.3, (first, last)

    frozen = load_file(str(Path(llm_dir) / "model.safetensors"))
    trained = trainer.model.llm.state_dict()
    assert frozen.keys() == trained.keys()
    assert all(torch.equal(frozen[k], trained[k]) for k in frozen)

    no_decay = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    adapter = trainer.model.adapter
    assert id(adapter.gate1) not in no_decay and id(adapter.gate2) not in no_decay  # the release decays the gates
    assert id(adapter.visual_proj.weight) not in no_decay and id(adapter.adapter_query.weight) not in no_decay

    checkpoint = Path(out) / "checkpoint-20"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
    for directory in (checkpoint, Path(out)):
        assert not (directory / "base").exists()
        for weights in directory.glob("*.safetensors"):
            assert all(key.startswith("adapter.") for key in load_file(str(weights)))

    model = TopaForCausalLM.from_pretrained(out)
    for name, value in model.adapter.state_dict().items():
        assert torch.equal(value, adapter.state_dict()[name].cpu())
    record = read_textvid(sample_path())[0]
    qa = record.qas[0]
    scores = model.score_choices(FeatureStore(features).get(record.idx), qa.question, qa.options, use_memory=False)
    assert scores.shape == (5,) and torch.isfinite(scores).all()


@pytest.fixture(scope="module")
def llava_run(tmp_path_factory, responsive_llm, textvid_features):
    out = tmp_path_factory.mktemp("llava_run")
    argv = flags(out, responsive_llm, textvid_features, "--trainer_backend", "llava", "--activation_checkpointing", "True")
    return run(*parse_arguments(argv)), out


def test_pretrain_through_llava_trainer(llava_run, responsive_llm, textvid_features):
    trainer, out = llava_run
    assert isinstance(trainer, llava_trainer_class())
    check_run(trainer, out, responsive_llm, textvid_features)


def test_same_run_without_llava_uses_the_plain_trainer(tmp_path, monkeypatch, caplog, responsive_llm, textvid_features):
    hide_llava(monkeypatch)
    trainer = run(*parse_arguments(flags(tmp_path, responsive_llm, textvid_features, "--trainer_backend", "auto")))
    assert isinstance(trainer, transformers.Trainer)
    assert not any("LLaVA" in cls.__name__ for cls in type(trainer).__mro__)
    assert "plain transformers.Trainer" in caplog.text
    check_run(trainer, tmp_path, responsive_llm, textvid_features)


def test_interrupted_run_resumes_to_the_same_steps_schedule_and_samples(tmp_path, responsive_llm, textvid_features):
    """15 steps make an epoch: the run is killed in epoch 2 and resumes from checkpoint-16."""
    def argv(out):
        return flags(out, responsive_llm, textvid_features, "--trainer_backend", "llava", steps=20, save_steps=8)

    straight_trainer = run(*parse_arguments(argv(tmp_path / "straight")))
    with pytest.raises(Interrupted):
        run(*parse_arguments(argv(tmp_path / "resumed")), callbacks=[InterruptAt(18)])
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]
    trainer = run(*parse_arguments(argv(tmp_path / "resumed")))  # picks up checkpoint-16 by itself

    assert trainer.state.global_step == straight_trainer.state.global_step == 20
    assert trainer.train_dataset.epoch == straight_trainer.train_dataset.epoch == 1
    straight, resumed = log_history(tmp_path / "straight"), log_history(tmp_path / "resumed")
    assert [h["step"] for h in resumed if "loss" in h] == list(range(1, 21))
    for key in ("learning_rate", "loss"):
        expected = [h[key] for h in straight if "loss" in h]
        assert [h[key] for h in resumed if "loss" in h] == pytest.approx(expected, rel=1e-5)
    for name, value in straight_trainer.model.adapter.state_dict().items():
        assert torch.allclose(trainer.model.adapter.state_dict()[name], value, atol=1e-6)


def _error_report(capsys) -> str:
    """The entry point's error report: from its one ``error:`` line (after the log lines) to the end."""
    err = capsys.readouterr().err
    assert err.count(": error: ") == 1 and "Traceback" not in err, err
    return err[err.rfind("\n", 0, err.index(": error: ")) + 1:]


def test_bad_record_fails_fast_through_the_entry_point(tmp_path, capsys, responsive_llm, textvid_features):
    lines = sample_path().read_text().splitlines()
    bad = json.loads(lines[7])
    del bad["QAs"][1]["options"]
    lines[7] = json.dumps(bad)
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    argv = flags(tmp_path / "out", responsive_llm, textvid_features)
    argv[argv.index("--data_path") + 1] = str(data)
    assert train_main(argv) == 2
    error = _error_report(capsys)
    assert error.startswith("python -m topa_plugin.training.train: error: ")
    assert f"{data}: line 8, record 7" in error and "QAs[1].options: missing key" in error
    assert not (tmp_path / "out").exists()


def test_overlong_answers_fail_before_the_model_loads(tmp_path, monkeypatch, capsys, responsive_llm, textvid_features):
    """A record whose answer --max_seq_len cuts off stops the run at start, not hours into training."""
    import topa_plugin.training.train as train_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the length check")

    monkeypatch.setattr(train_module, "build_model", no_model)
    argv = flags(tmp_path / "out", responsive_llm, textvid_features)
    argv[argv.index("--max_seq_len") + 1] = "60"
    assert train_main(argv) == 2
    error = _error_report(capsys)
    assert f"{sample_path()}: record 0 (id " in error and "max_seq_len=60" in error
    assert not (tmp_path / "out").exists()


def test_finetune_with_lora_on_video_features(tmp_path, llava_run, clip_flags):
    _, pretrained = llava_run
    for i in range(2):
        toy.write_toy_video(tmp_path / "videos" / f"clip{i}.mp4", seed=i)
    features = tmp_path / "video_features"
    assert topa_main(["features", "videos", "--videos", str(tmp_path / "videos"), "--out", str(features),
                      "--frames", "6", "--workers", "1", *clip_flags]) == 0
    options = ["it moves left", "it moves right", "it stays still", "it turns red", "it disappears"]
    write_videoqa_csv(tmp_path / "train.csv", options)
    out = tmp_path / "finetuned"
    argv = ["--init_from", str(pretrained), "--task", "finetune", "--data_path", str(tmp_path / "train.csv"),
            "--feature_folder", str(features), "--output_dir", str(out), "--lora_r", "4", "--max_steps", "4",
            "--save_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "5e-2", "--max_seq_len", "400",
            "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True", "--trainer_backend", "llava"]
    trainer = run(*parse_arguments(argv))
    assert trainer.state.global_step == 4
    lora = load_file(str(out / "checkpoint-2" / "lora_model.safetensors"))
    assert lora and all("lora_" in key for key in lora)

    model = TopaForCausalLM.from_pretrained(out)  # LoRA merged into base/
    original = TopaForCausalLM.from_pretrained(pretrained)
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.llm.state_dict()[q_proj], original.llm.state_dict()[q_proj])
    scores = model.score_choices(FeatureStore(features).get("clip0"), "where does the square go", options, use_memory=False)
    assert scores.shape == (5,) and torch.isfinite(scores).all()


class Tokens(torch.utils.data.Dataset):
    """Plain token sequences with LLaVA's ``modality_lengths`` (sign = image or text-only sample)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        ids = torch.arange(3, 9 + i % 3)
        return {"input_ids": ids, "labels": ids}

    @property
    def modality_lengths(self):
        return [(6 + i % 3) * (1 if i % 2 else -1) for i in range(8)]


def collate_tokens(batch):
    n = max(len(b["input_ids"]) for b in batch)
    return {key: torch.stack([torch.nn.functional.pad(b[key], (0, n - len(b[key])), value=pad) for b in batch])
            for key, pad in (("input_ids", 0), ("labels", -100))}


@dataclass
class LLaVAArgs(transformers.TrainingArguments):
    """The LLaVA-only fields LLaVATrainer reads."""

    group_by_modality_length: bool = True
    mm_projector_lr: float = 1e-3
    tune_mm_mlp_adapter: bool = False


def test_llava_compat_trainer_runs_llavas_own_paths(tmp_path, toy_llama_dir):
    """The transformers-5 fixes on a plain Llama with an LLaVA-style projector: length-grouped
    sampler, projector lr groups, projector-only checkpoints, and the default save path."""
    from topa_plugin.training.llava_compat import trainer_base

    for tune_projector in (False, True):
        model = transformers.AutoModelForCausalLM.from_pretrained(toy_llama_dir)
        model.mm_projector = torch.nn.Linear(64, 64)
        for name, param in model.named_parameters():
            param.requires_grad = "mm_projector" in name or "layers.3." in name
        out = tmp_path / str(tune_projector)
        args = LLaVAArgs(output_dir=str(out), max_steps=2, save_steps=2, per_device_train_batch_size=2,
                         report_to="none", use_cpu=True, tune_mm_mlp_adapter=tune_projector, disable_tqdm=True)
        trainer = trainer_base("llava")(model=model, args=args, train_dataset=Tokens(), data_collator=collate_tokens,
                                        tokenizer=None)
        trainer.train()
        files = {p.name for p in (out / "checkpoint-2").iterdir()}
        if tune_projector:
            assert files == {"config.json", "mm_projector.bin"}
        else:
            assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= files
        assert [g["initial_lr"] for g in trainer.optimizer.param_groups] == [5e-5, 5e-5, 1e-3, 1e-3]
