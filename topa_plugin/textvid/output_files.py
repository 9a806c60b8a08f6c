"""The generator's output files: append-only JSONL and its rejections log, torn-tail repair, one writer at a time."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from topa_plugin.textvid.errors import GenerationError
from topa_plugin.textvid.reader import read_textvid
from topa_plugin.textvid.records import TextVidRecord
from topa_plugin.textvid.responses import content_key
from topa_plugin.textvid.writer import append_jsonl

log = logging.getLogger(__name__)


def fix_torn_tail(path: Path) -> str | None:
    """Make ``path`` end with a newline after a crash; returns what was done, if anything.

    A last line without its newline is a write cut short: it is cut off, unless it is a
    complete JSON value (cut exactly before the newline), which gets its newline back.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as f:
        data_end = f.seek(0, os.SEEK_END)
        f.seek(data_end - 1)
        if f.read(1) == b"\n":
            return None
        pos, keep = data_end, 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        f.seek(keep)
        tail = f.read()
        try:
            json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            f.truncate(keep)
            action = f"{path}: cut off an incomplete last line ({data_end - keep} bytes, left by a crash)"
        else:
            f.write(b"\n")
            action = f"{path}: added the missing newline after the last line"
        f.flush()
        os.fsync(f.fileno())
    return action


def rejections_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.rejections.jsonl")


class OutputFiles:
    """The output JSONL (append-only, one run at a time) and its rejections log."""

    def __init__(self, out: Path):
        if out.suffix != ".jsonl":
            raise GenerationError(f"--out {out}: expected a .jsonl file")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.rejections = rejections_path(out)
        self._lock = open(out, "ab")  # noqa: SIM115 (held for the whole run; closed by close())
        try:
            _lock_exclusive(self._lock, out)
            self.repairs = [a for a in (fix_torn_tail(out), fix_torn_tail(self.rejections)) if a]
            for action in self.repairs:
                log.warning("%s", action)
            records = read_textvid(out) if out.stat().st_size else []
            self.ids = {r.idx for r in records}
            self.keys = {content_key(r.global_video_caption, [qa.question for qa in r.qas]) for r in records}
            self.count = len(records)
            logged = _read_rejections(self.rejections)
            meta = [r.extra.get("generation") for r in records]
            numbers = [e.get("request") for e in logged] + [m.get("request") for m in meta if isinstance(m, dict)]
            numbers = [n for n in numbers if isinstance(n, int)]
            # Requests in flight when a run died left no line; never reuse a number that did.
            self.next_request = max(self.count + len(logged), max(numbers, default=-1) + 1)
            self._rejection_log = open(self.rejections, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        except BaseException:
            self._lock.close()
            raise

    def append(self, record: TextVidRecord, key: str) -> None:
        append_jsonl(self.out, record)
        self.ids.add(record.idx)
        self.keys.add(key)
        self.count += 1

    def reject(self, entry: dict[str, Any]) -> None:
        self._rejection_log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._rejection_log.flush()
        os.fsync(self._rejection_log.fileno())

    def close(self) -> None:
        self._rejection_log.close()
        self._lock.close()


def _read_rejections(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise GenerationError(f"{path}: line {line_no}: invalid JSON ({e.msg}); "
                                      "this log belongs to the generator, do not edit it") from e
            if not isinstance(entry, dict):
                raise GenerationError(f"{path}: line {line_no}: expected a JSON object")
            entries.append(entry)
    return entries


def _lock_exclusive(handle, path: Path) -> None:
    """Refuse a second concurrent run on the same file (POSIX only; elsewhere unlocked)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        raise GenerationError(f"{path}: another `topa textvid generate` run is writing this file") from e
