"""lmms-eval 0.7.3's own video tasks, through the real ``lmms-eval`` CLI, answered by ``--model topa``.

Each task is an include-path copy of the installed yaml (prompts, utils, ``process_results`` and
aggregation untouched; only the dataset points at synthetic docs in the task's schema) or one of
the fixed variants this package ships; videos are toy mp4s where the task's utils look for them.
One run covers every task family (one model load, one lmms-eval start-up); a second run, through
``topa eval``, covers the authors' captioning protocol. The model's ``request_log`` says what it
ranked; every check compares it with the doc and with the task's own verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from tests.helpers.lmms_task_cases import (
    VIDEOMME_SUBTITLE,
    captioning_cases,
    egoschema_cases,
    mlvu_cases,
    mvbench_cases,
    nextqa_cases,
    perceptiontest_cases,
    tempcompass_cases,
    videomme_cases,
)
from tests.helpers.lmms_task_copies import write_task_copy

SHIPPED_TASKS = Path(__file__).resolve().parents[1] / "topa_plugin" / "lmms" / "tasks"


def all_cases() -> list:
    return [*egoschema_cases(), *mvbench_cases(), *nextqa_cases(), *videomme_cases(SHIPPED_TASKS),
            *perceptiontest_cases(SHIPPED_TASKS), *tempcompass_cases(), *mlvu_cases(), *captioning_cases()]


def write_fixture(root: Path, cases: list) -> dict:
    """Task copies under root/tasks, videos and extra files under root/hf_home; {copy name: case}."""
    from topa_plugin.demo.toy import write_toy_video

    hf_home = root / "hf_home"
    names = {}
    for case in cases:
        for relative, seed in case.videos.items():
            if not (hf_home / relative).exists():
                write_toy_video(hf_home / relative, n_frames=12, seed=seed)
        for relative, text in case.extra_files.items():
            (hf_home / relative).parent.mkdir(parents=True, exist_ok=True)
            (hf_home / relative).write_text(text, encoding="utf-8")
        names[write_task_copy(case.task, case.docs, root / "tasks", yaml_path=case.yaml_path)] = case
    return names


def run_cli(command: list[str], root: Path, model_args: dict, tasks: list[str], out: Path) -> subprocess.CompletedProcess:
    args = ",".join(f"{k}={v}" for k, v in model_args.items())
    env = {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [*command, "--model", "topa", "--model_args", args, "--tasks", ",".join(tasks),
            "--include_path", str(root / "tasks"), "--output_path", str(out), "--log_samples", "--batch_size", "2"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)


def read_samples(out: Path, task: str) -> list[dict]:
    files = list(out.rglob(f"*_samples_{task}.jsonl"))
    assert len(files) == 1, f"{task}: samples files {files}"
    return sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])


def read_log(path: Path) -> dict:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {(r["task"], r["doc_id"]): r for r in records}


@pytest.fixture(scope="module")
def model_args(tmp_path_factory, toy_llama_dir, toy_clip):
    from tests.helpers.lmms_fixtures import build_topa_checkpoint

    root = tmp_path_factory.mktemp("lmms_task_model")
    checkpoint = build_topa_checkpoint(root / "checkpoint", toy_llama_dir)
    config, weights = toy_clip
    return {"pretrained": checkpoint, "clip_model": config, "clip_pretrained": weights, "device": "cpu",
            "feature_cache": root / "feature_cache"}


@pytest.fixture(scope="module")
def families_run(tmp_path_factory, model_args):
    root = tmp_path_factory.mktemp("lmms_families")
    names = write_fixture(root, all_cases())
    log = root / "requests.jsonl"
    out = root / "out"
    lmms_eval = str(Path(sys.executable).with_name("lmms-eval"))
    done = run_cli([lmms_eval], root, {**model_args, "request_log": log}, sorted(names), out)
    results = list(out.rglob("*_results.json"))
    assert len(results) == 1, f"no results file; lmms-eval output:\n{(done.stdout + done.stderr)[-6000:]}"
    return names, read_log(log), out, json.loads(results[0].read_text())["results"]


def test_every_task_family_writes_results(families_run):
    names, _, _, results = families_run
    assert sorted(results) == sorted(names)


def test_ranked_options_are_exactly_the_docs_options_and_the_task_reads_the_reply(families_run):
    names, log, out, _ = families_run
    for name, case in names.items():
        if case.kind not in ("rank", "loglikelihood"):
            continue
        samples = read_samples(out, name)
        assert len(samples) == len(case.docs), name
        correct = 0
        for sample in samples:
            record = log[(name, sample["doc_id"])]
            where = f"{name} doc {sample['doc_id']}"
            assert record["mode"] == case.kind, where
            assert record["options"] == case.options(sample["doc"]), where
            chosen = record["chosen"]
            if case.kind == "rank":
                assert record["reply"] == case.labels(sample["doc"], chosen), where
            verdict = case.correct(sample)
            assert verdict == (chosen == case.answer(sample["doc"])), f"{where}: task verdict {verdict}, chosen {chosen}"
            correct += verdict
        # every question was written once per option: the reply is right for exactly one copy
        questions = len({json.dumps({k: v for k, v in d.items() if k not in ("answer", "answer_id", "question_idx", "qid")}, sort_keys=True) for d in case.docs})
        assert correct == questions, f"{name}: {correct} docs scored correct, expected {questions}"


def test_questions_are_the_prompts_question_without_scaffolding(families_run):
    names, log, _, _ = families_run
    by_task = {case.task: name for name, case in names.items()}
    mvbench = log[(by_task["mvbench_action_antonym"], 0)]
    assert mvbench["question"] == "what is the man doing?"
    subtitled = log[(by_task["videomme_w_subtitle"], 0)]
    assert VIDEOMME_SUBTITLE in subtitled["question"]
    assert "Select the best answer" not in subtitled["question"]
    assert log[(by_task["videomme"], 0)]["question"] == "What colour is the flag?"


def test_prompts_without_options_are_answered_by_generation(families_run):
    names, log, out, results = families_run
    for name, case in names.items():
        if case.kind not in ("generate", "caption"):
            continue
        for sample in read_samples(out, name):
            record = log[(name, sample["doc_id"])]
            assert record["mode"] == "generate", name
            assert "options" not in record
            assert sample["filtered_resps"][0] == record["reply"]
    revert = next(n for n, c in names.items() if c.task == "videomme_revert_oe_mcq")
    assert results[revert]["acc_score,none"] in (0.0, 1.0)
