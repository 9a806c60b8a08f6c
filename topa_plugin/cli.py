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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="topa",
        description="TOPA (Text-Only Pre-Alignment) for lmms-eval and LLaVA.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from topa_plugin.commands import CommandFailed

    parser = build_parser()
    # A command that wraps another tool (``topa eval``) sets ``passthrough`` and receives the
    # arguments topa does not know; every other command rejects them.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not hasattr(args, "passthrough"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.passthrough = [*args.passthrough, *unknown]
    try:
        return int(args.func(args) or 0)
    except CommandFailed as failed:
        return int(failed.code)


if __name__ == "__main__":
    sys.exit(main())
