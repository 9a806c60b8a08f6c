"""The ``topa`` subcommands: one module per command, named after it, each with ``register(subparsers)``.

Handlers are ``run`` (or ``run_<action>`` for commands with actions) and return an exit status;
``fail`` is their one way to report a user error. A handler that lets one of the project's input
errors escape (``utils.errors.INPUT_ERRORS``) gets the same one-line report from ``topa_plugin.cli``, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


class CommandFailed(SystemExit):
    """Raised by ``fail``; ``topa_plugin.cli.main`` turns it into the exit status it returns."""


def fail(command: str, message: str, status: int = 2) -> NoReturn:
    """Print ``topa <command>: error: <message>`` to stderr and stop with ``status`` (2: bad input)."""
    print(f"topa {command}: error: {message}", file=sys.stderr)
    raise CommandFailed(status)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``topa <command>: error:`` line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(text: str, minimum: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{rule}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts and sizes that must be at least 1 (0 or negative would fail deep inside)."""
    return _whole_number(text, 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    """argparse type for counts where 0 means none (``--thumbnails 0``)."""
    return _whole_number(text, 0, "must be 0 or more")


def check_output_dir(command: str, out: str | Path, own: tuple[str, ...] = ()) -> Path:
    """``out`` as an output folder: absent, empty, or holding only files named in ``own`` (glob patterns
    of the files this command writes there, so a rerun resumes); never a file or someone else's folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        fail(command, f"--out {out}: is an existing file; give a folder path")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not any(p.match(pattern) for pattern in own))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            fail(command, f"--out {out}: folder is not empty ({shown}); give a new or empty folder")
    return out


def check_output_file(command: str, out: str | Path) -> Path:
    """``out`` as an output file: its folder may be anything, but it may not itself be a folder."""
    out = Path(out)
    if out.is_dir():
        fail(command, f"--out {out}: is a folder; give a file path")
    return out
