"""`topa textvid validate|stats|generate`: check, describe and generate TextVid files.

validate/stats exit status: 0 valid, 1 the file has problems (all of them are printed), 2 it cannot be read.
"""

from __future__ import annotations

import json
import sys

from topa_plugin.textvid.generate_cli import register_generate
from topa_plugin.textvid.records import TextVidError, compute_stats, read_textvid


def _read(path: str):
    """Records, or (None, exit status) after printing why the file cannot be used."""
    try:
        return read_textvid(path), 0
    except TextVidError as err:
        for problem in err.problems:
            print(problem)
        noun = "problem" if len(err.problems) == 1 else "problems"
        print(f"INVALID: {path}: {len(err.problems)} {noun}", file=sys.stderr)
        return None, 1
    except OSError as err:
        print(f"error: {path}: {err.strerror or err}", file=sys.stderr)
        return None, 2


def _validate(args) -> int:
    records, status = _read(args.file)
    if records is None:
        return status
    stats = compute_stats(records)
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


def _stats(args) -> int:
    records, status = _read(args.file)
    if records is None:
        return status
    stats = compute_stats(records)
    if args.json:
        print(json.dumps({"file": args.file, **stats}, indent=2))
    else:
        _print_stats(args.file, stats)
    return 0


def _register_validate(sub) -> None:
    p = sub.add_parser("validate", help="report every problem (file, record, id, field); exit 1 if any")
    p.add_argument("file", help="release textvid.json (a JSON list) or a .jsonl file")
    p.set_defaults(func=_validate)


def _register_stats(sub) -> None:
    p = sub.add_parser("stats", help="counts and length distributions of a valid file")
    p.add_argument("file", help="release textvid.json (a JSON list) or a .jsonl file")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=_stats)


# Each entry adds one action to `topa textvid`.
ACTIONS = (_register_validate, _register_stats, register_generate)


def register(subparsers) -> None:
    parser = subparsers.add_parser("textvid", help="validate and describe TextVid (textual video) files")
    sub = parser.add_subparsers(dest="textvid_command", metavar="ACTION", required=True)
    for add_action in ACTIONS:
        add_action(sub)
