"""The ``topa`` subcommands: one module per command, named after it, each with ``register(subparsers)``.

Handlers are ``run`` (or ``run_<action>`` for commands with actions) and return an exit status;
``fail`` is their one way to report a user error.
"""

from __future__ import annotations

import sys
from typing import NoReturn


class CommandFailed(SystemExit):
    """Raised by ``fail``; ``topa_plugin.cli.main`` turns it into the exit status it returns."""


def fail(command: str, message: str, status: int = 2) -> NoReturn:
    """Print ``topa <command>: error: <message>`` to stderr and stop with ``status`` (2: bad input)."""
    print(f"topa {command}: error: {message}", file=sys.stderr)
    raise CommandFailed(status)
