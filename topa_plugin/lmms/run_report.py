"""Read one lmms-eval run back: its accuracy per task and, per question, what was asked and answered.

lmms-eval 0.7.3 writes under ``--output_path`` a folder per model holding ``<date>_results.json``
(the aggregated metrics, the task configs, ``n-samples`` and ``group_subtasks``) and, with
``--log_samples``, one ``<date>_samples_<task>.jsonl`` per task: ``doc_id``, ``target``,
``filtered_resps`` (the reply, or ``[loss, is_greedy]`` per option of a ranked task), ``input``
(the prompt) and each metric's per-sample value, e.g. ``"score": {"pred": 1, "ground_truth": 0}``.
The samples leave the doc out, so questions and options come from, in this order: our request
log (``request_log=``, what the model read), the task's own local data file when its config names
one, and else the prompt itself.

Right and wrong are read from the per-sample metric the way lmms-eval's aggregations read it, and
the share of right answers is checked against the number in ``results.json``; a task whose number
is not that share (another aggregation) says so instead of showing a different accuracy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topa_plugin.lmms.choices import AmbiguousOptionsError, doc_options, parse_options
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.rowfiles import read_jsonl

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
THUMBNAILS = 4        # frames per question in a report card's strip (``topa report --thumbnails``)
RESULTS_SUFFIX = "_results.json"
# <output_path>/<model>/<date id>_results.json; tasks' own files (submissions/*_results.json) are not runs
RESULTS_FILE = re.compile(r"^\d{8}_\d{6}_results\.json$")
_GROUND_TRUTH_KEYS = ("ground_truth", "answer", "gt", "gt_answer", "target")
_PRED_KEYS = ("pred", "pred_answer", "prediction")


class RunReportError(TopaInputError, ValueError):
    """An lmms-eval output folder or request log that cannot be read; the message names the file."""


@dataclass
class Question:
    """One doc of one task as the run saw it."""

    task: str
    doc_id: int
    question: str
    options: list[str]              # option texts without their labels ([] when the run shows none)
    reply: str                      # what the model answered
    predicted: int | None           # option index the task's scorer read from the reply
    correct: int | None             # option index of the right answer
    right: bool | None              # None: the task's per-sample metric is not right/wrong
    scores: list[float] | None = None   # per option, as the run scored them (TOPA: mean NLL, lower is better)
    margin: float | None = None     # gap between the two best scores: small means a close call
    video: str | None = None        # the video file, when it exists
    video_name: str | None = None   # what the doc calls its video
    frames: list[str] = field(default_factory=list)  # thumbnails (data URIs)
    frames_note: str = ""           # why there are none

    @property
    def key(self) -> tuple[str, int]:
        return self.task, self.doc_id


@dataclass
class TaskScore:
    """A task's (or group's) number from results.json beside the right/total counted from its samples."""

    name: str
    metric: str                     # "score,none": lmms-eval's metric and filter
    value: float | None             # lmms-eval's own number
    right: int
    total: int
    depth: int = 0                  # 0: top level; 1: subtask of a group above it
    is_group: bool = False

    @property
    def share(self) -> float | None:
        return self.right / self.total if self.total else None

    @property
    def agrees(self) -> bool:
        """lmms-eval's number is the share of right answers (as a fraction or in percent)."""
        if self.value is None or self.share is None:
            return False
        return math.isclose(self.value, self.share, abs_tol=1e-9) or math.isclose(self.value, 100 * self.share, abs_tol=1e-7)


@dataclass
class Run:
    results_file: Path
    samples_files: dict[str, Path]
    model: str
    scores: list[TaskScore]
    questions: list[Question]
    doc_sources: dict[str, str]     # task -> where its questions and options came from
    request_logs: list[Path] = field(default_factory=list)
    other_results: int = 0          # older results files in the same folder, not read

    @property
    def name(self) -> str:
        return f"{self.results_file.parent.name}/{self.results_file.name.removesuffix(RESULTS_SUFFIX)}"


# ---------------------------------------------------------------- files

