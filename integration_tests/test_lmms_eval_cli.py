"""The real ``lmms-eval`` command, offline, on generated EgoSchema-shaped data and videos.

Both task variants must answer every doc with the option ``score_choices`` picks on the same
frames (computed here, outside lmms-eval); a second run must read every video's features from
the cache. lmms-eval exits 0 even when evaluation fails, so results files are checked, never
the exit code alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from tests.helpers.lmms_fixtures import (
    build_topa_checkpoint,
    expected_predictions,
    write_egoschema_fixture,
    write_garbage_video,
)

TASKS = ("topa_egoschema_local", "topa_egoschema_local_mcppl")
LETTERS = "ABCDE"


def lmms_eval_command() -> str:
    found = shutil.which("lmms-eval") or Path(sys.executable).with_name("lmms-eval")
    return str(found)


def topa_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topa_plugin.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def fx(tmp_path_factory, toy_llama_dir, toy_clip):
    root = tmp_path_factory.mktemp("lmms_cli")
    checkpoint = build_topa_checkpoint(root / "checkpoint", toy_llama_dir)
    data, videos = write_egoschema_fixture(root / "data")
    made = topa_cli("lmms-tasks", "--data", data, "--videos", videos, "--out", root / "tasks")
    assert made.returncode == 0, made.stderr
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    expected = expected_predictions(checkpoint, *toy_clip, data, videos)
    # The fixture must discriminate: a pipeline that always answers the same letter fails it.
    assert len(set(expected)) > 1, expected
    return {"root": root, "checkpoint": checkpoint, "clip": toy_clip, "tasks": root / "tasks", "data": data, "videos": videos,
            "rows": rows, "expected": expected, "cache": root / "feature_cache"}


def run_lmms_eval(fx, out: Path, tasks=TASKS, include_path=None, launcher=(), model_args=()) -> str:
    """Run the CLI fully offline (``launcher``: a prefix such as torchrun; ``model_args``: extra ones);
    returns its combined output."""
    config, weights = fx["clip"]
    model_args = ",".join([
        f"pretrained={fx['checkpoint']}", f"clip_model={config}", f"clip_pretrained={weights}",
        f"feature_cache={fx['cache']}", "device=cpu", *model_args,
    ])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(fx["root"] / "hf_home"),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("TOPA_EGOSCHEMA_VIDEOS", None)
    command = [*launcher, *(["-m", "lmms_eval"] if launcher else [lmms_eval_command()]),
               "--model", "topa", "--model_args", model_args, "--tasks", ",".join(tasks),
               "--include_path", str(include_path or fx["tasks"]), "--output_path", str(out), "--log_samples",
               "--batch_size", "2", "--verbosity", "INFO"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    return done.stdout + done.stderr


def read_run(out: Path, log: str) -> tuple[dict, dict]:
    """(aggregated results, {task: samples sorted by doc_id}) of one run."""
    results = list(out.rglob("*_results.json"))
    assert len(results) == 1, f"expected one results file under {out}, found {results}; output:\n{log[-4000:]}"
    samples = {}
    for task in TASKS:
        files = list(out.rglob(f"*_samples_{task}.jsonl"))
        assert len(files) == 1, f"{task}: samples files {files}"
        samples[task] = sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])
    return json.loads(results[0].read_text())["results"], samples


def feature_sources(log: str) -> dict:
    """The model's last "video features so far: 4 cached, 4 decoded" log line as a dict."""
    lines = re.findall(r"video features so far: ([^\n\x1b]*)", log)
    assert lines, log[-3000:]
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", lines[-1])}


def cache_state(cache: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(cache.iterdir())}


@pytest.fixture(scope="module")
def first_run(fx):
    out = fx["root"] / "run1"
    log = run_lmms_eval(fx, out)
    return log, *read_run(out, log), cache_state(fx["cache"])


@pytest.fixture(scope="module")
def second_run(fx, first_run):
    out = fx["root"] / "run2"
    log = run_lmms_eval(fx, out)
    return log, *read_run(out, log), cache_state(fx["cache"])


