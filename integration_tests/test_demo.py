"""`topa demo` end to end: the whole toy pipeline, through the console script a user runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "topa-demo"
    topa = shutil.which("topa") or str(Path(sys.executable).with_name("topa"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([topa, "demo", "--out", str(out), "--steps", "60"], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_demo_runs_every_stage_and_reports_where_things_are(demo_run):
    out, stdout = demo_run
    for stage in range(1, 7):
        assert f"== {stage}/6" in stdout
    assert "chance level" in stdout and "convert-official" in stdout
    assert (out / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "memory.safetensors").is_file()


def test_demo_pre_alignment_lowers_the_loss_and_saves_a_loadable_checkpoint(demo_run):
    out, _ = demo_run
    from topa_plugin import TopaForCausalLM

    history = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.5
    model = TopaForCausalLM.from_pretrained(out / "checkpoint")
    assert all(not p.requires_grad for p in model.llm.parameters())


def test_demo_evaluation_answers_every_question_through_lmms_eval(demo_run):
    out, stdout = demo_run
    rows = (out / "eval" / "tasks" / "egoschema_local.jsonl").read_text().splitlines()
    samples = list((out / "eval" / "results").rglob("*_samples_topa_egoschema_local.jsonl"))
    assert len(samples) == 1
    docs = [json.loads(line) for line in samples[0].read_text().splitlines()]
    assert sorted(d["doc_id"] for d in docs) == list(range(len(rows)))
    assert all(d["score"]["pred"] in range(5) for d in docs)
    assert "|topa_egoschema_local|" in stdout


def test_demo_explains_its_first_question_with_lmms_evals_answer(demo_run):
    out, stdout = demo_run
    page = out / "explanation.html"
    assert f"why the first answer (`topa ask --report`): {page}" in stdout
    samples = next((out / "eval" / "results").rglob("*_samples_topa_egoschema_local.jsonl"))
    first = min((json.loads(line) for line in samples.read_text().splitlines()), key=lambda d: d["doc_id"])
    html = page.read_text()
    assert f"Answer: <strong>{'ABCDE'[first['score']['pred']]}. " in html  # the letter lmms-eval gave
    assert html.count('class="caption"') >= 10  # the demo's memory knows its captions