def find_results(run_dir: str | Path) -> tuple[Path, int]:
    """The newest ``*_results.json`` under ``run_dir`` (or ``run_dir`` itself) and how many others there are."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and RESULTS_FILE.match(run_dir.name):
        return run_dir, 0
    if not run_dir.is_dir():
        raise RunReportError(f"{run_dir}: no such folder (give lmms-eval's --output_path folder)")
    found = sorted((p for p in run_dir.rglob(f"*{RESULTS_SUFFIX}") if RESULTS_FILE.match(p.name)),
                   key=lambda p: (p.name, str(p)))
    if not found:
        raise RunReportError(f"{run_dir}: no lmms-eval results (*{RESULTS_SUFFIX}) in it or its subfolders; "
                             "give the --output_path folder of an lmms-eval run")
    return found[-1], len(found) - 1


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunReportError(f"{path}: invalid JSON: {e.msg} (line {e.lineno})") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise RunReportError(f"{path}: not an lmms-eval results file (no 'results' object)")
    return data


def samples_file(results_file: Path, task: str) -> Path:
    return results_file.with_name(results_file.name.removesuffix(RESULTS_SUFFIX) + f"_samples_{task}.jsonl")


def read_request_log(path: str | Path) -> tuple[dict[tuple[str, int], dict], list[Path]]:
    """Records of a ``request_log=`` file (and its ``.rank<N>`` siblings) that show options, by (task, doc_id)."""
    path = Path(path)
    if not path.is_file():
        raise RunReportError(f"--request-log {path}: file not found")
    files = [path, *sorted(path.parent.glob(path.name + ".rank*"))]
    records = {}
    for file in files:
        for n, record in enumerate(read_jsonl(file, RunReportError, skip_blank=True), start=1):
            if "task" not in record or "doc_id" not in record:
                raise RunReportError(f"{file}: record {n}: no 'task'/'doc_id'; not a topa request log")
            if record.get("options"):  # a rerun appends to the same log: the last record of a doc wins
                records[(record["task"], int(record["doc_id"]))] = {**record, "_where": f"{file}: record {n}"}
    return records, files


def _check_logged(record: dict, question: Question, sample: dict) -> None:
    """A request-log record must tell the same answer as the sample it is read with (the log of another
    run, or of an older run appended to, would put wrong options and scores on the card)."""
    reply = record.get("reply")
    if reply is None:  # ranked continuations: the option the log chose is the one lmms-eval scored
        same = record.get("chosen") == question.predicted
    else:  # the reply before (resps) or after (filtered_resps) the task's filters
        raw = sample.get("resps")
        same = str(reply) in {str(r) for r in [sample.get("filtered_resps"), *(raw if isinstance(raw, list) else [raw])]}
    if not same:
        told = f"reply {reply!r}" if reply is not None else f"chosen option {record.get('chosen')}"
        raise RunReportError(f"{record['_where']}: task {question.task!r} doc {question.doc_id}: {told}, but the run's "
                             "samples say otherwise; is this the request log of this run?")


def _dataset_rows(config: dict) -> tuple[list[dict] | None, str]:
    """The rows of a task whose config reads a local json/jsonl file in order (doc_id = row), else None and why."""
    from topa_plugin.utils.rowfiles import read_rows

    files = (config.get("dataset_kwargs") or {}).get("data_files")
    split = config.get("test_split") or config.get("validation_split")
    if config.get("dataset_path") != "json" or not files:
        return None, "the task's data is not a local file"
    if config.get("process_docs"):
        return None, "the task reorders its docs (process_docs)"
    path = files.get(split) if isinstance(files, dict) else files
    if not isinstance(path, str) or not Path(path).is_file():
        return None, f"its data file {path} is not there"
    return read_rows(path, RunReportError, (".jsonl", ".json")), f"data file {path}"


# ---------------------------------------------------------------- one sample

def _index(value: Any, n_options: int) -> int | None:
    """An option index from what a scorer wrote: 2, "2" or "C"; None for anything else (-1: unparsed)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 and (not n_options or value < n_options) else None
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _index(int(text), n_options)
        if len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
            return index if not n_options or index < n_options else None
    return None


