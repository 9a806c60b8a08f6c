"""Record streams over TextVid files: JSON Lines and the release's single JSON list, read
incrementally so memory does not grow with the file. Each record comes with its byte span,
so a reader can come back to one record later without keeping it in memory."""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CHUNK = 1 << 20
_BLANKS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class RawRecord:
    """One record's place in its file (``line`` for JSON Lines) and its parsed JSON (``error`` set when
    it did not parse)."""

    index: int
    line: int | None
    offset: int
    size: int
    value: Any = None
    error: str | None = None


def iter_jsonl(f, progress=None) -> Iterator[RawRecord | tuple[int | None, str]]:
    """Records of a JSON Lines file; a blank line yields ``(line, message)`` and takes no index."""
    index, offset = 0, 0
    for line_no, raw in enumerate(f, start=1):
        size = len(raw)
        if progress is not None:
            progress.update(size)
        if not raw.strip():
            yield line_no, "blank line (JSON Lines needs one record per line)"
        else:
            try:
                yield RawRecord(index, line_no, offset, size, json.loads(raw.decode("utf-8")))
            except UnicodeDecodeError as e:
                yield RawRecord(index, line_no, offset, size, error=f"not UTF-8 text: {e.reason} at byte {e.start}")
            except json.JSONDecodeError as e:
                yield RawRecord(index, line_no, offset, size, error=f"invalid JSON: {e.msg} (column {e.colno})")
            index += 1
        offset += size


class _ListReader:
    """A growing text window over a binary file, with byte offsets and line numbers kept in step."""

    def __init__(self, f, progress):
        self.f, self.progress = f, progress
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text, self.pos, self.byte, self.line, self.eof = "", 0, 0, 1, False

    def more(self) -> bool:
        """Append the next chunk; False at end of file."""
        if self.eof:
            return False
        chunk = self.f.read(CHUNK)
        if self.progress is not None:
            self.progress.update(len(chunk))
        self.eof = not chunk
        self.text = self.text[self.pos:] + self.decoder.decode(chunk, final=self.eof)
        self.pos = 0
        return bool(chunk)

    def consume(self, end: int) -> tuple[int, int]:
        """Move past text[pos:end]; returns the (byte offset, size) of what was passed."""
        span = self.text[self.pos:end]
        size = len(span.encode("utf-8"))
        start = self.byte
        self.byte += size
        self.line += span.count("\n")
        self.pos = end
        return start, size

    def next_char(self) -> str:
        """The next non-blank character ('' at end of file), skipping blanks."""
        while True:
            self.consume(_BLANKS.match(self.text, self.pos).end())
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos:self.pos + 1]

    def value(self) -> tuple[Any, int]:
        """Decode the JSON value at pos, reading more while it runs past the window."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                if self.eof or (e.pos + 16 < len(self.text) and not e.msg.startswith("Unterminated")):
                    raise
                self.more()
                continue
            if end < len(self.text) or self.eof:
                return value, end
            self.more()  # a number or literal may continue in the next chunk


def _not_a_list(first: str) -> str:
    """The message for a file whose first non-blank character ``first`` does not open a list."""
    if not first:
        return "empty file (expected a JSON list of records)"
    kinds = {"{": "object", '"': "string", "t": "boolean", "f": "boolean", "n": "null"}
    kind = kinds.get(first, "number" if first in "-0123456789" else None)
    return f"expected a JSON list of records, got {kind}" if kind else "invalid JSON: expected a list of records"


def iter_json_list(f, progress=None) -> Iterator[RawRecord | tuple[int | None, str]]:
    """Records of a file holding one JSON list; a syntax error yields ``(line, message)`` and ends the stream."""
    reader = _ListReader(f, progress)
    try:
        first = reader.next_char()
        if first != "[":
            yield None, _not_a_list(first)
            return
        reader.consume(reader.pos + 1)
        index = 0
        if reader.next_char() == "]":
            reader.consume(reader.pos + 1)
        else:
            while True:
                reader.next_char()
                value, end = reader.value()
                offset, size = reader.consume(end)
                yield RawRecord(index, None, offset, size, value)  # messages name list records by index
                index += 1
                sep = reader.next_char()
                if sep == "]":
                    reader.consume(reader.pos + 1)
                    break
                if sep != ",":
                    yield reader.line, f"invalid JSON: expected ',' or ']' after record {index - 1}"
                    return
                reader.consume(reader.pos + 1)
        if reader.next_char():
            yield reader.line, "invalid JSON: extra data after the list"
    except json.JSONDecodeError as e:
        yield reader.line + reader.text.count("\n", reader.pos, e.pos), f"invalid JSON: {e.msg}"
    except UnicodeDecodeError as e:
        yield reader.line, f"not UTF-8 text: {e.reason}"


def read_span(path: str | os.PathLike, offset: int, size: int) -> Any:
    with open(path, "rb") as f:
        f.seek(offset)
        return json.loads(f.read(size).decode("utf-8"))
