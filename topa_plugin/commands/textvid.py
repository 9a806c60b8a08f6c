"""`topa textvid validate|stats|report|dedup|balance|generate`: check, describe, clean and generate TextVid files.

validate/stats exit status: 0 valid, 1 the file has problems (all of them are printed), 2 it cannot be read.
report/dedup/balance stop at the first invalid record (exit 2, naming it) unless --skip-invalid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from topa_plugin.commands import check_output_file, fail
from topa_plugin.textvid.backends import BackendError, make_backend
from topa_plugin.textvid.generate import (
    BUILTIN_SOURCES,
    GenerateOptions,
    GenerationError,
    generate,
)
from topa_plugin.textvid.near_duplicates import DEFAULT_THRESHOLD, check_threshold
from topa_plugin.textvid.reader import record_of, scan_textvid
from topa_plugin.textvid.records import TextVidError
from topa_plugin.textvid.stats import TextVidStats

COMMAND = "textvid"


def _read(action: str, path: str) -> dict:
    """Statistics of a valid file, read as a stream; every problem is printed as it is found
    (then exit 1) or the unreadable file named (exit 2)."""
    stats, problems = TextVidStats(), 0
    try:
        for item, found in scan_textvid(path, desc=f"{action} {Path(path).name}"):
            for problem in found:
                print(problem)
            problems += len(found)
            if not found:
                stats.add(record_of(item))
    except TextVidError as err:
        for problem in err.problems:
            print(problem)
        problems += len(err.problems)
    except OSError as err:
        fail(f"{COMMAND} {action}", f"{path}: {err.strerror}" if err.strerror else str(err))
    if problems:
        fail(f"{COMMAND} {action}", f"{path}: {problems} {'problem' if problems == 1 else 'problems'}", status=1)
    return stats.result()


def run_validate(args) -> int:
    stats = _read("validate", args.file)
    print(f"OK: {args.file}: {stats['records']} records, {stats['frames']} frames, "
          f"{stats['captions']} captions, {stats['qas']} QAs")
    return 0


def _format_number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.2f}"


def _print_stats(path: str, stats: dict) -> None:
    print(f"file: {path}")
    for label, key in (("records", "records"), ("frames", "frames"), ("captions", "captions"),
                       ("QAs", "qas"), ("QAs with open answers", "qas_with_open_answer")):
        print(f"  {label:<26}{stats[key]:>10}")
    print(f"  {'':<26}{'min':>8}{'mean':>8}{'median':>8}{'max':>8}")
    for key, dist in stats["distributions"].items():
        label = key.replace("_", " ").replace("qas", "QAs")
        cells = ["-"] * 4 if dist is None else [_format_number(dist[k]) for k in ("min", "mean", "median", "max")]
        print(f"  {label:<26}" + "".join(f"{c:>8}" for c in cells))


def run_stats(args) -> int:
    stats = _read("stats", args.file)
    if args.json:
        print(json.dumps({"file": args.file, **stats}, indent=2))
    else:
        _print_stats(args.file, stats)
    return 0


def _register_validate(sub) -> None:
    p = sub.add_parser("validate", help="report every problem (file, record, id, field); exit 1 if any")
    p.add_argument("file", help="release textvid.json (a JSON list) or a .jsonl file")
    p.set_defaults(func=run_validate)


def _register_stats(sub) -> None:
    p = sub.add_parser("stats", help="counts and length distributions of a valid file")
    p.add_argument("file", help="release textvid.json (a JSON list) or a .jsonl file")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=run_stats)


def _threshold(text: str) -> float:
    """argparse type of --threshold: a number in (0, 1]."""
    try:
        return check_threshold(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if "outside" in str(err) else f"expected a number, got {text!r}") from None


def _input_file(action: str, path: str, what: str = "FILE") -> str:
    if not Path(path).is_file():
        fail(f"{COMMAND} {action}", f"{what} {path}: " + ("is a folder" if Path(path).is_dir() else "no such file"))
    return path


def _one_line(err: TextVidError, path: str) -> str:
    """A file's first problem as one line; for an invalid record, with the ways on."""
    if not err.problems or err.problems[0].index is None:  # the file itself: nothing to skip
        return str(err.problems[0]) if err.problems else str(err)
    return (f"{err.problems[0]} (--skip-invalid leaves invalid records out; `topa textvid validate {path}` "
            "lists every problem)")


