"""User-facing errors: the one base class of bad user input (reported as one line, never a traceback), and
one line from a third-party exception (transformers and open_clip explain a failure over many lines, the
first of which says what went wrong; user-facing errors quote only that).

This module is the floor every stage stands on: it imports nothing from ``topa_plugin``. Each stage's
input errors subclass :class:`TopaInputError`; the CLI and the training entry point catch the base."""

from __future__ import annotations

import pickle


class TopaInputError(Exception):
    """Bad user input: a file, record, field or setting that cannot be used; the message names it."""


# Input errors raised by the standard library or by pickle rather than by a stage of ours.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    TopaInputError, pickle.UnpicklingError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
