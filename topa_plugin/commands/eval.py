"""``topa eval``: run lmms-eval and fail when it wrote no results file.

lmms-eval 0.7.3 prints a traceback and exits 0 when a task fails, so scripts that trust its exit
status record failed runs as finished. This command runs the same ``lmms-eval`` arguments and
exits non-zero unless a new ``*_results.json`` appeared under ``--output_path``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from topa_plugin.commands import fail
from topa_plugin.lmms.run_report import RESULTS_FILE

COMMAND = "eval"
RUN_FAILED = 1  # lmms-eval ran but produced no results (2 stays for bad arguments)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        usage="topa eval [lmms-eval arguments]",
        help="run lmms-eval with the given arguments; exit non-zero unless it wrote a results file",
        description=(
            "Runs `python -m lmms_eval ARGS` (e.g. --model topa --model_args ... --tasks ... "
            "--output_path DIR) and exits 1 when no new *_results.json was written under --output_path, "
            "which lmms-eval 0.7.3 does not signal itself. --output_path is required. The fixed task "
            "variants shipped with this package are found with --include_path \"$(topa lmms-tasks)\"."
        ),
    )
    parser.set_defaults(func=run, passthrough=[])


def output_path(args: list[str]) -> Path | None:
    """The value of ``--output_path`` in lmms-eval arguments, or None."""
    for i, arg in enumerate(args):
        if arg == "--output_path" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--output_path="):
            return Path(arg.split("=", 1)[1])
    return None


def new_results(out: Path, since: float) -> list[Path]:
    """lmms-eval results files under ``out`` written at or after ``since`` (epoch seconds)."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.glob("*/*_results.json") if RESULTS_FILE.match(p.name) and p.stat().st_mtime >= since)


def run(args: argparse.Namespace) -> int:
    lmms_args = [a for a in args.passthrough if a != "--"]
    out = output_path(lmms_args)
    if out is None:
        fail(COMMAND, "--output_path DIR is required: without it lmms-eval writes no results file to check")
    started = time.time() - 1  # file times may be rounded down to the second
    status = subprocess.run([sys.executable, "-m", "lmms_eval", *lmms_args], check=False).returncode
    written = new_results(out, started)
    if status != 0:
        fail(COMMAND, f"lmms-eval exited with status {status}", status=status)
    if not written:
        fail(COMMAND, f"lmms-eval wrote no *_results.json under {out}: the run failed (see its output above)", status=RUN_FAILED)
    for path in written:
        print(f"topa eval: results: {path}")
    return 0
