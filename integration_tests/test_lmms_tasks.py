"""lmms-eval 0.7.3's own video tasks, through the real ``lmms-eval`` CLI, answered by ``--model topa``.

Each task is an include-path copy of the installed yaml (prompts, utils, ``process_results`` and
aggregation untouched; only the dataset points at synthetic docs in the task's schema) or one of
the fixed variants this package ships; videos are toy mp4s where the task's utils look for them.
One run covers every multiple-choice family (one model load, one lmms-eval start-up); a second
run, through ``topa eval``, covers the captioning tasks with the authors' protocol. The model's
``request_log`` says what it ranked; every check compares that with the doc and with the task's
own verdict.
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
    longvideobench_cases,
    mlvu_cases,
    mvbench_cases,
    nextqa_cases,
    perceptiontest_cases,
    tempcompass_cases,
    videomme_cases,
)
from tests.helpers.lmms_task_copies import write_task_copy
from topa_plugin.lmms.taskdata import TASKS_DIR

pytestmark = pytest.mark.slow  # two real lmms-eval runs (about 6 minutes on 2 cores)


def choice_cases() -> list:
    return [*egoschema_cases(), *mvbench_cases(), *nextqa_cases(), *videomme_cases(TASKS_DIR),
            *perceptiontest_cases(TASKS_DIR), *tempcompass_cases(), *mlvu_cases(), *longvideobench_cases()]


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


def run_cli(command: list[str], root: Path, model_args: dict, tasks, out: Path) -> subprocess.CompletedProcess:
    """The command offline, with $HF_HOME where the task utils look for videos."""
    env = {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [*command, "--model", "topa", "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--tasks", ",".join(sorted(tasks)), "--include_path", str(root / "tasks"), "--output_path", str(out),
            "--log_samples", "--batch_size", "2"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200, check=False)


def results_files(out: Path) -> list[Path]:
    """lmms-eval's <model>/<date id>_results.json (tasks may write submissions/*_results.json too)."""
    return [p for p in out.glob("*/*_results.json") if p.parent.name != "submissions"]


def read_results(out: Path, done: subprocess.CompletedProcess) -> dict:
    results = results_files(out)
    assert len(results) == 1, f"results files {results}; output:\n{(done.stdout + done.stderr)[-6000:]}"
    return json.loads(results[0].read_text())["results"]


def read_samples(out: Path, task: str) -> list[dict]:
    files = list(out.rglob(f"*_samples_{task}.jsonl"))
    assert len(files) == 1, f"{task}: samples files {files}"
    return sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])


def read_log(path: Path) -> dict:
    return {(r["task"], r["doc_id"]): r for r in map(json.loads, path.read_text().splitlines())}


def clip_args(toy_clip) -> dict:
    config, weights = toy_clip
    return {"clip_model": config, "clip_pretrained": weights, "device": "cpu"}


@pytest.fixture(scope="module")
def families_run(tmp_path_factory, toy_llama_dir, toy_clip):
    from tests.helpers.lmms_fixtures import build_topa_checkpoint

    root = tmp_path_factory.mktemp("lmms_families")
    names = write_fixture(root, choice_cases())
    model_args = {"pretrained": build_topa_checkpoint(root / "checkpoint", toy_llama_dir), **clip_args(toy_clip),
                  "feature_cache": root / "cache", "request_log": root / "requests.jsonl"}
    out = root / "out"
    done = run_cli([str(Path(sys.executable).with_name("lmms-eval"))], root, model_args, names, out)
    return names, read_log(root / "requests.jsonl"), out, read_results(out, done)


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
            record, where = log[(name, sample["doc_id"])], f"{name} doc {sample['doc_id']}"
            doc = record["doc"]  # after the task's process_docs (shuffled / renumbered variants)
            assert record["mode"] == case.kind, where
            assert record["options"] == case.options(doc), where
            if case.kind == "rank":
                assert record["reply"] == sample["filtered_resps"] == case.labels(doc, record["chosen"]), where
            verdict = bool(case.correct(sample, doc))
            assert verdict == (record["chosen"] == case.answer(doc)), f"{where}: task verdict {verdict}, chose {record['chosen']}"
            correct += verdict
        # each question was written once per option as the answer: exactly one copy is right
        questions = {doc.get("question") for doc in case.docs}
        assert correct == len(questions), f"{name}: {correct} docs scored correct for {len(questions)} questions"