def predictions(samples: dict) -> dict:
    return {task: [s["score"]["pred"] for s in docs] for task, docs in samples.items()}


def test_both_variants_answer_every_doc_as_score_choices_does(fx, first_run):
    _, results, samples, _ = first_run
    expected, rows = fx["expected"], fx["rows"]
    accuracy = sum(e == r["answer"] for e, r in zip(expected, rows)) / len(rows)
    for task in TASKS:
        assert results[task]["score,none"] == pytest.approx(accuracy), results[task]
        assert [s["doc_id"] for s in samples[task]] == list(range(len(rows)))
        assert [s["score"]["ground_truth"] for s in samples[task]] == [r["answer"] for r in rows]
    assert predictions(samples) == {task: expected for task in TASKS}
    # generate variant: the model's text is the bare letter lmms-eval's EgoSchema parser reads
    assert [s["filtered_resps"][0] for s in samples["topa_egoschema_local"]] == [LETTERS[e] for e in expected]
    # mcppl variant: five (loss, is_greedy) pairs per doc survived lmms-eval's result unwrapping
    for sample, best in zip(samples["topa_egoschema_local_mcppl"], expected):
        pairs = [(float(loss), greedy in (True, "True")) for loss, greedy in sample["filtered_resps"]]
        assert len(pairs) == 5
        assert min(range(5), key=lambda i: pairs[i][0]) == best
        assert [greedy for _, greedy in pairs] == [i == best for i in range(5)]


