"""A cache of the TextVid start-up scan, keyed by content, so a restart reads no record.

Building a ``TextVidDataset`` reads every record once: schema, frame counts against the feature
index and every prompt's length (about 20 s per 100k Tideos on one core). What it finds (the
usable records' byte spans, ids and usable QAs, the records left out, the prompts cut off) depends
only on the data file's bytes (and its path, which the cached messages name), the feature index's
bytes, the tokenizer (its full definition and the prompts it builds for a fixed probe record) and
the dataset's settings. The key hashes all of
them, so a change to any is a miss; hashing the release's 2.4 GB file takes a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from topa_plugin.utils.atomic import atomic_write
from topa_plugin.utils.hashing import file_sha256

logger = logging.getLogger(__name__)
PROBE = ("What does the person do", ["opens it", "closes it", "both", "none", "waits"], "a long summary")


def _probe_ids(processor) -> list[list[int]]:
    """Token ids of one prompt per template: they change when a template does."""
    question, options, text = PROBE
    return [processor.encode_multiple_choice(question, options, 0).input_ids,
            processor.encode_open_ended(question, text).input_ids,
            processor.encode_summary(text).input_ids]


def scan_key(data_path: str | Path, feature_index: Path, processor, settings: dict) -> str | None:
    """The cache key, or None when the length check needs a tokenizer without a serialisable
    definition (no caching)."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    if settings.get("check_lengths"):
        backend = getattr(processor.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        h.update(json.dumps([processor.max_feats, _probe_ids(processor)]).encode())
        h.update(backend.to_str().encode("utf-8"))
    h.update(file_sha256(feature_index).encode())
    h.update(file_sha256(data_path).encode())
    return h.hexdigest()


def load_scan(path: Path, key: str) -> dict | None:
    """The cached scan for ``key``, or None (no file, another key, or unreadable: scan again)."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(cached, dict) and cached.get("key") == key:
        logger.info("TextVid start-up scan: from the cache %s", path)
        return cached["scan"]
    return None


def save_scan(path: Path, key: str, scan: dict) -> None:
    """Store a scan; a folder that cannot be written only costs the next start a scan."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"key": key, "scan": scan}), encoding="utf-8"))
    except OSError as err:
        logger.warning("could not cache the TextVid start-up scan in %s: %s", path, err)