def test_questions_are_the_prompts_question_without_scaffolding(families_run):
    names, log, _, _ = families_run
    copy = {case.task: name for name, case in names.items()}
    assert log[(copy["mvbench_action_antonym"], 0)]["question"] == "what is the man doing?"
    assert log[(copy["videomme"], 0)]["question"] == "What colour is the flag?"
    subtitled = log[(copy["videomme_w_subtitle"], 0)]["question"]
    assert VIDEOMME_SUBTITLE in subtitled and "Select the best answer" not in subtitled


def test_a_prompt_without_options_is_answered_by_generation(families_run):
    names, log, out, results = families_run
    name = next(n for n, c in names.items() if c.task == "videomme_revert_oe_mcq")
    [sample] = read_samples(out, name)
    record = log[(name, 0)]
    assert record["mode"] == "generate" and "options" not in record
    assert sample["filtered_resps"] == record["reply"]
    assert results[name]["acc_score,none"] in (0.0, 1.0)


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory, toy_clip):
    from tests.helpers.lmms_fixtures import build_caption_checkpoint

    root = tmp_path_factory.mktemp("lmms_captions")
    names = write_fixture(root, captioning_cases())
    checkpoint = build_caption_checkpoint(root / "model")
    model_args = {"pretrained": checkpoint, **clip_args(toy_clip), "caption_mode": "release",
                  "request_log": root / "requests.jsonl"}
    out = root / "out"
    done = run_cli([sys.executable, "-m", "topa_plugin.cli", "eval"], root, model_args, names, out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return root, names, read_log(root / "requests.jsonl"), out, read_results(out, done), done


def test_captioning_tasks_use_the_authors_protocol_through_topa_eval(caption_run, toy_clip):
    from topa_plugin.captioning import caption_video
    from topa_plugin.features.clip import load_clip
    from topa_plugin.features.extract import video_features
    from topa_plugin.modeling import TopaForCausalLM

    root, names, log, out, results, done = caption_run
    assert f"topa eval: results: {results_files(out)[0]}" in done.stdout
    model = TopaForCausalLM.from_pretrained(root / "model" / "checkpoint")
    encoder = load_clip(str(toy_clip[0]), str(toy_clip[1]))
    for name, case in names.items():
        [sample] = read_samples(out, name)
        record = log[(name, 0)]
        assert record["mode"] == "caption"
        [video] = case.videos
        path = root / "hf_home" / video
        features = video_features(encoder, [path], model.config.max_feats, workers=1)[path.stem]
        assert sample["filtered_resps"] == record["reply"] == caption_video(model, features, "msrvtt")
    assert {name: sorted(k for k in results[name] if k.endswith("CIDEr,none")) for name in names} == {
        "copy_vatex_test": ["vatex_CIDEr,none"], "copy_youcook2_val": ["CIDEr,none"]}


def test_topa_eval_fails_when_lmms_eval_writes_no_results(caption_run, toy_clip, tmp_path):
    root = caption_run[0]
    video = root / "hf_home" / next(iter(captioning_cases()[0].videos))  # vatex_test's video
    video.rename(tmp_path / "moved.mp4")
    try:
        model_args = {"pretrained": root / "model" / "checkpoint", **clip_args(toy_clip)}
        done = run_cli([sys.executable, "-m", "topa_plugin.cli", "eval"], root, model_args, ["copy_vatex_test"], tmp_path / "out")
    finally:
        (tmp_path / "moved.mp4").rename(video)
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert f"topa eval: error: lmms-eval wrote no *_results.json under {tmp_path / 'out'}" in done.stderr