def _judge(value: Any) -> tuple[bool | None, Any, Any]:
    """(right, predicted, correct) from a per-sample metric value, as lmms-eval's aggregations read it."""
    if isinstance(value, dict):
        pred = next((value[k] for k in _PRED_KEYS if k in value), None)
        truth = next((value[k] for k in _GROUND_TRUTH_KEYS if k in value), None)
        if pred is None or truth is None:
            return None, pred, truth
        return str(pred) == str(truth), pred, truth  # egoschema_aggregate_score compares them as strings
    if isinstance(value, (bool, int, float)) and float(value) in (0.0, 1.0):
        return float(value) == 1.0, None, None
    return None, None, None


def _pair_scores(resps: Any) -> list[float] | None:
    """Per-option scores of a ranked task: ``filtered_resps`` as ``[[loss, is_greedy], ...]``."""
    if not isinstance(resps, list) or len(resps) < 2:
        return None
    try:
        return [float(r[0]) for r in resps if isinstance(r, (list, tuple)) and len(r) == 2] or None
    except (TypeError, ValueError):
        return None


def score_margin(scores: list[float] | None, predicted: int | None) -> float | None:
    """Gap between the best and second-best score; lower is better unless the predicted option has the top one."""
    if not scores or len(scores) < 2:
        return None
    ordered = sorted(scores)
    higher_better = predicted is not None and 0 <= predicted < len(scores) and scores[predicted] == ordered[-1] != ordered[0]
    return ordered[-1] - ordered[-2] if higher_better else ordered[1] - ordered[0]


def _video(doc: dict) -> tuple[str | None, str | None]:
    """(path of the doc's video if it exists, the name the doc gives it)."""
    from topa_plugin.lmms.task_utils import MissingVideoError, resolve_video

    name = doc.get("video_idx") or doc.get("video_id") or doc.get("videoID") or doc.get("video_path") or doc.get("video")
    name = None if name is None else str(name)
    if not doc.get("video_path") and not doc.get("video_idx"):
        return None, name
    try:
        return str(resolve_video(doc)), name
    except MissingVideoError:
        return None, name


def _prompt_options(prompt: str, doc: dict):
    """The options a generate task's prompt shows, or None (none shown, or several blocks none of which is the doc's)."""
    try:
        return parse_options(prompt, doc)
    except AmbiguousOptionsError:
        return None


def _question(task: str, sample: dict, metric: str, doc: dict, logged: dict | None) -> Question:
    doc_id = int(sample["doc_id"])
    prompt = sample.get("input") if isinstance(sample.get("input"), str) else ""
    parsed = _prompt_options(prompt, doc) if prompt and not logged and not doc_options(doc) else None
    options = list(logged["options"]) if logged else (doc_options(doc) or (list(parsed.texts) if parsed else []))
    text = (logged or {}).get("question") or doc.get("question") or (parsed.question if parsed else prompt)
    right, pred, truth = _judge(sample.get(metric.split(",")[0]))
    predicted = _index(pred, len(options)) if pred is not None else (logged or {}).get("chosen")
    correct = _index(truth if truth is not None else sample.get("target"), len(options))
    resps = sample.get("filtered_resps")
    scores = [float(x) for x in logged["losses"]] if logged and logged.get("losses") else _pair_scores(resps)
    if logged and logged.get("reply") is not None:
        reply = str(logged["reply"])
    elif isinstance(resps, str):
        reply = resps
    elif scores and predicted is not None:
        reply = f"{LETTERS[predicted]} (best score)"
    else:
        reply = json.dumps(resps, ensure_ascii=False)
    video, video_name = _video(doc)
    return Question(task, doc_id, str(text), [str(o) for o in options], reply, predicted, correct, right,
                    scores, score_margin(scores, predicted), video, video_name)


# ---------------------------------------------------------------- one run

def _metric(task: str, results: dict, config: dict) -> str:
    """The ``metric,filter`` key of the task's first metric (its config's order), e.g. ``score,none``."""
    numbers = [k for k, v in results.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))
               and not isinstance(v, bool)]
    wanted = [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m, dict)]
    for metric in wanted:
        for key in numbers:
            if key.split(",")[0] == metric:
                return key
    if not numbers:
        raise RunReportError(f"task {task!r}: results.json has no numeric metric")
    return numbers[0]


