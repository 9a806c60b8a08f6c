"""The resumable sharded writer behind every feature store.

Extraction runs for hours on the full TextVid, so it is resumable: each shard's content depends
only on its records, is written to a temp name and renamed when complete, and only then recorded
in progress.json. A rerun skips finished shards and rewrites anything else byte for byte.
index.json appears when every shard is done.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from topa_plugin.features.store import DTYPES, INDEX, PROGRESS, VERSION, FeatureError, shard_name

# Fault injection for the resume tests: exit abruptly while writing the shard that
# follows this many completed ones (after its temp file, before the rename).
CRASH_ENV = "TOPA_FEATURES_CRASH_AFTER_SHARDS"


def _atomic_write(path: Path, data: bytes, crash: bool = False) -> None:
    """Write to path.tmp, fsync, rename: a file under the final name is always complete."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if crash:
        os._exit(75)
    os.replace(tmp, path)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _check_header(directory: Path, stored: dict, header: dict, what: str) -> None:
    diff = [k for k in sorted(set(stored) | set(header)) if stored.get(k) != header.get(k)]
    if diff:
        details = "; ".join(f"{k}: {stored.get(k)!r} there, {header.get(k)!r} now" for k in diff)
        raise FeatureError(f"{directory / what}: written by a different extraction ({details}); "
                           "use a new --out directory or delete this one")


def write_sharded(out_dir: str | Path, header: dict, keys: Sequence[str], items: Sequence,
                  compute: Callable[[list], dict[str, torch.Tensor]], shard_size: int,
                  dtype: str = "float16", desc: str = "features", unit: str = "rec") -> Path:
    """Run ``compute`` over ``items`` in shards of ``shard_size`` and write a feature store.

    ``keys[i]`` names the tensor that ``compute`` returns for ``items[i]``. Resumes from
    progress.json; refuses a directory written with a different header. Returns index.json."""
    from safetensors.torch import save
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise FeatureError(f"shard size must be >= 1, got {shard_size}")
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if repeated:
        raise FeatureError(f"{out_dir}: duplicate ids in the input: {repeated[:10]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {"version": VERSION, **header, "dtype": dtype, "shard_size": shard_size, "count": len(keys)}
    if (out / INDEX).is_file():
        index = json.loads((out / INDEX).read_text(encoding="utf-8"))
        _check_header(out, {k: v for k, v in index.items() if k != "records"}, header, INDEX)
        print(f"{out}: already complete ({len(keys)} entries)")
        return out / INDEX
    done: list[str] = []
    if (out / PROGRESS).is_file():
        progress = json.loads((out / PROGRESS).read_text(encoding="utf-8"))
        _check_header(out, progress["header"], header, PROGRESS)
        done = [name for name in progress["done"] if (out / name).is_file()]
    n_shards = (len(keys) + shard_size - 1) // shard_size
    ranges = {shard_name(i): range(i * shard_size, min((i + 1) * shard_size, len(keys))) for i in range(n_shards)}
    crash_after = int(os.environ.get(CRASH_ENV, "-1"))
    written = 0
    bar = tqdm(total=len(keys), initial=sum(len(ranges[n]) for n in done), unit=unit, desc=desc,
               dynamic_ncols=True, smoothing=0.05)
    with bar:
        for name, span in ranges.items():
            if name in done:
                continue
            tensors = compute([items[i] for i in span])
            expected = [keys[i] for i in span]
            if sorted(tensors) != sorted(expected):
                raise FeatureError(f"{out / name}: computed keys differ from the shard's records")
            data = save({k: tensors[k].to(DTYPES[dtype]).contiguous() for k in expected})
            _atomic_write(out / name, data, crash=written == crash_after)
            written += 1
            done.append(name)
            _atomic_write(out / PROGRESS, _json_bytes({"header": header, "done": done}))
            bar.update(len(span))
    records = {}
    for name, span in ranges.items():
        shapes = _shard_shapes(out / name)
        for i in span:
            records[keys[i]] = {"shard": name, "key": keys[i], "frames": shapes[keys[i]][0]}
    _atomic_write(out / INDEX, _json_bytes({**header, "records": records}))
    (out / PROGRESS).unlink(missing_ok=True)
    return out / INDEX


def _shard_shapes(path: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
