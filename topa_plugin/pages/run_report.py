"""The report page of an lmms-eval run (``topa report``): accuracy per task, answer-position bias,
one card per question (rendered lazily by the page's script), and, for two runs, what changed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from topa_plugin.lmms.run_report import LETTERS, THUMBNAILS, Comparison, Question, Run, compare_runs, read_lmms_run
from topa_plugin.pages import charts
from topa_plugin.pages.images import thumbnail_uri
from topa_plugin.pages.render import check_page_path, render, write_page

STRIP_SIDE = 112  # pixels, longest side: a strip of 4 stays a few kB per video
NO_ANSWER = "none"  # the bias chart's column for replies the task's scorer could not read


def bias_chart(questions: list[Question]) -> str | None:
    """Predicted letters against correct letters of one task's questions (None without options)."""
    n = max((max(len(q.options), len(q.scores or []), (q.predicted or 0) + 1, (q.correct or 0) + 1) for q in questions),
            default=0)
    if n < 2:
        return None
    letters = list(LETTERS[:n])
    predicted = Counter(LETTERS[q.predicted] if q.predicted is not None else NO_ANSWER for q in questions)
    correct = Counter(LETTERS[q.correct] for q in questions if q.correct is not None)
    categories = letters + ([NO_ANSWER] if predicted[NO_ANSWER] else [])
    return charts.bars(categories, {"predicted": [predicted[c] for c in categories],
                                    "correct": [correct[c] for c in categories]},
                       ylabel="questions")


def margin_chart(questions: list[Question]) -> str | None:
    """Histogram of score margins, right answers against wrong ones (None when the run has no scores)."""
    right = [q.margin for q in questions if q.margin is not None and q.right]
    wrong = [q.margin for q in questions if q.margin is not None and q.right is False]
    if not right and not wrong:
        return None
    return charts.histogram({"right": right, "wrong": wrong}, xlabel="margin between the two best scores")


def _card(q: Question, other: Question | None) -> dict:
    card = {"t": q.task, "d": q.doc_id, "q": q.question, "o": q.options, "r": q.reply, "p": q.predicted,
            "c": q.correct, "ok": q.right, "s": None if q.scores is None else [round(s, 4) for s in q.scores],
            "m": None if q.margin is None else round(q.margin, 4), "v": q.video_name, "f": q.frames, "n": q.frames_note}
    if other is not None:
        card["b"] = {"r": other.reply, "p": other.predicted, "ok": other.right}
    return card


def _changes(comparison: Comparison) -> list[dict]:
    groups = [("gained", "Gained: wrong in A, right in B", comparison.gained),
              ("lost", "Lost: right in A, wrong in B", comparison.lost),
              ("switched", "Another wrong answer", comparison.switched)]
    return [{"id": key, "title": title, "rows": [
        {"task": a.task, "doc_id": a.doc_id, "question": a.question, "a": a.reply, "b": b.reply,
         "correct": LETTERS[a.correct] if a.correct is not None else "?"} for a, b in pairs]}
        for key, title, pairs in groups]


def attach_thumbnails(questions: list[Question], frames: int = THUMBNAILS, side: int = STRIP_SIDE) -> int:
    """Decode ``frames`` frames of each reachable video (once per file) as thumbnails; returns how
    many questions have no video to show. A file that cannot be decoded is noted on its card."""
    from topa_plugin.features.video import VideoDecodeError, read_frames

    decoded: dict[str, tuple[list[str], str]] = {}
    missing = 0
    for q in questions:
        if q.video is None:
            missing += 1
            q.frames_note = f"video {q.video_name} not found" if q.video_name else "the run names no video"
            continue
        if frames < 1:
            q.frames_note = "thumbnails off (--thumbnails 0)"
            continue
        if q.video not in decoded:
            try:
                decoded[q.video] = ([thumbnail_uri(f, side) for f in read_frames(q.video, frames)], "")
            except VideoDecodeError as err:
                decoded[q.video] = ([], str(err))
        q.frames, q.frames_note = decoded[q.video]
        if q.frames_note:
            missing += 1
    return missing


def render_run_report(run: Run, run_b: Run | None = None, missing_videos: int = 0, thumbnails: int = 0) -> str:
    tasks = list(dict.fromkeys(q.task for q in run.questions))
    per_task = {t: [q for q in run.questions if q.task == t] for t in tasks}
    comparison = compare_runs(run, run_b) if run_b is not None else None
    others = {q.key: q for q in run_b.questions} if run_b is not None else {}
    charts_by_task = [{"task": t, "bias": bias_chart(qs), "margin": margin_chart(qs)} for t, qs in per_task.items()]
    return render(
        "run_report.html.j2", title=f"lmms-eval run: {run.name}", run=run, run_b=run_b,
        tasks=tasks, charts=charts_by_task, missing_videos=missing_videos, thumbnails=thumbnails,
        comparison=comparison, changes=_changes(comparison) if comparison else [],
        data={"tasks": tasks, "two": run_b is not None,
              "cards": [_card(q, others.get(q.key)) for q in run.questions]},
    )


@dataclass
class RunReport:
    """What ``write_run_report`` wrote and read."""

    path: Path
    run: Run
    run_b: Run | None
    comparison: Comparison | None
    missing_videos: int


def write_run_report(out: str | Path, run_dir: str | Path, run_dir_b: str | Path | None = None, *,
                     request_log: str | Path | None = None, request_log_b: str | Path | None = None,
                     thumbnails: int = THUMBNAILS) -> RunReport:
    """Read lmms-eval's ``--output_path`` folder ``run_dir`` (and ``run_dir_b`` to compare with) and write
    the report page to ``out``; ``thumbnails`` frames per question where its video is reachable."""
    out = check_page_path(out)  # before any reading or decoding
    run = read_lmms_run(run_dir, request_log)
    run_b = read_lmms_run(run_dir_b, request_log_b) if run_dir_b is not None else None
    missing = attach_thumbnails(run.questions, thumbnails)
    path = write_page(out, render_run_report(run, run_b, missing, thumbnails))
    return RunReport(path, run, run_b, compare_runs(run, run_b) if run_b is not None else None, missing)
