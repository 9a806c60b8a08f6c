"""A cache of the TextVid prompt-length check, keyed by content, so a restart skips the scan.

The key covers the data file's bytes, the tokenizer (its full definition), ``max_seq_len``,
``max_feats`` and the prompts the processor builds for a fixed probe record (so a template
change is a different key). The cached value is the list of prompts whose answer ``max_seq_len``
cuts off; a file that changed in any byte, or another tokenizer, simply misses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)
PROBE = ("What does the person do", ["opens it", "closes it", "both", "none", "waits"], "a long summary")


def _probe_ids(processor) -> list[list[int]]:
    """Token ids of one prompt per template: they change when a template does."""
    question, options, text = PROBE
    return [processor.encode_multiple_choice(question, options, 0).input_ids,
            processor.encode_open_ended(question, text).input_ids,
            processor.encode_summary(text).input_ids]


def length_check_key(data_path: str | Path, processor, max_seq_len: int, question_mark: str) -> str | None:
    """The cache key, or None when the tokenizer has no serialisable definition (no caching)."""
    backend = getattr(processor.tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    h = hashlib.sha256()
    h.update(json.dumps([max_seq_len, processor.max_feats, question_mark, _probe_ids(processor)]).encode())
    h.update(backend.to_str().encode("utf-8"))
    with open(data_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def load_length_check(path: Path, key: str) -> list[list] | None:
    """The cached problems ``[position, QA index or None, task, message]`` for ``key``, or None."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cached.get("problems") if isinstance(cached, dict) and cached.get("key") == key else None


def save_length_check(path: Path, key: str, problems: list[list]) -> None:
    """Store the result; a folder that cannot be written only costs the next start a scan."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "problems": problems}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        logger.warning("could not cache the prompt-length check in %s: %s", path, err)
