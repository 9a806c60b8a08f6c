"""TextVid records ("Tideos") in the release schema, checked at every boundary.

The release's loaders caught every exception and trained on a random substitute,
so corrupt data went unnoticed. Here reading and writing validate the whole file
first and report every problem with file, record index, id and field. Files are
read as a stream of records (``topa_plugin.textvid.stream``), so checking the
release's 721k Tideos takes the memory of their ids, not of their text.

Release schema (``textvid.json``, a JSON list; the plugin also reads and writes
JSON Lines, one record per line)::

    {"idx": str, "frames": [{caption_name: caption, ...}, ...],
     "global_video_caption": str,
     "QAs": [{"question": str, "options": [5 str], "answer": "A".."E",
              "answer_open_ended": str (optional)}, ...]}

Keys outside the schema are kept in ``extra`` so a round trip loses nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from topa_plugin.textvid.stream import RawRecord, iter_json_list, iter_jsonl
from topa_plugin.utils.atomic import atomic_write, atomic_write_bytes
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.ids import id_problem

LETTERS = "ABCDE"
NUM_OPTIONS = len(LETTERS)
RECORD_KEYS = ("idx", "frames", "global_video_caption", "QAs")
QA_KEYS = ("question", "options", "answer")
OPEN_ANSWER_KEY = "answer_open_ended"
# Problems shown in an exception message; the CLI's validate prints all of them.
_MAX_PROBLEMS_IN_MESSAGE = 50
# Passes over a file show a progress bar once they have run this long.
PROGRESS_DELAY_S = 2.0


@dataclass(frozen=True)
class Problem:
    """One defect, located precisely enough to fix it without searching."""

    source: str
    index: int | None
    id: str | None
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.index is not None:
            where.append(f"record {self.index}" + (f" (id {self.id!r})" if self.id is not None else ""))
        elif self.id is not None:
            where.append(f"record id {self.id!r}")
        parts = [self.source, ", ".join(where), self.field or "", self.message]
        return ": ".join(part for part in parts if part)


class TextVidError(TopaInputError, ValueError):
    """Raised when records cannot be read or written; ``problems`` holds every defect."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        if len(self.problems) == 1:  # one problem, one line
            super().__init__(str(self.problems[0]))
            return
        shown = [str(p) for p in self.problems[:_MAX_PROBLEMS_IN_MESSAGE]]
        hidden = len(self.problems) - len(shown)
        if hidden:
            shown.append(f"... and {hidden} more (`topa textvid validate FILE` lists all)")
        super().__init__(f"{len(self.problems)} TextVid problems:\n" + "\n".join(shown))


@dataclass
class QA:
    """A multiple-choice question with five options and an optional open answer."""

    question: str
    options: list[str]
    answer: str
    answer_open_ended: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_index(self) -> int:
        return LETTERS.index(self.answer)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"question": self.question, "options": list(self.options), "answer": self.answer}
        if self.answer_open_ended is not None:
            d[OPEN_ANSWER_KEY] = self.answer_open_ended
        d.update(self.extra)
        return d


@dataclass
class TextVidRecord:
    """One Tideo. ``frames`` keep their key order: feature rows follow it."""

    idx: str
    frames: list[dict[str, str]]
    global_video_caption: str
    qas: list[QA]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def captions_per_frame(self) -> list[list[str]]:
        return [list(frame.values()) for frame in self.frames]

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "<dict>", index: int | None = None) -> TextVidRecord:
        """Build from a release-schema dict; raises TextVidError naming every problem."""
        problems = _record_problems(d, source, index, None)
        if problems:
            raise TextVidError(problems)
        return _build(d)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "idx": self.idx,
            "frames": [dict(frame) for frame in self.frames],
            "global_video_caption": self.global_video_caption,
            "QAs": [qa.to_dict() for qa in self.qas],
        }
        d.update(self.extra)
        return d


def _build(d: dict[str, Any]) -> TextVidRecord:
    """Construct from an already validated dict."""
    qas = [
        QA(
            question=q["question"],
            options=list(q["options"]),
            answer=q["answer"],
            answer_open_ended=q.get(OPEN_ANSWER_KEY),
            extra={k: v for k, v in q.items() if k not in QA_KEYS and k != OPEN_ANSWER_KEY},
        )
        for q in d["QAs"]
    ]
    return TextVidRecord(
        idx=_record_id(d),
        frames=[dict(frame) for frame in d["frames"]],
        global_video_caption=d["global_video_caption"],
        qas=qas,
        extra={k: v for k, v in d.items() if k not in RECORD_KEYS},
    )


# ---------------------------------------------------------------- validation

