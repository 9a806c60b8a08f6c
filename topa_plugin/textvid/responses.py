"""Reading an LLM's reply as a Tideo: the JSON parse with its one repair, the checks, the content key.

Parsing is strict ``json.loads`` with ONE local repair attempt and no second model
call: parse again starting at the first ``{`` and ignore whatever follows the end
of that object, which removes markdown code fences and chatter around the JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from topa_plugin.textvid.conditions import FRAME_RANGE
from topa_plugin.textvid.records import validate_records

_RECORD_KEYS = frozenset({"frames", "global_video_caption", "QAs"})
_QA_KEYS = frozenset({"question", "options", "answer", "answer_open_ended"})


class ParseFailure(ValueError):
    pass


def parse_json_object(text: str) -> tuple[Any, bool]:
    """(value, repaired): strict parse, else the one repair described in the module docstring."""
    try:
        return json.loads(text), False
    except json.JSONDecodeError as strict:
        start = text.find("{")
        if start < 0:
            raise ParseFailure(f"no JSON object in the response: {strict.msg} (line {strict.lineno}, "
                               f"column {strict.colno})") from strict
    try:
        value, _end = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as e:
        raise ParseFailure(f"invalid JSON after repair: {e.msg} (line {e.lineno}, column {e.colno})") from e
    return value, True


def check_tideo(value: Any) -> tuple[str, list[str]] | None:
    """(reason, details) when a parsed response is not an acceptable Tideo, None when it is.

    The release schema is checked by the records module; on top, generation asks for
    exactly the schema's keys, FRAME_RANGE frames and an open-ended answer per question.
    """
    if not isinstance(value, dict):
        return "schema", [f"expected a JSON object, got {type(value).__name__}"]
    problems = validate_records([{**value, "idx": "pending"}], "response")  # the generator assigns ids
    if problems:
        return "schema", [f"{p.field}: {p.message}" if p.field else p.message for p in problems]
    unexpected = [k for k in value if k not in _RECORD_KEYS and k != "idx"]
    unexpected += [f"QAs[{i}].{k}" for i, qa in enumerate(value["QAs"]) for k in qa if k not in _QA_KEYS]
    if unexpected:
        return "unexpected_keys", [f"unexpected key {k!r}" for k in unexpected]
    n = len(value["frames"])
    if not FRAME_RANGE[0] <= n <= FRAME_RANGE[1]:
        return "frame_count", [f"{n} frames, expected {FRAME_RANGE[0]} to {FRAME_RANGE[1]}"]
    missing = [f"QAs[{i}].answer_open_ended: missing"
               for i, qa in enumerate(value["QAs"]) if "answer_open_ended" not in qa]
    if missing:
        return "missing_open_answer", missing
    return None


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"\W+", " ", text.lower()).split())


def content_key(global_caption: str, questions: list[str]) -> str:
    """De-duplication key: hash of the normalised global caption and questions."""
    text = "\n".join([_normalise(global_caption), *map(_normalise, questions)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_id(tag: str, key: str) -> str:
    """Ids are content hashes, so one Tideo has one id in every run and duplicates share ids."""
    return f"{tag}-{key[:16]}"
