"""Tabular rows from the file types users hand us (video-QA annotations, EgoSchema rows).

One reader, so that every command reports a broken file the same way: the file, the line,
and what is wrong. Each caller passes its own error type and the suffixes it accepts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def read_rows(path: str | Path, error: type[Exception], suffixes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``, ``.json`` (a list), ``.csv`` or ``.parquet`` file, if its suffix is allowed."""
    path = Path(path)
    if path.suffix not in suffixes:
        raise error(f"{path}: unsupported file type {path.suffix!r} (expected {', '.join(suffixes)})")
    if not path.is_file():
        raise error(f"{path}: file not found")
    if path.suffix == ".jsonl":
        return read_jsonl(path, error)
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise error(f"{path}: invalid JSON: {e.msg} (line {e.lineno})") from e
        if not isinstance(rows, list):
            raise error(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
        return rows
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    import pyarrow.parquet as pq  # comes with lmms-eval's `datasets`; only parquet input needs it

    return pq.read_table(path).to_pylist()


def read_jsonl(path: str | Path, error: type[Exception], *, skip_blank: bool = False) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, one a line; a line that is not one names the file and line.

    ``skip_blank``: blank lines are skipped instead of refused (files that other tools write, such as
    lmms-eval's samples)."""
    path = Path(path)
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            if skip_blank:
                continue
            raise error(f"{path}: line {line_no}: blank line in JSON Lines")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}: line {line_no}: invalid JSON: {e.msg}") from e
        if not isinstance(row, dict):
            raise error(f"{path}: line {line_no}: expected a JSON object")
        rows.append(row)
    return rows
