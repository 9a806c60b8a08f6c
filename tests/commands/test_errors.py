"""Every bad input found so far, through the real `topa` CLI: exit status 2 and one line,
``topa <command>: error: <what, naming the file/record/field>``, never a traceback.

One table drives three runners: ``cli.main`` in this process (stderr captured) for every case, the
installed ``topa`` script in a subprocess for a representative subset, and, for the training flags
the pre-flight refuses, ``python -m topa_plugin.training.train`` in a subprocess, as torchrun and
deepspeed start it (one line ``python -m topa_plugin.training.train: error: ...``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.lmms_fixtures import build_topa_checkpoint
from topa_plugin.cli import main
from topa_plugin.textvid import read_textvid, sample_path
from topa_plugin.textvid.writer import write_jsonl

ROOT = Path(__file__).resolve().parents[2]  # the checkout under test, for the subprocesses' PYTHONPATH
TRAIN_MODULE = "topa_plugin.training.train"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, toy_clip, toy_llama_dir):
    """Good and bad inputs on disk: a small feature store and broken copies of it, odd paths, bad files."""
    from topa_plugin.features.clip import load_clip
    from topa_plugin.features.extract import extract_textvid

    root = tmp_path_factory.mktemp("bad_inputs")
    textvid = write_jsonl(root / "textvid.jsonl", read_textvid(sample_path())[:4])
    store = extract_textvid(textvid, root / "store", load_clip(str(toy_clip[0]), str(toy_clip[1])), 64).parent
    corrupt = shutil.copytree(store, root / "corrupt_store")
    shard = next(corrupt.glob("shard-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    truncated = shutil.copytree(store, root / "truncated_index")
    (truncated / "index.json").write_bytes((store / "index.json").read_bytes()[:150])
    memory = root / "memory.safetensors"
    assert main(["memory", "build", "--features", str(store), "--all", "--out", str(memory)]) == 0
    (root / "empty.jsonl").write_bytes(b"")
    (root / "empty.json").write_text("[]")
    (root / "a_file").write_text("not a folder")
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("someone else's")
    (root / "bad_config.json").write_text("{not json")
    (root / "partial_config.json").write_text(json.dumps({"embed_dim": 8, "vision_cfg": {}}))
    (root / "corrupt_weights.safetensors").write_bytes(b"garbage" * 10)
    (root / "truncated.pkl").write_bytes(pickle.dumps(torch.randn(4, 8).numpy())[:60])
    torch.save({"model": {"w": torch.randn(64, 64)}}, root / "checkpoint.pth")
    (root / "truncated.pth").write_bytes((root / "checkpoint.pth").read_bytes()[:4000])
    release = root / "release_features"
    release.mkdir()
    for i, record in enumerate(read_textvid(textvid)):  # the release's features/{idx}.pkl, the first one cut short
        rows = pickle.dumps(torch.randn(sum(len(f) for f in record.frames), 8).numpy())
        (release / f"{record.idx}.pkl").write_bytes(rows[: len(rows) // 2] if i == 0 else rows)
    bad_id = {**json.loads(textvid.read_text().splitlines()[0]), "idx": "../escape"}
    (root / "bad_id.jsonl").write_text(json.dumps(bad_id) + "\n")
    plugin = build_topa_checkpoint(root / "plugin", toy_llama_dir)
    clip = ["--clip-model", str(toy_clip[0]), "--clip-pretrained", str(toy_clip[1]), "--device", "cpu"]
    return SimpleNamespace(root=root, textvid=textvid, store=store, corrupt=corrupt, truncated=truncated,
                           memory=memory, plugin=plugin, llama=toy_llama_dir, clip=clip, clip_config=toy_clip[0])


def train(ws, *flags: str, data=None, features=None) -> list[str]:
    return ["train", "--data_path", str(data or ws.textvid), "--feature_folder", str(features or ws.store),
            "--output_dir", str(ws.root / "train_out"), "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--adapter_len", "4", "--max_seq_len", "400", "--report_to", "none", "--use_cpu", "True", *flags]


def features_textvid(ws, *flags: str, textvid=None, out=None, clip=None) -> list[str]:
    return ["features", "textvid", "--textvid", str(textvid or ws.textvid), "--out", str(out or ws.root / "new_store"),
            *(ws.clip if clip is None else clip), *flags]


@dataclass
class Case:
    id: str
    argv: object  # ws -> argv
    message: str  # regex the one error line must match after "topa <command>: error: "
    command: str
    subprocess: bool = False
    module: bool = False  # a training launch: also run as `python -m TRAIN_MODULE` (torchrun, deepspeed)
    logs: bool = False  # found once training has started: its log lines come before the error


CASES = [
    Case("batch-size-0", lambda ws: features_textvid(ws, "--batch-size", "0"),
         r"argument --batch-size: must be at least 1, got 0", "features textvid", subprocess=True),
    Case("frames-0", lambda ws: ["features", "videos", "--videos", str(ws.root), "--out", str(ws.root / "v"),
                                 "--frames", "0"], r"argument --frames: must be at least 1, got 0", "features videos"),
    Case("size-0", lambda ws: ["memory", "build", "--features", str(ws.store), "--size", "0", "--out", "m.safetensors"],
         r"argument --size: must be at least 1, got 0", "memory build"),
    Case("size-negative", lambda ws: ["memory", "build", "--features", str(ws.store), "--size", "-5", "--out", "m.st"],
         r"argument --size: must be at least 1, got -5", "memory build", subprocess=True),
    Case("limit-0", lambda ws: ["memory", "import", "--pkl", str(ws.memory), "--limit", "0", "--out", "m.st"],
         r"argument --limit: must be at least 1, got 0", "memory import"),
    Case("limit-negative", lambda ws: ["memory", "import", "--pkl", str(ws.memory), "--limit", "-10", "--out", "m.st"],
         r"argument --limit: must be at least 1, got -10", "memory import"),
    Case("out-is-a-file", lambda ws: features_textvid(ws, out=ws.root / "a_file"),
         r"--out .*a_file: is an existing file", "features textvid"),
    Case("out-non-empty-folder", lambda ws: features_textvid(ws, out=ws.root / "full"),
         r"--out .*full: folder is not empty \(notes.txt\)", "features textvid", subprocess=True),
    Case("memory-out-is-a-folder", lambda ws: ["memory", "build", "--features", str(ws.store), "--all",
                                               "--out", str(ws.root / "full")], r"--out .*full: is a folder", "memory build"),
    Case("lmms-tasks-out-non-empty", lambda ws: ["lmms-tasks", "--data", str(ws.textvid), "--out", str(ws.root / "full")],
         r"--out .*full: folder is not empty", "lmms-tasks"),
    Case("textvid-path-is-a-folder", lambda ws: features_textvid(ws, textvid=ws.root),
         r"bad_inputs\w*: is a folder, not a TextVid", "features textvid", subprocess=True),
    Case("validate-folder", lambda ws: ["textvid", "validate", str(ws.root)], r"is a folder, not a TextVid",
         "textvid validate"),
    Case("clip-config-not-json", lambda ws: features_textvid(ws, clip=["--clip-model", str(ws.root / "bad_config.json"),
                                                                       "--clip-pretrained", ws.clip[3]]),
         r"bad_config.json: not a valid JSON open_clip config", "features textvid"),
    Case("clip-config-incomplete", lambda ws: features_textvid(ws, clip=["--clip-model", str(ws.root / "partial_config.json"),
                                                                         "--clip-pretrained", ws.clip[3]]),
         r"partial_config.json: open_clip config lacks field\(s\) \['text_cfg'\]", "features textvid"),
    Case("clip-weights-corrupt", lambda ws: features_textvid(ws, clip=["--clip-model", ws.clip[1], "--clip-pretrained",
                                                                       str(ws.root / "corrupt_weights.safetensors")]),
         r"CLIP .* with weights .*corrupt_weights.safetensors: cannot load", "features textvid"),
    Case("clip-openai-tag-with-config", lambda ws: features_textvid(ws, clip=["--clip-model", ws.clip[1]]),
         r"a model-config JSON has no pretrained tag 'openai'.*--clip-pretrained", "features textvid", subprocess=True),
    Case("precision-unknown", lambda ws: features_textvid(ws, "--precision", "fp13"),
         r"--precision 'fp13': open_clip precisions are fp32, fp16", "features textvid"),
    Case("truncated-release-pkl", lambda ws: ["memory", "import", "--pkl", str(ws.root / "truncated.pkl"), "--out", "m.st"],
         r"truncated.pkl: not a readable pickle", "memory import"),
    Case("truncated-release-feature-pkl", lambda ws: ["features", "import-release", "--textvid", str(ws.textvid),
                                                      "--features-dir", str(ws.root / "release_features"),
                                                      "--out", str(ws.root / "imported")],
         r"release_features/\S+\.pkl: not a readable pickle", "features import-release"),
    Case("truncated-release-checkpoint", lambda ws: ["convert-official", "--base", str(ws.llama), "--checkpoint",
                                                     str(ws.root / "truncated.pth"), "--out", str(ws.root / "converted")],
         r"truncated.pth: truncated or corrupt torch.save zip archive", "convert-official"),
    Case("empty-textvid-0-bytes", lambda ws: features_textvid(ws, textvid=ws.root / "empty.jsonl"),
         r"empty.jsonl: no records", "features textvid"),
    Case("empty-textvid-list", lambda ws: features_textvid(ws, textvid=ws.root / "empty.json"),
         r"empty.json: no records", "features textvid"),
    Case("record-id-path", lambda ws: features_textvid(ws, textvid=ws.root / "bad_id.jsonl"),
         r"bad_id.jsonl: line 1, record 0 \(id '\.\./escape'\): idx: id '\.\./escape' contains a path separator",
         "features textvid"),
    Case("memory-build-corrupt-shard", lambda ws: ["memory", "build", "--features", str(ws.corrupt), "--all", "--out", "m.st"],
         r"corrupt_store/shard-\w+\.safetensors: shard corrupt \(100 bytes", "memory build"),
    Case("memory-build-truncated-index", lambda ws: ["memory", "build", "--features", str(ws.truncated), "--all",
                                                     "--out", "m.st"],
         r"truncated_index/index.json: not a readable feature index", "memory build"),
    Case("generate-hf-bad-model", lambda ws: ["textvid", "generate", "--backend", "hf", "--model", str(ws.root / "no_model"),
                                              "--out", str(ws.root / "gen.jsonl"), "--num", "1"],
         r"--model .*no_model: cannot load it as a local transformers model", "textvid generate"),
    Case("train-config-missing", lambda ws: train(ws, "--config", str(ws.root / "nowhere.yaml"),
                                                  "--model_name_or_path", str(ws.llama)),
         r"--config .*nowhere.yaml: no such file", "train", subprocess=True, module=True),
    Case("train-unknown-flag", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), "--adapter_lenght", "4"),
         r"unrecognized arguments: --adapter_lenght 4 \(see .* --help\)$", "train", module=True),
    Case("train-bad-int", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), "--max_steps", "ten"),
         r"argument --max_steps\S*: invalid int value: 'ten'", "train", module=True),
    Case("train-bad-model", lambda ws: train(ws, "--model_name_or_path", str(ws.root / "no_llm")),
         r"--model_name_or_path .*no_llm: not a Hugging Face model folder", "train", module=True),
    Case("train-bad-init-from", lambda ws: train(ws, "--init_from", str(ws.root / "no_plugin")),
         r"--init_from .*no_plugin: no config.json there", "train", module=True),
    Case("train-init-from-with-missing-llm", lambda ws: train(ws, "--init_from", str(ws.plugin),
                                                              "--model_name_or_path", str(ws.root / "no_llm")),
         r"--model_name_or_path .*no_llm: .*with --init_from the LLM comes from the checkpoint", "train"),
    Case("train-init-from-adapter-len", lambda ws: train(ws, "--init_from", str(ws.plugin), "--adapter_len", "8"),
         r"--adapter_len 8 contradicts --init_from .*plugin, whose adapter_len is 4", "train", module=True),
    Case("train-init-from-max-feats", lambda ws: train(ws, "--init_from", str(ws.plugin), "--max_feats", "5"),
         r"--max_feats 5 contradicts --init_from .*plugin, whose max_feats is 10", "train"),
    Case("train-bits-unknown", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), "--bits", "3"),
         r"argument --bits: invalid choice: 3", "train", module=True),
    Case("train-quant-type-without-4bit", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), "--bits", "8",
                                                           "--quant_type", "fp4"),
         r"--quant_type apply to --bits 4 only \(this run has --bits 8\)", "train", subprocess=True, module=True),
    Case("train-bits-with-fsdp", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), "--bits", "4",
                                                  "--fsdp", "full_shard"),
         r"--bits 4 cannot run under FSDP \(--fsdp\): .* use DDP or DeepSpeed ZeRO-2/3", "train", module=True,
         logs=True),  # transformers 5.24 first warns that a string --fsdp is deprecated
    Case("train-textvid-folder", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), data=ws.root),
         r"--data_path .*: is a folder", "train", module=True),
    Case("train-empty-textvid", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), data=ws.root / "empty.json"),
         r"empty.json: no records", "train", module=True, logs=True),
    Case("train-truncated-index", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), features=ws.truncated),
         r"truncated_index/index.json: not a readable feature index", "train", module=True, logs=True),
    Case("train-corrupt-shard", lambda ws: train(ws, "--model_name_or_path", str(ws.llama), features=ws.corrupt),
         r"corrupt_store/shard-\w+\.safetensors: shard corrupt \(100 bytes", "train", module=True,
         logs=True),
    Case("report-no-results", lambda ws: ["report", str(ws.root / "full"), "--out", str(ws.root / "r.html")],
         r"full: no lmms-eval results \(\*_results.json\) in it", "report", subprocess=True),
    Case("report-out-folder-missing", lambda ws: ["report", str(ws.root / "full"), "--out", str(ws.root / "no" / "r.html")],
         r"--out .*no/r.html: folder .*no does not exist", "report"),
]


def _check(status: int, stderr: str, case: Case, prog: str | None = None) -> None:
    assert "Traceback" not in stderr, stderr
    prefix = f"{prog or 'topa ' + case.command}: error: "
    lines = [line for line in re.split(r"[\r\n]+", stderr) if line.strip()]
    errors = [line[line.index(prefix):] for line in lines if prefix in line]
    assert len(errors) == 1, stderr
    if not case.logs:
        assert lines == errors, stderr
    assert re.search(case.message, errors[0][len(prefix):]), errors[0]
    assert status == 2, stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, ws, capsys, monkeypatch):
    monkeypatch.chdir(ws.root)
    try:
        status = main(case.argv(ws))
    except SystemExit as exc:  # argparse stops parsing with SystemExit(2)
        status = exc.code
    _check(status, capsys.readouterr().err, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.subprocess], ids=[c.id for c in CASES if c.subprocess])
def test_bad_input_through_the_topa_process(case, ws):
    script = Path(sys.executable).with_name("topa")  # the installed console script, as a user runs it
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "topa_plugin.cli"]
    done = subprocess.run([*command, *case.argv(ws)], cwd=ws.root,
                          capture_output=True, text=True, timeout=300, check=False)
    _check(done.returncode, done.stderr, case)


def _module_env() -> dict[str, str]:
    """This checkout first on the path, so the subprocess runs the code under test."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.module], ids=[c.id for c in CASES if c.module])
def test_bad_training_input_through_the_module_entry_point(case, ws):
    """The command torchrun and deepspeed run (configs/launch.sh, the README) reports as `topa train` does,
    bad flags and bad data alike."""
    argv = case.argv(ws)
    assert argv[0] == "train"
    done = subprocess.run([sys.executable, "-m", TRAIN_MODULE, *argv[1:]], cwd=ws.root, env=_module_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    _check(done.returncode, done.stderr, case, prog=f"python -m {TRAIN_MODULE}")


@pytest.mark.slow
def test_module_help_is_not_blocked_by_the_preflight(ws):
    """--help prints the training parser's full help and exits 0, even beside a flag the pre-flight would refuse."""
    done = subprocess.run([sys.executable, "-m", TRAIN_MODULE, "--model_name_or_path", str(ws.root / "no_llm"),
                           "--help"], cwd=ws.root, env=_module_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0 and "error:" not in done.stderr, done.stderr
    assert done.stdout.startswith(f"usage: python -m {TRAIN_MODULE} ")
    assert all(flag in done.stdout for flag in ("--model_name_or_path", "--init_from", "--deepspeed", "--adapter_len"))