def _report_skipped(skipped: list, path: str) -> None:
    records = len({(p.index, p.line) for p in skipped})
    if records:
        print(f"--skip-invalid: left out {records} invalid record(s) of {path} "
              f"(`topa textvid validate {path}` lists why)", file=sys.stderr)


def _print_quality(report: dict) -> None:
    from topa_plugin.pages.textvid_report import findings

    print(f"file: {report['file']}: {report['records']} Tideos, {report['qas']} QAs")
    for rule, s in report["shortcuts"].items():
        if s["rate"] is None:
            continue
        verdict = {"above": "SHORTCUT", "below": "below chance"}.get(s["flag"], "at chance")
        print(f"  {rule:<18} rate {s['rate']:.3f} ({s['hits']}/{s['qas']}, 95% Wilson {s['low']:.3f}..{s['high']:.3f})"
              f"  chance {s['chance']:.3f} [{s['chance_low']:.3f}..{s['chance_high']:.3f}]  {verdict}")
    near = report["near_duplicates"]
    print(f"  near-duplicates    {near['duplicates']} Tideos in {len(near['clusters'])} clusters "
          f"(Jaccard of caption bigrams >= {near['threshold']:g})")
    letters = " ".join(f"{k}:{v}" for k, v in report["answer_letters"].items())
    print(f"  answer letters     {letters}  (chi-square p = {report['letter_test']['p_value']:.3g})")
    for line in findings(report):
        print(f"  finding: {line}")


def quality_reports(action: str, files: list[str], threshold: float, skip_invalid: bool) -> list[dict]:
    """The report of each file, or one error line naming the first invalid record (exit 2)."""
    from topa_plugin.textvid.quality import quality_report

    reports = []
    for path in files:
        try:
            reports.append(quality_report(path, threshold, skip_invalid, desc=f"report {Path(path).name}"))
        except TextVidError as err:
            fail(f"{COMMAND} {action}", _one_line(err, path))
        if reports[-1]["skipped_invalid"]:
            print(f"--skip-invalid: left out {reports[-1]['skipped_invalid']} invalid record(s) of {path}",
                  file=sys.stderr)
    return reports


def run_report(args) -> int:
    from topa_plugin.pages.render import check_page_path
    from topa_plugin.pages.textvid_report import write_report

    files = [_input_file("report", args.file)] + ([_input_file("report", args.file_b, "FILE_B")] if args.file_b else [])
    if args.out is not None:
        check_page_path(args.out)
    reports = quality_reports("report", files, args.threshold, args.skip_invalid)
    if args.out is not None:
        write_report(args.out, reports)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"files": reports}, indent=2))
        return 0
    for report in reports:
        _print_quality(report)
    if args.out is not None:
        print(f"report: {args.out}")
    return 0


def _register_report(sub) -> None:
    p = sub.add_parser("report", help="quality report: answer shortcuts against chance, near-duplicates, diversity",
                       description="Quality report of a TextVid file (or two side by side): answer shortcuts "
                                   "against chance with 95% intervals, answer letters, question types, diversity, "
                                   "near-duplicate Tideos (MinHash LSH) and degenerate options. Streams the file.")
    p.add_argument("file", help="release textvid.json (a JSON list) or a .jsonl file")
    p.add_argument("file_b", nargs="?", metavar="FILE_B", help="a second file, shown side by side")
    p.add_argument("--out", type=Path, metavar="REPORT.html", help="write the report as a self-contained HTML page")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"near-duplicate Jaccard similarity threshold in (0, 1] (default {DEFAULT_THRESHOLD})")
    p.add_argument("--skip-invalid", action="store_true", help="leave invalid records out (default: stop at the first)")
    p.set_defaults(func=run_report)


