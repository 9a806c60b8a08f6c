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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.ids import id_problem

LETTERS = "ABCDE"
NUM_OPTIONS = len(LETTERS)
RECORD_KEYS = ("idx", "frames", "global_video_caption", "QAs")
QA_KEYS = ("question", "options", "answer")
OPEN_ANSWER_KEY = "answer_open_ended"
# Problems shown in an exception message; the CLI's validate prints all of them.
_MAX_PROBLEMS_IN_MESSAGE = 50


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
        problems = record_problems(d, source, index, None)
        if problems:
            raise TextVidError(problems)
        return build_record(d)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "idx": self.idx,
            "frames": [dict(frame) for frame in self.frames],
            "global_video_caption": self.global_video_caption,
            "QAs": [qa.to_dict() for qa in self.qas],
        }
        d.update(self.extra)
        return d


def build_record(d: dict[str, Any]) -> TextVidRecord:
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


def record_problems(d: Any, source: str, index: int | None, line: int | None) -> list[Problem]:
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


def repeated_id_problems(first_use: dict[str, int], d: Any, source: str, index: int, line: int | None) -> list[Problem]:
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
        problems += record_problems(d, source, index, line) + repeated_id_problems(first_use, d, source, index, line)
    return problems


def validate_records(dicts: Iterable[Any], source: str) -> list[Problem]:
    """Every problem in a sequence of release-schema dicts (record index = position)."""
    return _validate(((i, None, d) for i, d in enumerate(dicts)), source)
