"""The ``topa`` command line: one entry point; each subcommand lives in ``topa_plugin.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``register(subparsers)``; its subcommands set ``func(args) -> int``.
COMMAND_MODULES = [
    "topa_plugin.commands.demo",
    "topa_plugin.commands.lmms_tasks",
    "topa_plugin.commands.features",
    "topa_plugin.commands.memory",
    "topa_plugin.commands.textvid",
    "topa_plugin.commands.train",
    "topa_plugin.commands.convert_official",
    "topa_plugin.commands.eval",
    "topa_plugin.commands.ask",
    "topa_plugin.commands.report",
    "topa_plugin.commands.serve",
]


def build_parser() -> argparse.ArgumentParser:
    from topa_plugin.commands import OneLineParser

    parser = OneLineParser(
        prog="topa",
        description="TOPA (Text-Only Pre-Alignment) for lmms-eval and LLaVA.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    """Record on each leaf parser its command name ("features textvid"), for error lines."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        parser.set_defaults(command_name=parser.prog.removeprefix("topa "))
    for action in actions:
        for sub in action.choices.values():
            _name_commands(sub)


def main(argv: list[str] | None = None) -> int:
    from topa_plugin.commands import CommandFailed, fail
    from topa_plugin.utils.errors import INPUT_ERRORS

    parser = build_parser()
    # A command that wraps another tool (``topa eval``) sets ``passthrough`` and receives the
    # arguments topa does not know; every other command rejects them.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not hasattr(args, "passthrough"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.passthrough = [*args.passthrough, *unknown]
    try:
        try:
            return int(args.func(args) or 0)
        except INPUT_ERRORS as err:
            fail(args.command_name, str(err))
    except CommandFailed as failed:
        return int(failed.code)


if __name__ == "__main__":
    sys.exit(main())
