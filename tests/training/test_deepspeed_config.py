"""DeepSpeed configs are checked against the flags at parse time, naming the file and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from topa_plugin.training import train as train_module
from topa_plugin.training.arguments import DEEPSPEED_DIR, parse_arguments
from topa_plugin.training.deepspeed_config import DeepSpeedConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FLAGS = ["--data_path", "d.jsonl", "--feature_folder", "feats", "--model_name_or_path", "llm",
         "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "2"]


def write_config(tmp_path, **changes) -> Path:
    """The shipped zero2.json with top-level keys (or dotted zero_optimization keys) changed."""
    config = json.loads((CONFIGS / "zero2.json").read_text())
    for key, value in changes.items():
        if key.startswith("zero_"):
            config["zero_optimization"][key.removeprefix("zero_")] = value
        else:
            config[key] = value
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    return path


def problems(path) -> str:
    with pytest.raises(DeepSpeedConfigError) as err:
        parse_arguments(FLAGS + ["--deepspeed", str(path)])
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    return message


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json"])
def test_shipped_configs_fill_completely_from_the_flags(name):
    _, _, args = parse_arguments(FLAGS + ["--deepspeed", str(CONFIGS / name)])
    config = args.hf_deepspeed_config.config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"]) == (3, 2, 6)


def test_auto_that_nothing_fills_is_named(tmp_path):
    message = problems(write_config(tmp_path, zero_allgather_bucket_size="auto"))
    assert re.search(r"ds\.json: zero_optimization\.allgather_bucket_size: \"auto\", but neither transformers", message)


@pytest.mark.parametrize("total, hint", [
    (32, "32 is not a multiple of 3 per device x 1 processes = 3"),
    (12, "--gradient_accumulation_steps 4 gives 12"),
])
def test_batch_sizes_that_contradict_the_flags_are_named(tmp_path, total, hint):
    message = problems(write_config(tmp_path, train_batch_size=total))
    assert f"train_batch_size: {total}, but 3 per device x 2 accumulation x 1 processes = 6 ({hint}" in message


def test_every_problem_is_listed_at_once(tmp_path):
    path = write_config(tmp_path, train_micro_batch_size_per_gpu=4, gradient_clipping=0.5,
                        optimizer={"type": "AdamW", "params": {"lr": "auto"}})
    message = problems(path)
    assert "train_micro_batch_size_per_gpu: 4, but --per_device_train_batch_size is 3" in message
    assert "gradient_clipping: 0.5, but the flags give max_grad_norm=1.0" in message
    assert "optimizer: TOPA builds AdamW with its weight-decay groups" in message


def test_unreadable_config_names_the_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"train_batch_size": "auto",\n "zero_optimization": {"stage": 2,}}')
    with pytest.raises(DeepSpeedConfigError, match=rf"{re.escape(str(path))}: line 2 column \d+: not valid JSON"):
        parse_arguments(FLAGS + ["--deepspeed", str(path)])
    with pytest.raises(DeepSpeedConfigError, match=r"--deepspeed .*missing\.json: cannot read"):
        parse_arguments(FLAGS + ["--deepspeed", str(tmp_path / "missing.json")])


def test_a_bad_config_stops_the_entry_point_before_anything_loads(tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the tokenizer/model started loading before the DeepSpeed config was checked")

    monkeypatch.setattr(train_module, "build_processor", no_loading)
    monkeypatch.setattr(train_module, "build_model", no_loading)
    path = write_config(tmp_path, zero_allgather_bucket_size="auto")
    assert train_module.main(FLAGS + ["--deepspeed", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.splitlines()  # the error line, then every bad key on its own line
    assert lines[0] == f"python -m topa_plugin.training.train: error: {path}: this DeepSpeed config cannot work " \
                       "with these flags:"
    assert len(lines) == 2 and lines[1].startswith(f"{path}: zero_optimization.allgather_bucket_size: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("given", ["zero2", "zero3.json"])
def test_shipped_configs_by_name_need_no_clone(tmp_path, monkeypatch, given):
    """`--deepspeed zero2` finds the config shipped in the package, from a folder without configs/."""
    monkeypatch.chdir(tmp_path)
    _, _, args = parse_arguments(FLAGS + ["--deepspeed", given])
    shipped = DEEPSPEED_DIR / f"{given.removesuffix('.json')}.json"
    assert args.deepspeed == str(shipped)
    assert args.hf_deepspeed_config.config["zero_optimization"]["stage"] == int(given[4])


def test_a_file_in_the_working_folder_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zero2").write_text((DEEPSPEED_DIR / "zero2.json").read_text())
    assert parse_arguments(FLAGS + ["--deepspeed", "zero2"])[2].deepspeed == "zero2"


def test_an_unknown_name_is_named_as_a_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeepSpeedConfigError, match="--deepspeed zero4: cannot read"):
        parse_arguments(FLAGS + ["--deepspeed", "zero4"])


def test_the_repository_configs_are_the_shipped_files():
    for name in ("zero2.json", "zero3.json"):
        assert (CONFIGS / name).resolve() == (DEEPSPEED_DIR / name).resolve()
