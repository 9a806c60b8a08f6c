"""lmms-eval output folders without running a model: EgoSchema-shaped docs and replies, scored by
lmms-eval's own EgoSchema functions and written by lmms-eval's own ``EvaluationTracker``, so the
files have exactly the layout ``lmms-eval --output_path ... --log_samples`` leaves."""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = "ABCDE"
MODEL_ARGS = "pretrained=/models/topa-toy"
GENERATE, MCPPL = "generate_until", "multiple_choice"


def egoschema_docs(n: int, seed: int = 0, videos: Path | None = None) -> list[dict]:
    """``n`` EgoSchema-shaped rows (question, five labelled options, answer 0-4)."""
    rng = random.Random(seed)
    verbs = ("cuts", "washes", "folds", "paints", "stirs", "sweeps", "packs", "reads")
    things = ("onions", "dishes", "towels", "a chair", "soup", "the floor", "a bag", "a book")
    docs = []
    for i in range(n):
        options = [f"{LETTERS[j]}. c {rng.choice(verbs)} {rng.choice(things)} then {rng.choice(verbs)} {rng.choice(things)}"
                   for j in range(5)]
        doc = {"video_idx": f"video-{i:05d}", "question": f"Question {i}: what is the overall goal of c's actions?",
               "option": options, "answer": rng.randrange(5)}
        if videos is not None:
            doc["video_path"] = str(Path(videos) / f"video-{i:05d}.mp4")
        docs.append(doc)
    return docs


def _sample(doc_id: int, doc: dict, answer, kind: str) -> dict:
    """One logged sample as lmms-eval's evaluator builds it, before the tracker writes it."""
    from lmms_eval.tasks.egoschema import utils

    context = utils.egoschema_doc_to_text(doc) if kind == GENERATE else doc["question"]
    if kind == GENERATE:
        filtered, metrics = [answer], utils.egoschema_process_results_generation(doc, [answer])
        arguments = [context, {"max_new_tokens": 16}]
    else:
        filtered = [(float(loss), loss == min(answer)) for loss in answer]
        metrics = utils.egoschema_process_results(doc, filtered)
        arguments = [value for text in utils.egoschema_doc_to_choice(doc) for value in (context, f" {text}")]
    return {"doc_id": doc_id, "doc": doc, "target": doc["answer"], "arguments": arguments,
            "resps": [[r] for r in filtered], "filtered_resps": filtered, "doc_hash": "0" * 64, **metrics}


def write_lmms_run(out: str | Path, tasks: dict[str, tuple[str, list[dict], list]], data_file: Path | None = None,
                   datetime_str: str = "20260101_000000", groups: dict[str, list[str]] | None = None) -> Path:
    """Write a run of ``tasks`` ({name: (GENERATE or MCPPL, docs, replies or per-option losses)}) under
    ``out``; each task's config names ``data_file`` as its data when given. Returns the results file."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker
    from lmms_eval.tasks.egoschema.utils import egoschema_aggregate_score

    tracker = EvaluationTracker(output_path=str(out))
    tracker.general_config_tracker.log_experiment_args(model_source="topa", model_args=MODEL_ARGS, system_instruction=None,
                                                       chat_template=None, fewshot_as_multiturn=False)
    samples, results, configs, n_samples = {}, {}, {}, {}
    for task, (kind, docs, answers) in tasks.items():
        samples[task] = [_sample(i, doc, answer, kind) for i, (doc, answer) in enumerate(zip(docs, answers))]
        score = egoschema_aggregate_score([s["score"] for s in samples[task]], None)
        results[task] = {"alias": task, "submission,none": [], "score,none": score, "score_stderr,none": "N/A"}
        configs[task] = {"task": task, "output_type": kind, "test_split": "test",
                         "metric_list": [{"metric": "score", "aggregation": "<function egoschema_aggregate_score>",
                                          "higher_is_better": True}]}
        if data_file is not None:
            configs[task].update(dataset_path="json", dataset_kwargs={"data_files": {"test": str(data_file)}})
        n_samples[task] = {"original": len(docs), "effective": len(docs)}
    # as lmms-eval 0.7.3 writes it: a group lists its members, and only tasks outside every group appear alone
    grouped = {t for members in (groups or {}).values() for t in members}
    subtasks = {**(groups or {}), **{task: [] for task in tasks if task not in grouped}}
    for group, members in (groups or {}).items():
        right = sum(s["score"]["pred"] == s["score"]["ground_truth"] for t in members for s in samples[t])
        results = {group: {"alias": group, "score,none": right / sum(len(samples[t]) for t in members)}, **results}
    tracker.save_results_aggregated(
        results={"results": results, "group_subtasks": subtasks, "configs": configs, "n-samples": n_samples,
                 "config": {"model": "topa", "model_args": MODEL_ARGS}},
        samples=samples, datetime_str=datetime_str)
    for task, task_samples in samples.items():
        tracker.save_results_samples(task, task_samples)
    return next(Path(out).rglob(f"{datetime_str}_results.json"))


def write_request_log(path: Path, task: str, docs: list[dict], losses: list[list[float]],
                      replies: list[str] | None = None) -> Path:
    """A ``request_log=`` file as ``topa``'s model writes it for ranked options (``replies``: the model's text,
    by default the chosen letter)."""
    with open(path, "a", encoding="utf-8") as f:
        for doc_id, (doc, row) in enumerate(zip(docs, losses)):
            chosen = min(range(len(row)), key=row.__getitem__)
            record = {"task": task, "doc_id": doc_id, "mode": "rank", "question": doc["question"],
                      "options": [o.split(". ", 1)[1] for o in doc["option"]], "chosen": chosen,
                      "reply": replies[doc_id] if replies else LETTERS[chosen], "losses": row, "doc": doc}
            f.write(json.dumps(record) + "\n")
    return path
