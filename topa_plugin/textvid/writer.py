"""Writing TextVid files: whole files atomically (a reader never sees half a file), appends that a crash
cannot tear, and streamed rewrites (``RecordWriter``) whose same records give the same bytes."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from topa_plugin.textvid.records import Problem, TextVidError, TextVidRecord, record_problems, validate_records
from topa_plugin.utils.atomic import atomic_write, atomic_write_bytes


def _json_line(record: TextVidRecord) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, records: Sequence[TextVidRecord]) -> Path:
    """Validate, then write JSON Lines atomically (temp file in the same folder + rename)."""
    path = Path(path)
    problems = validate_records((r.to_dict() for r in records), str(path))
    if problems:
        raise TextVidError(problems)
    return atomic_write_bytes(path, "".join(_json_line(r) for r in records).encode("utf-8"))


def append_jsonl(path: str | os.PathLike, record: TextVidRecord) -> None:
    """Append one validated record as one line and fsync it, so a crash loses at most
    the line being written. Refuses to append after a partial (crash-truncated) line."""
    path = Path(path)
    problems = record_problems(record.to_dict(), str(path), None, None)
    if problems:
        raise TextVidError(problems)
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    raise TextVidError([Problem(str(path), None, None, None,
                                                "file ends with a partial line; remove it before appending")])
        f.write(_json_line(record).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


class RecordWriter:
    """Writes release-schema dicts one at a time to ``.jsonl`` (one per line) or ``.json`` (one list), into a
    temporary sibling renamed over ``path`` on success: a reader never sees half a file, and the same
    records give the same bytes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.suffix not in (".json", ".jsonl"):
            raise TextVidError([Problem(str(self.path), None, None, None,
                                        "unsupported file type: expected .json (release list) or .jsonl (JSON Lines)")])
        self.tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self.count = 0

    def __enter__(self) -> RecordWriter:
        self.file = open(self.tmp, "w", encoding="utf-8")
        return self

    def write(self, d: dict[str, Any]) -> None:
        text = json.dumps(d, ensure_ascii=False)
        if self.path.suffix == ".jsonl":
            self.file.write(text + "\n")
        else:
            self.file.write(("[\n" if self.count == 0 else ",\n") + text)
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and self.path.suffix == ".json":
            self.file.write("\n]\n" if self.count else "[]\n")
        self.file.close()
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        atomic_write(self.path, lambda tmp: None, tmp=self.tmp)
