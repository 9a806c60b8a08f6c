"""`topa ask` against a real `lmms-eval --model topa` run on the same EgoSchema-shaped task: the same letters
(generate variant) and the same option scores (mcppl variant's log-likelihoods), question by question."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval")

from tests.helpers.lmms_fixtures import build_topa_checkpoint, write_egoschema_fixture

TASKS = ("topa_egoschema_local", "topa_egoschema_local_mcppl")
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def command(module: str) -> list[str]:
    """This interpreter's module (a console script on PATH may belong to another Python)."""
    return [sys.executable, "-m", module]


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_llama_dir, toy_clip):
    root = tmp_path_factory.mktemp("ask_vs_lmms")
    checkpoint = build_topa_checkpoint(root / "checkpoint", toy_llama_dir)
    data, videos = write_egoschema_fixture(root / "data")
    made = subprocess.run([*command("topa_plugin.cli"), "lmms-tasks", "--data", str(data), "--videos", str(videos),
                           "--out", str(root / "tasks")], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    config, weights = toy_clip
    model_args = f"pretrained={checkpoint},clip_model={config},clip_pretrained={weights},device=cpu"
    env = {**os.environ, **ENV, "HF_HOME": str(root / "hf_home")}
    env.pop("TOPA_EGOSCHEMA_VIDEOS", None)
    done = subprocess.run([*command("lmms_eval"), "--model", "topa", "--model_args", model_args, "--tasks", ",".join(TASKS),
                           "--include_path", str(root / "tasks"), "--output_path", str(root / "results"), "--log_samples",
                           "--batch_size", "1"], env=env, capture_output=True, text=True, timeout=600, check=False)
    samples = {}
    for task in TASKS:
        files = list((root / "results").rglob(f"*_samples_{task}.jsonl"))
        assert len(files) == 1, done.stdout[-3000:] + done.stderr[-3000:]
        samples[task] = sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    return {"checkpoint": checkpoint, "clip": toy_clip, "videos": videos, "rows": rows, "samples": samples, "root": root}


def topa_ask(run, row, *extra) -> dict:
    config, weights = run["clip"]
    options = [a for option in row["option"] for a in ("--option", option)]
    done = subprocess.run([*command("topa_plugin.cli"), "ask", str(run["videos"] / f"{row['video_idx']}.mp4"),
                           "--checkpoint", str(run["checkpoint"]), "--clip-model", str(config), "--clip-pretrained", str(weights),
                           "--device", "cpu", "--question", row["question"], *options, "--json", *extra],
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_topa_ask_gives_lmms_evals_letters_and_scores(run):
    generated, ranked = run["samples"]["topa_egoschema_local"], run["samples"]["topa_egoschema_local_mcppl"]
    answers = [topa_ask(run, row) for row in run["rows"]]
    assert len({a["answer_index"] for a in answers}) > 1, "the fixture must discriminate between questions"
    for answer, gen, mcppl in zip(answers, generated, ranked):
        assert answer["label"] == gen["filtered_resps"][0]  # the letter lmms-eval's EgoSchema parser read
        assert answer["answer_index"] == gen["score"]["pred"] == mcppl["score"]["pred"]
        losses = [float(loss) for loss, _ in mcppl["filtered_resps"]]
        assert answer["scores"] == pytest.approx(losses, abs=1e-4)


def test_topa_ask_report_explains_an_lmms_eval_question(run):
    page = run["root"] / "why.html"
    row = run["rows"][0]
    answer = topa_ask(run, row, "--report", str(page), "--answer", str(row["answer"]))
    html = page.read_text()
    assert f"Answer: <strong>{answer['label']}. " in html and html.count('class="card frame"') == len(answer["frames"])