def _kind(value: Any) -> str:
    """JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _record_id(d: Any) -> str | None:
    """The record's id as a string, or None when it has no usable id.

    Integer ids are accepted and read as their decimal string: the release names
    feature files ``features/{idx}.pkl``, which is the same either way.
    """
    if not isinstance(d, dict):
        return None
    idx = d.get("idx")
    if isinstance(idx, str) and idx.strip():
        return idx
    if isinstance(idx, int) and not isinstance(idx, bool):
        return str(idx)
    return None


def _key_path(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if key.isidentifier() else f"{prefix}[{key!r}]"


def _is_text(value: Any) -> bool:
    """A non-blank string (``value.strip()`` non-empty, without building the stripped copy)."""
    return isinstance(value, str) and bool(value) and not value.isspace()


def _check_text(value: Any, path: str, bad) -> None:
    if not isinstance(value, str):
        bad(path, f"expected a string, got {_kind(value)}")
    elif not _is_text(value):
        bad(path, "empty text")


def _check_frames(frames: Any, bad) -> None:
    if isinstance(frames, list) and frames and all(
            isinstance(frame, dict) and frame and all(map(_is_text, frame.values())) for frame in frames):
        return  # the common case, 25 captions a Tideo: one pass, no per-caption field paths
    if not isinstance(frames, list):
        bad("frames", f"expected a list of frames, got {_kind(frames)}")
        return
    if not frames:
        bad("frames", "no frames (empty list)")
    for i, frame in enumerate(frames):
        path = f"frames[{i}]"
        if not isinstance(frame, dict):
            bad(path, f"expected an object of captions, got {_kind(frame)}")
        elif not frame:
            bad(path, "frame has no captions (empty object)")
        else:
            for key, caption in frame.items():
                _check_text(caption, _key_path(path, key), bad)


def _check_qa(qa: Any, path: str, bad) -> None:
    if not isinstance(qa, dict):
        bad(path, f"expected an object, got {_kind(qa)}")
        return
    for key in QA_KEYS:
        if key not in qa:
            bad(f"{path}.{key}", "missing key")
    if "question" in qa:
        _check_text(qa["question"], f"{path}.question", bad)
    options = qa.get("options")
    n_options = None
    if "options" in qa:
        if not isinstance(options, list):
            bad(f"{path}.options", f"expected a list of {NUM_OPTIONS} options, got {_kind(options)}")
        else:
            n_options = len(options)
            if n_options != NUM_OPTIONS:
                bad(f"{path}.options", f"expected {NUM_OPTIONS} options, got {n_options}")
            for j, option in enumerate(options):
                _check_text(option, f"{path}.options[{j}]", bad)
            texts = [o.strip() for o in options if isinstance(o, str) and o.strip()]
            if len(set(texts)) != len(texts):
                bad(f"{path}.options", "duplicate options")
    if "answer" in qa:
        answer = qa["answer"]
        if not isinstance(answer, str) or answer not in LETTERS or len(answer) != 1:
            bad(f"{path}.answer", f"expected one of {', '.join(LETTERS)}, got {answer!r}")
        elif n_options is not None and LETTERS.index(answer) >= n_options:
            bad(f"{path}.answer", f"answer {answer!r} is out of range for {n_options} options")
    if OPEN_ANSWER_KEY in qa:
        _check_text(qa[OPEN_ANSWER_KEY], f"{path}.{OPEN_ANSWER_KEY}", bad)


def _record_problems(d: Any, source: str, index: int | None, line: int | None) -> list[Problem]:
    rid = _record_id(d)
    problems: list[Problem] = []

    def bad(path: str | None, message: str) -> None:
        problems.append(Problem(source, index, rid, path, message, line))

    if not isinstance(d, dict):
        bad(None, f"expected a JSON object, got {_kind(d)}")
        return problems
    for key in RECORD_KEYS:
        if key not in d:
            bad(key, "missing key")
    if "idx" in d and rid is None:
        _check_text(d["idx"], "idx", bad)
    elif rid is not None and id_problem(rid):
        bad("idx", id_problem(rid))
    if "frames" in d:
        _check_frames(d["frames"], bad)
    if "global_video_caption" in d:
        _check_text(d["global_video_caption"], "global_video_caption", bad)
    if "QAs" in d:
        qas = d["QAs"]
        if not isinstance(qas, list):
            bad("QAs", f"expected a list of QAs, got {_kind(qas)}")
        else:
            if not qas:
                bad("QAs", "no QAs (empty list)")
            for i, qa in enumerate(qas):
                _check_qa(qa, f"QAs[{i}]", bad)
    return problems


def _repeated_id(first_use: dict[str, int], d: Any, source: str, index: int, line: int | None) -> list[Problem]:
    """The problem of a record reusing an earlier record's id; notes the first use of each id."""
    rid = _record_id(d)
    if rid is None:
        return []
    if rid in first_use:
        return [Problem(source, index, rid, "idx", f"duplicate id, first used by record {first_use[rid]}", line)]
    first_use[rid] = index
    return []


