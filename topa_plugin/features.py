"""Sharded CLIP feature stores: TextVid captions, real videos, release imports, memory banks.

Extraction runs for hours on the full TextVid, so it is resumable: each shard's
content depends only on its records, is written to a temp name and renamed when
complete, and only then recorded in progress.json. A rerun skips finished shards
and rewrites anything else byte for byte. index.json appears when every shard is
done; readers never see a half-written store.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from topa_plugin.bridge import l2_normalize
from topa_plugin.clip import file_sha256

VERSION = 1
INDEX = "index.json"
PROGRESS = "progress.json"
# Fault injection for the resume tests: exit abruptly while writing the shard that
# follows this many completed ones (after its temp file, before the rename).
CRASH_ENV = "TOPA_FEATURES_CRASH_AFTER_SHARDS"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
DTYPES = {"float16": torch.float16, "float32": torch.float32}


class FeatureError(ValueError):
    """Bad feature input or store; the message names the file, record and field."""


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


# ---------------------------------------------------------------- fusion (release rule)

def fuse_frames(caption_rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Frame features from per-caption rows, as the release does: normalise each caption
    row, average the rows of each frame (``counts[i]`` consecutive rows), normalise."""
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    if int(counts_t.sum()) != caption_rows.shape[0] or (counts_t < 1).any():
        raise ValueError(f"{caption_rows.shape[0]} caption rows do not split into frames of {list(counts)} captions")
    rows = l2_normalize(caption_rows.float())
    frame_of_row = torch.repeat_interleave(torch.arange(len(counts_t)), counts_t)
    sums = rows.new_zeros(len(counts_t), rows.shape[1]).index_add_(0, frame_of_row, rows)
    return l2_normalize(sums / counts_t.unsqueeze(1))


