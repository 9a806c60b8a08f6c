"""The resumable sharded writer behind every feature store.

Extraction runs for hours on the full TextVid, so it is resumable. Shards are keyed by content:
each record comes with a digest of what its features depend on, a shard's name is the digest of
its records, and a shard is written to a temp name, renamed when complete, and only then appended
to progress.jsonl with its size and sha256. A rerun checks every finished shard against those,
rewrites any that is missing or corrupt, and reuses the others for every record whose content is
unchanged: removing records (or videos) from the source, renaming the source, or changing the
shard size keeps the finished work. index.json appears when every record is done.

Records ``compute`` cannot use (an undecodable video, with ``--skip-invalid``) are left out,
remembered as finished, and listed with the records the caller rejected beforehand in
``<out>.rejects.jsonl``. progress.jsonl grows by one line per shard, so a run of many small
shards costs time linear in its shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from topa_plugin.features.store import (
    DTYPES,
    HEADER_KEYS,
    INDEX,
    PROGRESS,
    VERSION,
    FeatureError,
    read_index,
    shard_problem,
)
from topa_plugin.utils.atomic import atomic_write_bytes

# Fault injection for the resume tests: exit abruptly while writing the shard that
# follows this many completed ones (after its temp file, before the rename).
CRASH_ENV = "TOPA_FEATURES_CRASH_AFTER_SHARDS"


def rejects_path(out_dir: str | Path) -> Path:
    """``<out>.rejects.jsonl``: what an extraction left out, next to its output directory."""
    out = Path(out_dir)
    return out.with_name(out.name + ".rejects.jsonl")


def _atomic_write(path: Path, data: bytes, crash: bool = False) -> None:
    """Write to path.tmp, fsync, rename: a file under the final name is always complete."""
    atomic_write_bytes(path, data, tmp=path.with_name(path.name + ".tmp"),
                       before_replace=(lambda: os._exit(75)) if crash else None)


def _json_line(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def shard_file_name(keys: Sequence[str], digests: Sequence[str]) -> str:
    """A shard's name from its records' ids and content digests."""
    content = json.dumps([list(keys), list(digests)], ensure_ascii=False).encode("utf-8")
    return f"shard-{hashlib.sha256(content).hexdigest()[:20]}.safetensors"


def _check_header(directory: Path, stored: dict, header: dict, what: str) -> None:
    diff = [k for k in HEADER_KEYS if stored.get(k) != header.get(k)]
    if diff:
        details = "; ".join(f"{k}: {stored.get(k)!r} there, {header.get(k)!r} now" for k in diff)
        raise FeatureError(f"{directory / what}: written by a different extraction ({details}); "
                           "use a new --out directory or delete this one")


def _index_entries(index: dict) -> list[dict]:
    """A finished index as progress entries (one per shard, plus one holding its rejected records)."""
    entries = [{**shard, "records": []} for shard in index["shards"]]
    for idx, shard, frames, digest in zip(index["ids"], index["shard"], index["n_frames"], index["digests"]):
        entries[shard]["records"].append([idx, digest, frames])
    if index["rejected"]:
        entries.append({"name": None, "records": [], "rejected": index["rejected"]})
    return entries


def _progress_entries(path: Path, header: dict) -> list[dict]:
    """progress.jsonl's entries; a last line cut short by a crash is ignored."""
    lines = path.read_bytes().split(b"\n")
    entries = []
    for n, raw in enumerate(lines):
        try:
            entries.append(json.loads(raw))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if n < len(lines) - 1 and raw.strip():
                raise FeatureError(f"{path}: line {n + 1} is not JSON; delete the file to restart the "
                                   "extraction (finished shards are rechecked and kept)") from None
    if not entries or "header" not in entries[0]:
        return []
    _check_header(path.parent, entries[0]["header"], header, PROGRESS)
    return entries[1:]