def _leaf_task(task: str, data: dict, results_file: Path, logged: dict) -> tuple[list[Question], str, str]:
    config = data.get("configs", {}).get(task, {})
    metric = _metric(task, data["results"].get(task, {}), config)
    path = samples_file(results_file, task)
    if not path.is_file():
        raise RunReportError(f"{results_file.parent}: no samples for task {task!r} ({path.name} missing); "
                             "run lmms-eval with --log_samples")
    rows, source = _dataset_rows(config)
    questions = []
    for n, sample in enumerate(read_jsonl(path, RunReportError, skip_blank=True), start=1):
        if "doc_id" not in sample:
            raise RunReportError(f"{path}: record {n}: no 'doc_id'; not an lmms-eval samples file")
        doc_id = int(sample["doc_id"])
        record = logged.get((task, doc_id))
        if record is not None:
            doc = record.get("doc") or {}
        elif rows is not None:
            if doc_id >= len(rows):
                raise RunReportError(f"{path}: doc_id {doc_id}: the task's {source} has only {len(rows)} rows")
            doc = rows[doc_id]
        else:
            doc = {}
        questions.append(_question(task, sample, metric, doc, record))
        if record is not None:
            _check_logged(record, questions[-1], sample)
    questions.sort(key=lambda q: q.doc_id)
    where = "request log" if questions and all(q.key in logged for q in questions) else (
        source if rows is not None else f"the prompts ({source})")
    return questions, metric, where


def read_lmms_run(run_dir: str | Path, request_log: str | Path | None = None) -> Run:
    """Everything the report shows of one run: scores per task and group, and every question."""
    results_file, others = find_results(run_dir)
    data = _read_json(results_file)
    logged, log_files = read_request_log(request_log) if request_log else ({}, [])
    subtasks = data.get("group_subtasks") or {}
    names = list(dict.fromkeys([*subtasks, *data["results"]]))  # a group without its own metric is only in the first
    leaves = [t for t in names if not subtasks.get(t)]
    questions, metrics, sources, files = {}, {}, {}, {}
    for task in leaves:
        questions[task], metrics[task], sources[task] = _leaf_task(task, data, results_file, logged)
        files[task] = samples_file(results_file, task)
    children = {child for kids in subtasks.values() for child in kids}
    scores: list[TaskScore] = []

    def add(task: str, depth: int) -> tuple[int, int]:
        results = data["results"].get(task, {})
        if subtasks.get(task):
            row = TaskScore(task, "", None, 0, 0, depth, is_group=True)
            scores.append(row)
            for child in subtasks[task]:
                right, total = add(child, depth + 1)
                row.right, row.total = row.right + right, row.total + total
            numbers = [k for k, v in results.items() if "," in k and "_stderr" not in k and isinstance(v, (int, float))]
            row.metric, row.value = (numbers[0], float(results[numbers[0]])) if numbers else ("", None)
            return row.right, row.total
        done = questions.get(task, [])
        right = sum(1 for q in done if q.right)
        value = results.get(metrics[task]) if task in metrics else None
        scores.append(TaskScore(task, metrics.get(task, ""), None if value is None else float(value), right, len(done), depth))
        return right, len(done)

    for task in names:
        if task not in children:
            add(task, 0)
    config = data.get("config") or {}
    model = f"{config.get('model', '?')} ({config.get('model_args', '')})"
    return Run(results_file, files, model, scores, [q for t in leaves for q in questions[t]], sources, log_files, others)


# ---------------------------------------------------------------- two runs

@dataclass
class Comparison:
    """Questions of run A and run B matched by (task, doc_id)."""

    gained: list[tuple[Question, Question]]    # wrong in A, right in B
    lost: list[tuple[Question, Question]]      # right in A, wrong in B
    switched: list[tuple[Question, Question]]  # another answer, wrong in both
    matched: int
    only_a: int
    only_b: int


def compare_runs(a: Run, b: Run) -> Comparison:
    by_key = {q.key: q for q in b.questions}
    gained, lost, switched = [], [], []
    matched = 0
    for qa in a.questions:
        qb = by_key.get(qa.key)
        if qb is None:
            continue
        matched += 1
        if qa.right is False and qb.right:
            gained.append((qa, qb))
        elif qa.right and qb.right is False:
            lost.append((qa, qb))
        elif qa.right is False and qb.right is False and qa.predicted != qb.predicted:
            switched.append((qa, qb))
    return Comparison(gained, lost, switched, matched, len(a.questions) - matched, len(b.questions) - matched)
