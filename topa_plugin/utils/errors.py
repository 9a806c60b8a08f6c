"""One line from a third-party exception: transformers and open_clip explain a failure over many lines, the
first of which says what went wrong; user-facing errors quote only that."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
