"""The CLI reference page (docs/cli.md), rendered from the ``topa`` parser so the two cannot drift apart.

``python -m tests.helpers.cli_reference`` rewrites the block between the markers in docs/cli.md (or
the file given); ``--check`` exits non-zero when it is stale (tests/test_docs.py runs that check).
New commands registered in ``topa_plugin/cli.py`` appear after a rerun.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from topa_plugin.cli import build_parser

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:  # argparse exposes subparsers only through this attribute
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _walk(parser: argparse.ArgumentParser, prefix: str):
    yield prefix, parser
    for name, sub in _subcommands(parser):
        yield from _walk(sub, f"{prefix} {name}")


def render_reference() -> str:
    """Markdown with the ``--help`` text of ``topa`` and of every subcommand, in parser order."""
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width; fix it for stable output
    parts = []
    for command, parser in _walk(build_parser(), "topa"):
        parser.prog = command
        parts.append(f"#### `{command}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def updated_page(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"the page lacks the markers {START} ... {END}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render_reference()}{END}{tail}"


def is_current(text: str) -> bool:
    """The page says what the parser says. Whitespace is not compared: argparse lays help out differently
    across Python versions (3.13 puts a long subcommand name and its help on one line)."""
    return updated_page(text).split() == text.split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, nargs="?", default=PAGE)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page's reference is stale")
    args = parser.parse_args(argv)
    text = args.page.read_text(encoding="utf-8")
    new = updated_page(text)
    if args.check:
        if not is_current(text):
            print(f"{args.page}: CLI reference is stale; run python -m tests.helpers.cli_reference")
            return 1
        return 0
    args.page.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
