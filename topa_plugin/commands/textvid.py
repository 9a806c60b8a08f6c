"""`topa textvid validate|stats|generate`: check, describe and generate TextVid files.

validate/stats exit status: 0 valid, 1 the file has problems (all of them are printed), 2 it cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from topa_plugin.commands import fail
from topa_plugin.textvid.backends import BackendError, make_backend
from topa_plugin.textvid.generate import (
    BUILTIN_SOURCES,
    GenerateOptions,
    GenerationError,
    generate,
)
from topa_plugin.textvid.records import TextVidError, record_of, scan_textvid
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
    try:
        options.check()
        backend = make_backend(args.backend, model, base_url=args.base_url, api_key_env=args.api_key_env,
                               timeout=args.timeout, json_mode=args.json_mode, device=args.device)
        report = generate(backend, options, progress=args.progress)
    except (BackendError, GenerationError, TextVidError) as e:
        fail(f"{COMMAND} generate", str(e))
    print(report.summary())
    if not report.complete:
        print(f"stopped after {report.requests} requests (--max-requests); "
              f"rerun the same command to continue", file=sys.stderr)
        return 1
    return 0


# Each entry adds one action to `topa textvid`.
ACTIONS = (_register_validate, _register_stats, _register_generate)


def register(subparsers) -> None:
    parser = subparsers.add_parser("textvid", help="validate, describe and generate TextVid (textual video) files")
    sub = parser.add_subparsers(dest="textvid_command", metavar="ACTION", required=True)
    for add_action in ACTIONS:
        add_action(sub)
