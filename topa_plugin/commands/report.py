"""``topa report RUN_DIR [RUN_DIR_B] --out FILE.html``: one page showing an lmms-eval run question by question."""

from __future__ import annotations

import argparse
import json

from topa_plugin.commands import fail, non_negative_int
from topa_plugin.lmms.run_report import THUMBNAILS

COMMAND = "report"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="write an HTML report of an lmms-eval run (accuracy, every question, answer-position bias)",
        description=(
            "Reads lmms-eval's --output_path folder (the *_results.json and the --log_samples files) and writes one "
            "self-contained HTML page: accuracy per task and subtask beside lmms-eval's own numbers, a card per "
            "question (question, options, reply, correct answer, score margin, video thumbnails), filters and sorting, "
            "the predicted letters against the correct ones, and with a second run the questions gained and lost."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="lmms-eval --output_path folder (or one *_results.json in it)")
    parser.add_argument("run_dir_b", metavar="RUN_DIR_B", nargs="?", help="a second run to compare with (B)")
    parser.add_argument("--out", required=True, metavar="FILE.html", help="the page to write")
    parser.add_argument("--request-log", metavar="FILE", help="the run's request_log= file (the options the model read, "
                        "their scores)")
    parser.add_argument("--request-log-b", metavar="FILE", help="the request log of RUN_DIR_B")
    parser.add_argument("--thumbnails", type=non_negative_int, default=THUMBNAILS, metavar="N",
                        help=f"frames per question shown when its video is reachable (default {THUMBNAILS}; 0: none)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    parser.set_defaults(func=run)


def _summary(report) -> dict:
    run, comparison = report.run, report.comparison
    summary = {"page": str(report.path), "results": str(run.results_file), "questions": len(run.questions),
               "missing_videos": report.missing_videos,
               "tasks": [{"task": s.name, "metric": s.metric, "lmms_eval": s.value, "right": s.right, "total": s.total,
                          "agrees": s.agrees, "group": s.is_group} for s in run.scores]}
    if comparison is not None:
        summary["changes"] = {"matched": comparison.matched, "gained": len(comparison.gained), "lost": len(comparison.lost),
                              "switched": len(comparison.switched)}
    return summary


def run(args: argparse.Namespace) -> int:
    from topa_plugin.pages.render import PageError, check_page_path
    from topa_plugin.pages.run_report import write_run_report

    if args.request_log_b and not args.run_dir_b:
        fail(COMMAND, "--request-log-b needs a second run (RUN_DIR_B)")
    try:
        check_page_path(args.out)
    except PageError as err:
        fail(COMMAND, f"--out {err}")
    report = write_run_report(args.out, args.run_dir, args.run_dir_b, request_log=args.request_log,
                              request_log_b=args.request_log_b, thumbnails=args.thumbnails)
    summary = _summary(report)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for task in summary["tasks"]:
        value = "—" if task["lmms_eval"] is None else f"{task['lmms_eval']:.4f}"
        print(f"{task['task']:<40} {task['metric']:<14} {value:>8}  {task['right']}/{task['total']} right")
    if report.missing_videos:
        print(f"{report.missing_videos} question(s) without a video to show")
    if "changes" in summary:
        c = summary["changes"]
        print(f"B vs A: {c['gained']} gained, {c['lost']} lost, {c['switched']} other wrong answer ({c['matched']} matched)")
    if report.run.other_results:
        print(f"read {report.run.results_file} (the newest of {report.run.other_results + 1} results files)")
    print(f"report: {report.path}")
    return 0
