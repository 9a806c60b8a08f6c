"""Record and video ids become file names (features/{idx}.pkl, {video_idx}.npy, <id>.mp4): the check that
an id names one file in its folder and nothing outside it."""

from __future__ import annotations

_FORBIDDEN = ("/", "\\", "\0")


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be used as a file name inside a folder, or None when it can."""
    if any(c in value for c in _FORBIDDEN):
        return f"id {value!r} contains a path separator or NUL; ids become file names"
    if value in (".", ".."):
        return f"id {value!r} names a directory, not a file; ids become file names"
    return None