def _finished(out: Path, header: dict) -> tuple[list[dict], bool]:
    """Shard entries of earlier runs whose files still match (size and sha256); whether all did."""
    from tqdm.auto import tqdm

    entries: list[dict] = []
    if (out / INDEX).is_file():
        index = read_index(out / INDEX)
        _check_header(out, index, header, INDEX)
        entries += _index_entries(index)
    if (out / PROGRESS).is_file():
        entries += _progress_entries(out / PROGRESS, header)
    kept, seen, intact = [], set(), True
    for entry in tqdm(entries, desc="checking finished shards", unit="shard", delay=2, dynamic_ncols=True):
        name = entry["name"]
        problem = None if name is None else shard_problem(out, entry, check_hash=True)
        if problem:
            print(f"{problem}: rewriting it")
            intact = False
        elif name is None or name not in seen:
            seen.add(name)
            kept.append(entry)
    return kept, intact


def _holders(entries: list[dict]) -> dict[str, tuple[str, int, Any]]:
    """key -> (content digest, entry number or -1 when left out, frame count or the reason); later entries win."""
    done: dict[str, tuple[str, int, Any]] = {}
    for e, entry in enumerate(entries):
        for key, digest, frames in entry["records"]:
            done[key] = (digest, e, frames)
        for key, digest, reason in entry.get("rejected", []):
            done[key] = (digest, -1, reason)
    return done


def _pending(keys: Sequence[str], digests: Sequence[str], done: dict) -> list[int]:
    """Positions of the records no finished entry holds with their current content."""
    return [i for i, (k, d) in enumerate(zip(keys, digests)) if k not in done or done[k][0] != d]


def write_sharded(out_dir: str | Path, header: dict, keys: Sequence[str], items: Sequence,
                  compute: Callable[[list], dict[str, torch.Tensor]], shard_size: int, dtype: str = "float16",
                  desc: str = "features", unit: str = "rec", *, digests: Sequence[str] | None = None,
                  left_out: dict[str, str] | None = None, rejected: Sequence[dict] = ()) -> Path:
    """Run ``compute`` over ``items`` in shards of ``shard_size`` and write a feature store.

    ``keys[i]`` names the tensor that ``compute`` returns for ``items[i]``, whose content
    ``digests[i]`` summarises (default: the key itself). ``items`` is only indexed for records
    that still need computing, so it may read them lazily. ``compute`` may leave a key out only
    by recording why in ``left_out``; ``rejected`` lists records the caller left out beforehand.
    Both go to ``<out>.rejects.jsonl``. Resumes from progress.jsonl or a finished index.json,
    refuses a directory written with a different header; returns index.json."""
    if shard_size < 1:
        raise FeatureError(f"shard size must be >= 1, got {shard_size}")
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:
        raise FeatureError(f"{out_dir}: duplicate ids in the input: {repeated[:10]}")
    digests = list(keys) if digests is None else digests
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {"version": VERSION, **header, "dtype": dtype}
    entries, intact = _finished(out, header)
    done = _holders(entries)
    pending = _pending(keys, digests, done)
    if intact and not pending and (out / INDEX).is_file() and not (out / PROGRESS).is_file():
        index = read_index(out / INDEX)
        if (index["ids"] == [k for k in keys if done[k][1] >= 0]
                and [r[0] for r in index["rejected"]] == [k for k in keys if done[k][1] < 0]):
            print(f"{out}: already complete ({len(index['ids'])} entries)")
            _write_rejects(out, rejected, index["rejected"])
            return out / INDEX
    with open(out / (PROGRESS + ".tmp"), "wb") as f:  # restart the log from the verified entries
        f.writelines(_json_line(line) for line in [{"header": header}, *entries])
    os.replace(out / (PROGRESS + ".tmp"), out / PROGRESS)
    (out / INDEX).unlink(missing_ok=True)
    shards = _Shards(out, keys, digests, items, compute, left_out if left_out is not None else {})
    entries += shards.run(pending, shard_size, dtype, desc, unit)
    return _finish(out, header, keys, digests, entries, rejected)