def _check_rewrite(action: str, args) -> None:
    _input_file(action, args.file)
    out = check_output_file(f"{COMMAND} {action}", args.out)
    if out.suffix not in (".json", ".jsonl"):
        fail(f"{COMMAND} {action}", f"--out {out}: expected a .jsonl or .json file")
    if out.resolve() == Path(args.file).resolve():
        fail(f"{COMMAND} {action}", f"--out {out}: is the input file; give a new path")
    if not out.parent.is_dir():
        fail(f"{COMMAND} {action}", f"--out {out}: folder {out.parent} does not exist")


def _rewrite(action: str, args, job):
    """Check FILE and --out, run ``job(skipped)`` (a pass that writes FILE2), report skipped records; its result."""
    _check_rewrite(action, args)
    skipped: list = []
    try:
        result = job(skipped)
    except TextVidError as err:
        fail(f"{COMMAND} {action}", _one_line(err, args.file))
    _report_skipped(skipped, args.file)
    return result


def _add_rewrite_args(p) -> None:
    """FILE, --out FILE2 and --skip-invalid: the arguments of every pass that rewrites a TextVid file."""
    p.add_argument("file", help="release textvid.json (a JSON list) or a .jsonl file")
    p.add_argument("--out", required=True, type=Path, metavar="FILE2", help="output .jsonl or .json")
    p.add_argument("--skip-invalid", action="store_true", help="leave invalid records out (default: stop at the first)")


def run_dedup(args) -> int:
    from topa_plugin.textvid.near_duplicates import dedup_file, removed_path

    found = _rewrite("dedup", args, lambda skipped: dedup_file(args.file, args.out, args.threshold, args.skip_invalid, skipped))
    kept = len(found.indices) - len(found.matches)
    print(f"kept {kept} of {len(found.indices)} Tideos in {args.out}; removed {len(found.matches)} near-duplicates "
          f"(Jaccard >= {args.threshold:g}) of {len(found.clusters())} clusters, listed in {removed_path(args.out)}")
    return 0


def _register_dedup(sub) -> None:
    p = sub.add_parser("dedup", help="keep the first Tideo of each near-duplicate cluster",
                       description="Copy FILE to --out keeping the first Tideo of each near-duplicate cluster "
                                   "(MinHash LSH candidates, exact Jaccard of caption bigrams); the removed ones "
                                   "are listed with their cluster in OUT's stem + .removed.jsonl. Deterministic.")
    _add_rewrite_args(p)
    p.add_argument("--threshold", type=_threshold, default=DEFAULT_THRESHOLD, metavar="T",
                   help=f"Jaccard similarity threshold in (0, 1] (default {DEFAULT_THRESHOLD})")
    p.set_defaults(func=run_dedup)


def run_balance(args) -> int:
    from topa_plugin.textvid.balance import balance_file

    balancer = _rewrite("balance", args, lambda skipped: balance_file(args.file, args.out, args.seed, args.skip_invalid, skipped))
    letters = " ".join(f"{k}:{v}" for k, v in sorted(balancer.letters.items()))
    print(f"wrote {args.out}: answer letters {letters}; {balancer.kept} QAs kept their order "
          f"(answer says both/all/none/and, as the release's balancing)")
    return 0


def _register_balance(sub) -> None:
    p = sub.add_parser("balance", help="reorder options so the answer letters are uniform",
                       description="Reorder each QA's options so the answer letters come out uniform (seeded, "
                                   "deterministic); the answer field follows its option. QAs whose answer says "
                                   "both/all/none/and keep their order, as in the release's answer balancing.")
    _add_rewrite_args(p)
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the letter draws and shuffles (default 0)")
    p.set_defaults(func=run_balance)


DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def _register_generate(sub) -> None:
    p = sub.add_parser(
        "generate", help="write Tideos with an LLM (OpenAI-compatible API or local HF model)",
        description="Generate TextVid records with an LLM. Resumable: rerun the same command after a crash "
                    "or an exhausted request budget and it continues until FILE holds N records.")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.jsonl",
                   help="output JSON Lines; an existing file is resumed (FILE.rejections.jsonl logs rejections)")
    p.add_argument("--num", required=True, type=int, metavar="N", help="records the file must hold at the end")
    p.add_argument("--source", default="howto", metavar="|".join(BUILTIN_SOURCES) + "|FILE",
                   help="built-in seed list, or your own UTF-8 file with one condition per line (default: howto)")
    p.add_argument("--backend", choices=("openai", "hf"), default="openai",
                   help="openai: any OpenAI-compatible chat endpoint; hf: a local transformers model")
    p.add_argument("--model", metavar="NAME",
                   help=f"model name on the endpoint (default {DEFAULT_OPENAI_MODEL}) or HF id/path (hf: required)")
    p.add_argument("--base-url", metavar="URL", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="environment variable holding the API key (default OPENAI_API_KEY; optional with --base-url)")
    p.add_argument("--concurrency", type=int, default=4, metavar="C", help="requests in flight (default 4)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="condition sampling and per-request seeds")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T")
    p.add_argument("--max-tokens", type=int, default=4096, metavar="M", help="completion tokens per request")
    p.add_argument("--max-attempts", type=int, default=5, metavar="K",
                   help="tries per request on rate limits (429) and server errors (5xx) (default 5)")
    p.add_argument("--max-requests", type=int, metavar="R",
                   help="stop after R requests this run (default 3 x missing records + 10); rerun to continue")
    p.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                   help="first retry wait, doubled per retry, when the server sends no Retry-After (default 1)")
    p.add_argument("--prompt-template", type=Path, metavar="FILE",
                   help="user prompt template replacing the packaged one; placeholders $condition, "
                        "$source_instruction, $min_frames, $max_frames")
    p.add_argument("--json-mode", action=argparse.BooleanOptionalAction, default=True,
                   help="ask the openai backend for response_format json_object (default on)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS", help="per-request HTTP timeout")
    p.add_argument("--device", help="hf backend: torch device (default cuda when available, else cpu)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    p.add_argument("--report", type=Path, metavar="FILE.html",
                   help="when done, write the quality report of --out here and print its shortcut and "
                        "near-duplicate figures")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        # Our retries and rejections at INFO; the HTTP client's per-request lines stay quiet.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        logging.getLogger("topa_plugin").setLevel(logging.INFO)
    model = args.model
    if model is None:
        if args.backend == "hf":
            fail(f"{COMMAND} generate", "--backend hf needs --model (HF id or local directory)")
        model = DEFAULT_OPENAI_MODEL
    options = GenerateOptions(
        out=args.out, num=args.num, source=args.source, seed=args.seed, temperature=args.temperature,
        max_tokens=args.max_tokens, concurrency=args.concurrency, max_attempts=args.max_attempts,
        max_requests=args.max_requests, prompt_template=args.prompt_template, backoff=args.backoff,
    )
    if args.report is not None:
        from topa_plugin.pages.render import check_page_path

        check_page_path(args.report)  # before any request
    try:
        options.check()
        backend = make_backend(args.backend, model, base_url=args.base_url, api_key_env=args.api_key_env,
                               timeout=args.timeout, json_mode=args.json_mode, device=args.device)
        report = generate(backend, options, progress=args.progress)
    except (BackendError, GenerationError, TextVidError) as e:
        fail(f"{COMMAND} generate", str(e))
    print(report.summary())
    if args.report is not None:
        run_report(argparse.Namespace(file=str(args.out), file_b=None, out=args.report, json=False,
                                      threshold=DEFAULT_THRESHOLD, skip_invalid=False))
    if not report.complete:
        print(f"stopped after {report.requests} requests (--max-requests); "
              f"rerun the same command to continue", file=sys.stderr)
        return 1
    return 0


# Each entry adds one action to `topa textvid`.
ACTIONS = (_register_validate, _register_stats, _register_report, _register_dedup, _register_balance, _register_generate)


def register(subparsers) -> None:
    parser = subparsers.add_parser("textvid", help="validate, describe, clean and generate TextVid (textual video) files")
    sub = parser.add_subparsers(dest="textvid_command", metavar="ACTION", required=True)
    for add_action in ACTIONS:
        add_action(sub)