def encode_unique(encoder, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Raw embeddings for ``texts`` (in order), encoding each distinct text once, shortest first."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    position = {t: i for i, t in enumerate(unique)}
    embeddings = encoder.encode_text(unique, batch_size=batch_size)
    return embeddings[torch.tensor([position[t] for t in texts], dtype=torch.long)]


def textvid_features(encoder, records, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Fused frame features [n_frames, D] per record id, one encoder pass for all captions."""
    captions = [c for r in records for frame in r.captions_per_frame for c in frame]
    counts = [len(frame) for r in records for frame in r.captions_per_frame]
    fused = fuse_frames(encode_unique(encoder, captions, batch_size), counts)
    out, start = {}, 0
    for r in records:
        out[r.idx] = fused[start:start + len(r.frames)]
        start += len(r.frames)
    return out


# ---------------------------------------------------------------- sharded writer

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


# ---------------------------------------------------------------- extraction jobs

def extract_textvid(textvid: str | Path, out_dir: str | Path, encoder, batch_size: int = 256,
                    shard_size: int = 1000, dtype: str = "float16") -> Path:
    """CLIP text features of every TextVid frame (fused per frame) into a feature store."""
    from topa_plugin.textvid.records import read_textvid

    records = read_textvid(textvid)
    header = {"kind": "textvid", "encoder": encoder.identity, "dim": encoder.embed_dim,
              "source": {"file": Path(textvid).name, "sha256": file_sha256(textvid)}}
    return write_sharded(out_dir, header, [r.idx for r in records], records,
                         lambda recs: textvid_features(encoder, recs, batch_size),
                         shard_size, dtype, desc="textvid features", unit="rec")


def list_videos(videos: str | Path) -> list[Path]:
    """Video files of a directory (sorted) or of a list file (one path per line,
    relative to the list). Every missing file is reported at once."""
    videos = Path(videos)
    if videos.is_dir():
        paths = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not paths:
            raise FeatureError(f"{videos}: no video files ({', '.join(VIDEO_SUFFIXES)})")
        return paths
    if not videos.is_file():
        raise FeatureError(f"{videos}: no such video directory or list file")
    paths, missing = [], []
    for line_no, line in enumerate(videos.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        path = Path(line.strip())
        path = path if path.is_absolute() else videos.parent / path
        if path.is_file():
            paths.append(path)
        else:
            missing.append(f"line {line_no}: {path}")
    if missing:
        raise FeatureError(f"{videos}: {len(missing)} listed video(s) not found:\n" + "\n".join(map(str, missing)))
    if not paths:
        raise FeatureError(f"{videos}: the list names no videos")
    return paths


def video_keys(paths: Sequence[Path]) -> list[str]:
    """File stems, which evaluation tasks use as video ids; two files may not share one."""
    first: dict[str, Path] = {}
    for p in paths:
        if p.stem in first:
            raise FeatureError(f"videos {first[p.stem]} and {p} share the id {p.stem!r}")
        first[p.stem] = p
    return [p.stem for p in paths]


def video_features(encoder, paths: Sequence[Path], num_frames: int, batch_size: int = 64,
                   workers: int = 4) -> dict[str, torch.Tensor]:
    """Normalised CLIP image features [n_frames, D] per video stem.

    Videos are decoded at most ``workers`` ahead (in threads) and their frames encoded as full
    batches fill up, so memory holds a few decoded videos, not a whole shard of full-resolution
    frames (256 HD videos x 10 frames is tens of GB). The batches are the ones encoding all
    frames at once would use, so the features do not depend on ``workers``."""
    from PIL import Image

    from topa_plugin.video import read_frames

    lengths: list[int] = []
    pending: list = []
    encoded: list[torch.Tensor] = []

    def encode(final: bool) -> None:
        nonlocal pending
        while len(pending) >= batch_size or (final and pending):
            batch, pending = pending[:batch_size], pending[batch_size:]
            encoded.append(encoder.encode_images(batch, batch_size=batch_size))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for clip in _decoded_ahead(pool, lambda p: read_frames(p, num_frames), paths, max(1, workers)):
            lengths.append(len(clip))
            pending.extend(Image.fromarray(frame) for frame in clip)
            encode(final=False)
    encode(final=True)
    embeddings = l2_normalize(torch.cat(encoded)) if encoded else torch.empty(0, encoder.embed_dim)
    return dict(zip((p.stem for p in paths), embeddings.split(lengths)))


def _decoded_ahead(pool, decode: Callable, items: Sequence, ahead: int):
    """``decode(item)`` for each item in order, with at most ``ahead`` decodes running or waiting."""
    futures: deque = deque()
    for item in items:
        futures.append(pool.submit(decode, item))
        if len(futures) > ahead:
            yield futures.popleft().result()
    while futures:
        yield futures.popleft().result()


def extract_videos(videos: str | Path, out_dir: str | Path, encoder, num_frames: int, batch_size: int = 64,
                   shard_size: int = 256, dtype: str = "float16", workers: int = 4) -> Path:
    """CLIP image features of uniformly sampled frames of real videos into a feature store."""
    paths = list_videos(videos)
    keys = video_keys(paths)
    listing = json.dumps([[k, p.name, p.stat().st_size] for k, p in zip(keys, paths)])
    header = {"kind": "videos", "encoder": encoder.identity, "dim": encoder.embed_dim, "frames": num_frames,
              "source": {"videos": hashlib.sha256(listing.encode()).hexdigest()}}
    return write_sharded(out_dir, header, keys, paths,
                         lambda ps: video_features(encoder, ps, num_frames, batch_size, workers),
                         shard_size, dtype, desc="video features", unit="video")


def load_release_rows(path: Path, record) -> torch.Tensor:
    """One record's release feature file: [n_captions, D] rows in frame key order."""
    from topa_plugin.safeload import load_release_pickle

    if not path.is_file():
        raise FeatureError(f"{path}: feature file of record {record.idx!r} not found")
    value = load_release_pickle(path)
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        shape = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
        raise FeatureError(f"{path}: record {record.idx!r}: expected a float [captions, D] matrix, got {shape}")
    n_captions = sum(len(frame) for frame in record.frames)
    if value.shape[0] != n_captions:
        raise FeatureError(f"{path}: record {record.idx!r}: field 'frames' has {n_captions} captions "
                           f"but the file has {value.shape[0]} rows")
    return value


def release_features(features_dir: Path, records, dim: int) -> dict[str, torch.Tensor]:
    out = {}
    for r in records:
        path = features_dir / f"{r.idx}.pkl"
        rows = load_release_rows(path, r)
        if rows.shape[1] != dim:
            raise FeatureError(f"{path}: record {r.idx!r}: rows are {rows.shape[1]}-d, expected {dim}")
        out[r.idx] = fuse_frames(rows, [len(frame) for frame in r.frames])
    return out


def import_release(textvid: str | Path, features_dir: str | Path, out_dir: str | Path,
                   encoder: str = "ViT-L-14|openai", shard_size: int = 1000, dtype: str = "float16") -> Path:
    """Convert the release's per-record features/{idx}.pkl (through the restricted
    loader) into a fused feature store. Every missing file is reported before starting."""
    from topa_plugin.textvid.records import read_textvid

    records = read_textvid(textvid)
    features_dir = Path(features_dir)
    missing = [f"{features_dir / f'{r.idx}.pkl'} (record {r.idx!r})" for r in records
               if not (features_dir / f"{r.idx}.pkl").is_file()]
    if missing:
        shown = "\n".join(missing[:20]) + (f"\n... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FeatureError(f"{features_dir}: {len(missing)} release feature file(s) missing:\n{shown}")
    if not records:
        raise FeatureError(f"{textvid}: no records")
    dim = load_release_rows(features_dir / f"{records[0].idx}.pkl", records[0]).shape[1]
    header = {"kind": "release-import", "encoder": encoder, "dim": dim,
              "source": {"file": Path(textvid).name, "sha256": file_sha256(textvid)}}
    return write_sharded(out_dir, header, [r.idx for r in records], records,
                         lambda recs: release_features(features_dir, recs, dim),
                         shard_size, dtype, desc="release import", unit="rec")


# ---------------------------------------------------------------- reading

class FeatureStore:
    """Read-only access to a finished feature store (index.json + shards)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.is_file():
            if (self.directory / PROGRESS).is_file():
                raise FeatureError(f"{self.directory}: extraction incomplete; rerun the same "
                                   "`topa features` command to resume it")
            raise FileNotFoundError(f"{index_path}: no feature index")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("version") != VERSION:
            raise FeatureError(f"{index_path}: unsupported version {index.get('version')!r}")
        self.encoder: str = index["encoder"]
        self.dim: int = index["dim"]
        self.records: dict[str, dict] = index["records"]
        self._handles: dict[str, Any] = {}

    def __contains__(self, idx) -> bool:
        return str(idx) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> list[str]:
        return list(self.records)

    def _handle(self, shard: str):
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
        return self._handles[shard]

    def get(self, idx) -> torch.Tensor:
        """Frame features [T, D] as float32."""
        entry = self.records.get(str(idx))
        if entry is None:
            raise KeyError(f"{self.directory}: no features for record {idx!r}")
        return self._handle(entry["shard"]).get_tensor(entry["key"]).float()

    def __getstate__(self):  # open shard handles cannot cross into DataLoader workers
        return {**self.__dict__, "_handles": {}}


# ---------------------------------------------------------------- memory bank

def _row_digests(rows: torch.Tensor) -> np.ndarray:
    """128-bit content hash per fp16 row, as [n, 2] uint64 (exact-duplicate detection)."""
    raw = rows.numpy().view(np.uint8)
    return np.frombuffer(b"".join(hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in raw),
                         dtype=np.uint64).reshape(-1, 2)


def _memory_rows(store: FeatureStore, idx: str) -> torch.Tensor:
    """A record's frames as normalised fp16 memory rows; zero rows are an error."""
    rows = store.get(idx)
    zero = (rows.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if zero:
        raise FeatureError(f"{store.directory}: record {idx!r}: frame(s) {zero} are zero vectors")
    return l2_normalize(rows).half()


def build_memory(store: FeatureStore, size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """A memory bank from a feature store: de-duplicated, normalised fp16 frame rows,
    all of them (size None) or a uniform random sample of ``size`` (seeded), in store order."""
    ids = store.ids()
    digests, counts = [], []
    for idx in ids:
        rows = _memory_rows(store, idx)
        digests.append(_row_digests(rows))
        counts.append(rows.shape[0])
    all_digests = np.concatenate(digests)
    _, first = np.unique(all_digests, axis=0, return_index=True)
    unique_rows = np.sort(first)
    stats = {"records": len(ids), "frames": int(all_digests.shape[0]), "unique": len(unique_rows)}
    if size is not None and size < len(unique_rows):
        rng = np.random.default_rng(seed)
        unique_rows = np.sort(rng.choice(unique_rows, size=size, replace=False))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    owner = np.searchsorted(offsets, unique_rows, side="right") - 1
    memory = torch.empty(len(unique_rows), store.dim, dtype=torch.float16)
    pos = 0
    for record, n in zip(*np.unique(owner, return_counts=True)):
        picked = torch.from_numpy(unique_rows[pos:pos + n] - offsets[record])
        memory[pos:pos + n] = _memory_rows(store, ids[record])[picked]
        pos += n
    stats["rows"] = int(memory.shape[0])
    return memory, stats
