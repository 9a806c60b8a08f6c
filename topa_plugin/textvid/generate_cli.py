"""``topa textvid generate``: write Tideos with an LLM (see ``textvid.generate``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .backends import BackendError, make_backend
from .generate import BUILTIN_SOURCES, GenerateOptions, GenerationError, generate
from .records import TextVidError

DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


def register_generate(textvid_subparsers) -> None:
    """Add ``generate`` to the ``topa textvid`` subcommands."""
    p = textvid_subparsers.add_parser(
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
            print("topa textvid generate: error: --backend hf needs --model (HF id or local directory)",
                  file=sys.stderr)
            return 2
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
        print(f"topa textvid generate: error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    if not report.complete:
        print(f"stopped after {report.requests} requests (--max-requests); "
              f"rerun the same command to continue", file=sys.stderr)
        return 1
    return 0