class _Shards:
    """Computes pending records shard by shard, appending each finished shard to progress.jsonl."""

    def __init__(self, out: Path, keys, digests, items, compute, left_out: dict[str, str]):
        self.out, self.keys, self.digests, self.items = out, keys, digests, items
        self.compute, self.left_out = compute, left_out

    def _entry(self, span: list[int], dtype: str, crash: bool) -> dict:
        from safetensors.torch import save

        keys, digests = self.keys, self.digests
        tensors = self.compute([self.items[i] for i in span])
        expected = [keys[i] for i in span]
        if sorted([*tensors, *(k for k in expected if k in self.left_out)]) != sorted(expected):
            raise FeatureError(f"{self.out}: computed keys differ from the shard's records")
        kept = [i for i in span if keys[i] in tensors]
        name = shard_file_name([keys[i] for i in kept], [digests[i] for i in kept])
        data = save({keys[i]: tensors[keys[i]].to(DTYPES[dtype]).contiguous() for i in kept})
        _atomic_write(self.out / name, data, crash=crash)
        return {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "records": [[keys[i], digests[i], int(tensors[keys[i]].shape[0])] for i in kept],
                "rejected": [[keys[i], digests[i], self.left_out[keys[i]]] for i in span if keys[i] not in tensors]}

    def run(self, pending: list[int], shard_size: int, dtype: str, desc: str, unit: str) -> list[dict]:
        from tqdm.auto import tqdm

        crash_after = int(os.environ.get(CRASH_ENV, "-1"))
        entries = []
        total = len(self.keys)
        with tqdm(total=total, initial=total - len(pending), unit=unit, desc=desc, dynamic_ncols=True,
                  smoothing=0.05) as bar, open(self.out / PROGRESS, "ab") as log:
            for start in range(0, len(pending), shard_size):
                span = pending[start:start + shard_size]
                entries.append(self._entry(span, dtype, crash=len(entries) == crash_after))
                log.write(_json_line(entries[-1]))
                log.flush()
                bar.update(len(span))
        return entries


def _finish(out: Path, header: dict, keys, digests, entries: list[dict], rejected: Sequence[dict]) -> Path:
    """Write index.json for the current records, then drop shards and temp files nothing refers to."""
    done = _holders(entries)
    used: dict[int, int] = {}
    columns: dict[str, list] = {"ids": [], "shard": [], "n_frames": [], "digests": []}
    left_out = []
    for key, digest in zip(keys, digests):
        _, e, value = done[key]
        if e < 0:
            left_out.append([key, digest, value])
            continue
        columns["ids"].append(key)
        columns["shard"].append(used.setdefault(e, len(used)))
        columns["n_frames"].append(value)
        columns["digests"].append(digest)
    shards = [{k: entries[e][k] for k in ("name", "bytes", "sha256")} for e in used]
    _atomic_write(out / INDEX, _json_line({**header, "count": len(columns["ids"]), "shards": shards,
                                           **columns, "rejected": left_out}))
    (out / PROGRESS).unlink(missing_ok=True)
    names = {s["name"] for s in shards}
    for path in out.glob("shard-*"):
        if path.name not in names:
            path.unlink()
    _write_rejects(out, rejected, left_out)
    return out / INDEX


def _write_rejects(out: Path, rejected: Sequence[dict], left_out: Sequence[list]) -> None:
    """``<out>.rejects.jsonl``: the caller's rejects, then what ``compute`` left out; removed when empty."""
    path = rejects_path(out)
    lines = [*rejected, *({"id": key, "reason": reason} for key, _, reason in left_out)]
    if lines:
        _atomic_write(path, b"".join(_json_line(line) for line in lines))
    else:
        path.unlink(missing_ok=True)


def store_summary(index_path: Path) -> str:
    """One line: how many entries a store holds and how many its extraction left out (and where)."""
    index = read_index(index_path)
    line = f"{index['count']} entries in {len(index['shards'])} shard(s)"
    rejects = rejects_path(index_path.parent)
    if rejects.is_file():
        with open(rejects, "rb") as f:
            line += f"; {sum(1 for _ in f)} left out, listed in {rejects}"
    return line