def test_topa_report_of_the_run_shows_lmms_evals_accuracy_and_the_ranked_scores(fx, first_run, tmp_path):
    _, results, samples, _ = first_run
    page = tmp_path / "report.html"
    done = topa_cli("report", fx["root"] / "run1", "--out", page, "--thumbnails", "2", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {t["task"]: (t["lmms_eval"], t["total"], t["agrees"]) for t in summary["tasks"]} == {
        task: (results[task]["score,none"], len(fx["rows"]), True) for task in TASKS}
    assert summary["missing_videos"] == 0 and summary["page"] == str(page)
    from topa_plugin import read_lmms_run

    run = read_lmms_run(fx["root"] / "run1")
    ranked = [q for q in run.questions if q.task == "topa_egoschema_local_mcppl"]
    for q, sample in zip(ranked, samples["topa_egoschema_local_mcppl"]):
        losses = sorted(float(loss) for loss, _ in sample["filtered_resps"])
        assert q.margin == pytest.approx(losses[1] - losses[0]) and q.predicted == sample["score"]["pred"]
        assert q.options == [o.split(". ", 1)[1] for o in fx["rows"][q.doc_id]["option"]]  # from the task's data file
    assert f"{results[TASKS[0]]['score,none']:.4f}" in page.read_text()


def test_topa_report_of_a_grouped_run_shows_the_group_and_its_subtasks(fx, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(fx["tasks"], tasks)
    (tasks / "topa_egoschema_both.yaml").write_text(
        "group: topa_egoschema_both\ntask:\n" + "".join(f"  - {t}\n" for t in TASKS)
        + "aggregate_metric_list:\n  - metric: score\n    aggregation: mean\n    weight_by_size: true\n")
    log = run_lmms_eval(fx, tmp_path / "out", tasks=("topa_egoschema_both",), include_path=tasks)
    results = json.loads(next((tmp_path / "out").rglob("*_results.json"), Path("/missing")).read_text())["results"]
    assert set(results) == {"topa_egoschema_both", *TASKS}, log[-3000:]
    done = topa_cli("report", tmp_path / "out", "--out", tmp_path / "report.html", "--thumbnails", "0", "--json")
    assert done.returncode == 0, done.stderr
    rows = {t["task"]: t for t in json.loads(done.stdout)["tasks"]}
    assert list(rows) == ["topa_egoschema_both", *TASKS] and rows["topa_egoschema_both"]["group"]
    for task, row in rows.items():
        assert row["lmms_eval"] == results[task]["score,none"] and row["agrees"], row
    assert rows["topa_egoschema_both"]["total"] == 2 * len(fx["rows"])


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_quantized_llm_answers_every_doc_as_its_score_choices_does(fx, first_run, quantization):
    """quantization=8bit|4bit: lmms-eval's answers are those of the same quantized model called directly."""
    from tests.helpers.lmms_fixtures import expected_predictions

    out = fx["root"] / f"run_{quantization}"
    log = run_lmms_eval(fx, out, model_args=[f"quantization={quantization}"])
    _, samples = read_run(out, log)
    expected = expected_predictions(fx["checkpoint"], *fx["clip"], fx["data"], fx["videos"], quantization=quantization)
    assert predictions(samples) == {task: expected for task in TASKS}
    # ... and it did run quantized: its losses are not the full-precision run's
    task = "topa_egoschema_local_mcppl"
    losses = [[float(loss) for loss, _ in s["filtered_resps"]] for s in samples[task]]
    assert losses != [[float(loss) for loss, _ in s["filtered_resps"]] for s in first_run[2][task]]


def test_second_run_reads_every_video_from_the_feature_cache(fx, first_run, second_run):
    log1, _, samples1, cache1 = first_run
    log2, _, samples2, cache2 = second_run
    n = len(fx["rows"])
    # run 1 decodes each video once (first task) and reads the cache for the second task
    assert feature_sources(log1) == {"decoded": n, "cached": n}
    assert len(cache1) == n
    # run 2 decodes nothing, leaves the cache untouched and answers identically
    assert feature_sources(log2) == {"cached": 2 * n}
    assert cache2 == cache1
    assert predictions(samples2) == predictions(samples1)


def test_two_processes_split_the_docs_and_agree_with_one(fx, first_run, tmp_path):
    """The multi-GPU path (accelerate ranks, docs strided over them), here as two CPU processes."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port", str(port)]
    log = run_lmms_eval({**fx, "cache": tmp_path / "cache"}, tmp_path / "out", launcher=torchrun)
    results, samples = read_run(tmp_path / "out", log)
    assert predictions(samples) == predictions(first_run[2])
    assert results == {task: first_run[1][task] for task in TASKS}
    # each rank decoded its own half of the videos
    assert re.findall(r"topa loglikelihood: video features so far: (\d+) decoded", log) == ["2", "2"]


def test_undecodable_video_fails_the_run_naming_doc_and_file(fx, tmp_path):
    bad_video = write_garbage_video(tmp_path / "videos" / f"{fx['rows'][0]['video_idx']}.mp4")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(fx["rows"][0]) + "\n")
    made = topa_cli("lmms-tasks", "--data", data, "--videos", bad_video.parent, "--out", tmp_path / "tasks")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    log = run_lmms_eval({**fx, "cache": tmp_path / "cache"}, out, tasks=TASKS[:1], include_path=tmp_path / "tasks")
    assert not list(out.rglob("*_results.json")), "a run with an undecodable video must not write results"
    assert "TopaRequestError: task 'topa_egoschema_local' doc 0:" in log, log[-3000:]
    assert f"{bad_video}: cannot decode video" in log


def test_topa_lmms_tasks_rejects_rows_with_missing_videos(fx, tmp_path):
    rows = [dict(fx["rows"][0], video_idx="no-such-video"), dict(fx["rows"][1], answer=7)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    made = topa_cli("lmms-tasks", "--data", data, "--videos", fx["root"] / "data" / "videos", "--out", tmp_path / "tasks")
    assert made.returncode == 2
    assert f"{data} row 0 (video_idx 'no-such-video') field 'video_path': video not found" in made.stderr
    assert f"{data} row 1 (video_idx '{rows[1]['video_idx']}') field 'answer'" in made.stderr
    assert not (tmp_path / "tasks").exists()