def _validate(items: Iterable[tuple[int, int | None, Any]], source: str) -> list[Problem]:
    """Check (index, line, dict) triples, including ids repeated across records."""
    problems: list[Problem] = []
    first_use: dict[str, int] = {}
    for index, line, d in items:
        problems += _record_problems(d, source, index, line) + _repeated_id(first_use, d, source, index, line)
    return problems


def validate_records(dicts: Iterable[Any], source: str) -> list[Problem]:
    """Every problem in a sequence of release-schema dicts (record index = position)."""
    return _validate(((i, None, d) for i, d in enumerate(dicts)), source)


# ---------------------------------------------------------------- reading

def _stream(path: Path, progress) -> Iterator[RawRecord | tuple[int | None, str]]:
    """The file's records in order, parsed one at a time (memory does not grow with the file)."""
    source = str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a TextVid .json/.jsonl file")
    if path.suffix not in (".json", ".jsonl"):
        raise TextVidError([Problem(source, None, None, None,
                                    "unsupported file type: expected .json (release list) or .jsonl (JSON Lines)")])
    with open(path, "rb") as f:
        yield from (iter_jsonl if path.suffix == ".jsonl" else iter_json_list)(f, progress)


def scan_textvid(path: str | os.PathLike, desc: str | None = None
                 ) -> Iterator[tuple[RawRecord | None, list[Problem]]]:
    """Every record of a release ``.json`` list or ``.jsonl`` file, in order, with its problems
    (parse, schema, repeated id); ``(None, [problem])`` for a problem outside any record.

    Records are parsed one at a time, so memory holds only the ids seen so far. ``desc`` shows
    a progress bar over the file's bytes when the pass takes more than a few seconds."""
    from tqdm.auto import tqdm

    path = Path(path)
    source = str(path)
    first_use: dict[str, int] = {}
    progress = tqdm(total=path.stat().st_size if path.is_file() else 0, unit="B", unit_scale=True,
                    desc=desc, delay=PROGRESS_DELAY_S, dynamic_ncols=True, disable=desc is None)
    seen = False
    with progress:
        for item in _stream(path, progress):
            seen = True
            if not isinstance(item, RawRecord):
                yield None, [Problem(source, None, None, None, item[1], item[0])]
                continue
            if item.error is not None:
                yield item, [Problem(source, item.index, None, None, item.error, item.line)]
                continue
            yield item, (_record_problems(item.value, source, item.index, item.line)
                         + _repeated_id(first_use, item.value, source, item.index, item.line))
    if not seen:
        yield None, [Problem(source, None, None, None, "no records (an empty file or list)")]


def record_of(item: RawRecord) -> TextVidRecord:
    """The record of an item ``scan_textvid`` reported without problems (not checked again)."""
    return _build(item.value)


def read_textvid(path: str | os.PathLike) -> list[TextVidRecord]:
    """Read a whole TextVid file, holding every record in memory (for large files: ``scan_textvid``).

    Args:
        path: the release's ``textvid.json`` (one JSON list) or a ``.jsonl`` file.

    Raises:
        TextVidError: listing every problem, each naming the file, line, record, id and field.
    """
    records, problems = [], []
    for item, found in scan_textvid(path):
        problems += found
        if item is not None and not found:
            records.append(_build(item.value))
    if problems:
        raise TextVidError(problems)
    return records


def read_record(path: str | os.PathLike, offset: int, size: int) -> TextVidRecord:
    """One record of a file already checked by ``scan_textvid``, from its byte span."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(size)
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TextVidError([Problem(str(path), None, None, None,
                                    f"bytes {offset}..{offset + size} no longer hold a record ({e}); "
                                    "the file changed after it was checked")]) from None
    return TextVidRecord.from_dict(d, source=str(path))


# ---------------------------------------------------------------- writing

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
    problems = _record_problems(record.to_dict(), str(path), None, None)
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


# ---------------------------------------------------------------- passes that rewrite or describe a file

def iter_valid(path: str | os.PathLike, skip_invalid: bool = False, desc: str | None = None,
               skipped: list[Problem] | None = None) -> Iterator[tuple[RawRecord, TextVidRecord]]:
    """The valid records of a file, streamed with their places in it.

    The first invalid record raises ``TextVidError`` naming it, unless ``skip_invalid``: then each invalid
    record's problems are appended to ``skipped`` and the record is left out. A file that stops parsing
    part-way is an error either way (what follows the break is unknown)."""
    for item, found in scan_textvid(path, desc=desc):
        if item is None:
            raise TextVidError(found)
        if found:
            if not skip_invalid:
                raise TextVidError(found[:1])
            if skipped is not None:
                skipped.extend(found)
            continue
        yield item, _build(item.value)


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
