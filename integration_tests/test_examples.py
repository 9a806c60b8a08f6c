"""Every script in examples/ run as a user runs it (a subprocess, offline) on toy models, its
output checked against the library's own answer computed here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.lmms_fixtures import (
    ROWS,
    build_topa_checkpoint,
    expected_predictions,
    write_egoschema_fixture,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TESTED = {"score_video.py", "extract_textvid_features.py", "build_memory.py", "lmms_eval_python.py"}


def run_example(script: str, *args, hf_home: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env.pop("TOPA_EGOSCHEMA_VIDEOS", None)
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("examples")


@pytest.fixture(scope="module")
def checkpoint(root, toy_llama_dir):
    return build_topa_checkpoint(root / "checkpoint", toy_llama_dir)


@pytest.fixture(scope="module")
def clip_args(toy_clip):
    config, weights = toy_clip
    return ["--clip-model", config, "--clip-pretrained", weights]


@pytest.fixture(scope="module")
def encoder(toy_clip):
    from topa_plugin import load_clip

    return load_clip(str(toy_clip[0]), str(toy_clip[1]))


@pytest.fixture(scope="module")
def feature_store(root, clip_args):
    out = root / "features"
    stdout = run_example("extract_textvid_features.py", "--out", out, *clip_args, hf_home=root / "hf")
    return out, stdout


def test_every_example_is_tested_here_and_listed_in_the_readme():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == TESTED
    for script in scripts:
        assert f"python examples/{script} " in readme, script
        assert (EXAMPLES / script).read_text(encoding="utf-8").startswith('"""'), f"{script}: no docstring"


def test_score_video_prints_score_choices_nll_per_choice_and_the_argmin(root, checkpoint, clip_args, encoder):
    from topa_plugin import TopaForCausalLM, read_frames
    from topa_plugin.demo.toy import write_toy_video

    question, choices, _ = ROWS[0]
    video = write_toy_video(root / "clip.mp4", n_frames=24, seed=5)
    stdout = run_example("score_video.py", "--checkpoint", checkpoint, "--video", video, "--question", question,
                         "--choices", *choices, "--frames", 6, *clip_args, hf_home=root / "hf")

    model = TopaForCausalLM.from_pretrained(checkpoint)
    expected = model.score_choices(encoder.encode_images(read_frames(video, 6)), question, choices)
    # --frames and the video itself must move the scores, or this check could not catch a script ignoring them
    assert not torch.allclose(expected, model.score_choices(encoder.encode_images(read_frames(video, 10)), question, choices))
    other = write_toy_video(root / "other.mp4", n_frames=24, seed=6)
    assert not torch.allclose(expected, model.score_choices(encoder.encode_images(read_frames(other, 6)), question, choices))

    assert f"6 frames from {video}" in stdout
    printed = re.findall(r"^\s+\(([A-Z])\) NLL (\S+)  (.*)$", stdout, re.MULTILINE)
    assert [(letter, text) for letter, _, text in printed] == list(zip("ABCDE", choices))
    assert [float(nll) for _, nll, _ in printed] == pytest.approx(expected.tolist(), abs=2e-4)
    best = int(expected.argmin())
    assert f"Prediction: ({'ABCDE'[best]}) {choices[best]}" in stdout


def test_extract_textvid_features_fuses_every_frames_captions(feature_store, encoder):
    from topa_plugin import FeatureStore, read_textvid
    from topa_plugin.textvid import sample_path

    out, stdout = feature_store
    records = read_textvid(sample_path())
    store = FeatureStore(out)
    assert store.ids() == [r.idx for r in records]
    assert store.encoder == encoder.identity and store.dim == 768
    assert f"{len(records)} textual videos" in stdout
    for record in (records[0], records[len(records) // 2], records[-1]):
        # release rule: normalise each caption's embedding, average per frame, normalise
        expected = torch.stack([
            torch.nn.functional.normalize(
                torch.nn.functional.normalize(encoder.encode_text(captions), dim=-1).mean(0), dim=0)
            for captions in record.captions_per_frame
        ])
        assert torch.allclose(store.get(record.idx), expected, atol=2e-3), record.idx


def _nearest_store_rows(memory: torch.Tensor, store) -> list[int]:
    """For each memory row, the index of the store frame it is (cosine > 0.999), over all frames in store order."""
    frames = torch.nn.functional.normalize(torch.cat([store.get(i) for i in store.ids()]), dim=-1)
    similarity = memory.float() @ frames.T
    best, index = similarity.max(dim=1)
    assert bool((best > 0.999).all()), best.min()
    return index.tolist()


def test_build_memory_keeps_every_distinct_frame_or_a_seeded_sample(root, feature_store):
    from topa_plugin import FeatureStore, load_memory

    out, _ = feature_store
    store = FeatureStore(out)
    n_frames = sum(store.get(i).shape[0] for i in store.ids())
    n_distinct = len(torch.unique(torch.cat([store.get(i) for i in store.ids()]).half(), dim=0))

    stdout = run_example("build_memory.py", "--features", out, "--out", root / "memory.safetensors", hf_home=root / "hf")
    memory = load_memory(root / "memory.safetensors")
    assert memory.shape == (n_distinct, 768)
    assert len(set(_nearest_store_rows(memory, store))) == n_distinct  # every distinct frame, once
    assert f"{len(store)} records, {n_frames} frames, {n_distinct} distinct" in stdout

    run_example("build_memory.py", "--features", out, "--out", root / "memory16.safetensors", "--size", 16,
                "--seed", 3, hf_home=root / "hf")
    sample = load_memory(root / "memory16.safetensors")
    assert sample.shape == (16, 768)
    picked = _nearest_store_rows(sample, store)
    assert len(set(picked)) == 16 and picked == sorted(picked)  # distinct frames, kept in store order
    assert torch.allclose(sample.float().norm(dim=1), torch.ones(16), atol=1e-3)


def test_lmms_eval_python_scores_every_doc_as_score_choices_does(root, checkpoint, clip_args, toy_clip):
    pytest.importorskip("lmms_eval")
    from topa_plugin.cli import main as topa_cli

    data, videos = write_egoschema_fixture(root / "egoschema")
    assert topa_cli(["lmms-tasks", "--data", str(data), "--videos", str(videos), "--out", str(root / "tasks")]) == 0
    tasks = ["topa_egoschema_local", "topa_egoschema_local_mcppl"]
    stdout = run_example("lmms_eval_python.py", "--checkpoint", checkpoint, "--include-path", root / "tasks",
                         "--tasks", *tasks, *clip_args, "--device", "cpu", "--batch-size", 2,
                         "--output", root / "results.json", hf_home=root / "hf")

    expected = expected_predictions(checkpoint, *toy_clip, data, videos)
    assert len(set(expected)) > 1, expected  # a pipeline answering one letter everywhere must fail
    answers = [r[2] for r in ROWS]
    accuracy = sum(e == a for e, a in zip(expected, answers)) / len(answers)
    saved = json.loads((root / "results.json").read_text(encoding="utf-8"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("|")]
    table = {row[0]: row[rows[0].index("Value")] for row in rows[2:]}
    for task in tasks:
        samples = sorted(saved["samples"][task], key=lambda s: s["doc_id"])
        assert [s["doc_id"] for s in samples] == list(range(len(ROWS)))
        assert [s["score"]["pred"] for s in samples] == expected, task
        assert [s["score"]["ground_truth"] for s in samples] == answers
        assert saved["results"][task]["score,none"] == pytest.approx(accuracy)
        assert float(table[task]) == pytest.approx(accuracy)
