"""The memory bank, TOPA's text-to-image bridge: build it from text features, save and load it,
and project image features onto it.

TOPA trains on CLIP *text* features and reads CLIP *image* features at zero-shot time; the
projection onto a memory of text features (DeCap-style) closes that modality gap.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.features.transforms import l2_normalize
from topa_plugin.utils.atomic import atomic_write

# Default cap on the elements of any one projection temporary (logits block, widened
# memory chunk). Measured with 10 frames x 1M x 768 fp16 memory: on CPU 2**20 (4 MiB)
# keeps chunks in cache; on an H100 2**24 (64 MiB) is within 1.6x of the unchunked
# formula (8.5 vs 5.5 ms) that needs a 3 GiB fp32 copy, while 2**20 takes 95 ms.
CPU_CHUNK_ELEMS = 1 << 20
GPU_CHUNK_ELEMS = 1 << 24


def _blocks(n_frames: int, n_rows: int, dim: int, max_chunk_elems: int, top_k: int | None) -> tuple[int, int]:
    """(frames per block, memory rows per chunk) keeping each temporary within the budget
    (in top-k mode that includes the gathered neighbours, [frames, k, dim])."""
    if max_chunk_elems < 1:
        raise ValueError(f"max_chunk_elems must be >= 1, got {max_chunk_elems}")
    frames = max(1, min(n_frames, max_chunk_elems // (top_k * dim) if top_k else max_chunk_elems))
    rows = max(1, min(n_rows, max_chunk_elems // max(frames, dim)))
    return frames, rows


def _memory_chunks(memory: torch.Tensor, rows: int, device: torch.device):
    """Yield (start, float32 chunk on device); converts fp16 memory one chunk at a time."""
    for start in range(0, memory.shape[0], rows):
        yield start, memory[start:start + rows].to(device=device, dtype=torch.float32)


def _project_exact(x: torch.Tensor, memory: torch.Tensor, temperature: float, rows: int) -> torch.Tensor:
    """Streaming softmax over memory chunks: running max and running weighted sum.

    The softmax denominator is not tracked: it is a positive per-frame scalar that the
    final L2 normalisation cancels exactly."""
    scaled = x * temperature
    running_max = x.new_full((x.shape[0],), -math.inf)
    acc = x.new_zeros(x.shape)
    for _, chunk in _memory_chunks(memory, rows, x.device):
        logits = scaled @ chunk.T
        new_max = torch.maximum(running_max, logits.max(dim=1).values)
        acc.mul_(torch.exp(running_max - new_max).unsqueeze(1))
        acc.addmm_(logits.sub_(new_max.unsqueeze(1)).exp_(), chunk)
        running_max = new_max
    return l2_normalize(acc)


def _project_top_k(x: torch.Tensor, memory: torch.Tensor, temperature: float, rows: int, k: int) -> torch.Tensor:
    """Softmax restricted to each frame's k most similar memory rows (running top-k over chunks)."""
    best = x.new_empty((x.shape[0], 0))
    best_idx = torch.empty((x.shape[0], 0), dtype=torch.long, device=x.device)
    scaled = x * temperature
    for start, chunk in _memory_chunks(memory, rows, x.device):
        logits = scaled @ chunk.T
        values, index = logits.topk(min(k, logits.shape[1]), dim=1)
        best = torch.cat([best, values], dim=1)
        best_idx = torch.cat([best_idx, index + start], dim=1)
        if best.shape[1] > k:
            best, keep = best.topk(k, dim=1)
            best_idx = best_idx.gather(1, keep)
    weights = torch.softmax(best, dim=1)
    neighbours = memory[best_idx.to(memory.device)].to(device=x.device, dtype=torch.float32)
    return l2_normalize(torch.einsum("bk,bkf->bf", weights, neighbours))


def project_to_memory(frames: torch.Tensor, memory: torch.Tensor, temperature: float = 100.0,
                      top_k: int | None = None, max_chunk_elems: int | None = None) -> torch.Tensor:
    """Replace each frame feature f by normalise(softmax(temperature * M f)^T M).

    A zero (padded) frame gets uniform weights, i.e. the normalised mean of the memory.
    Memory is processed in chunks so no temporary exceeds ``max_chunk_elems`` elements
    (default: CPU_CHUNK_ELEMS or GPU_CHUNK_ELEMS by the frames' device); fp16 memory
    stays fp16 and is widened one chunk at a time. ``top_k`` keeps only each
    frame's k nearest rows (an approximation; measure it with ``top_k_error``). Zero
    frames always take the exact path, since a uniform softmax has no top k.

    Args:
        frames: unit-normalised features [..., F] (zero rows allowed: padding).
        memory: the bank [N, F] of unit-normalised text features (fp16 or fp32).
        temperature: the softmax temperature (100 in the release).
        top_k: keep each frame's k nearest rows (None: exact).
        max_chunk_elems: cap on the elements of any temporary (None: by device).

    Returns:
        unit-normalised projected features, shaped and typed like ``frames``.
    """
    if memory.ndim != 2 or memory.shape[0] == 0 or memory.shape[1] != frames.shape[-1]:
        raise ValueError(f"memory must be [N>=1, {frames.shape[-1]}], got {tuple(memory.shape)}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    flat = frames.reshape(-1, frames.shape[-1]).float()
    if max_chunk_elems is None:
        max_chunk_elems = GPU_CHUNK_ELEMS if flat.device.type == "cuda" else CPU_CHUNK_ELEMS
    approximate = top_k is not None and top_k < memory.shape[0]
    block, rows = _blocks(flat.shape[0], memory.shape[0], memory.shape[1], max_chunk_elems,
                          top_k if approximate else None)
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], block):
        x = flat[start:start + block]
        if not approximate:
            out[start:start + block] = _project_exact(x, memory, temperature, rows)
            continue
        projected = _project_top_k(x, memory, temperature, rows, top_k)
        zero = x.abs().amax(dim=1) == 0
        if zero.any():
            projected[zero] = _project_exact(x[zero], memory, temperature, rows)
        out[start:start + block] = projected
    return out.reshape(frames.shape).to(frames.dtype)


def top_k_error(frames: torch.Tensor, memory: torch.Tensor, top_k: int, temperature: float = 100.0,
                max_chunk_elems: int | None = None) -> dict[str, float]:
    """Cosine agreement of top-k projection with the exact one on the given frames."""
    exact = project_to_memory(frames, memory, temperature, None, max_chunk_elems).float()
    approx = project_to_memory(frames, memory, temperature, top_k, max_chunk_elems).float()
    cosine = (exact * approx).sum(dim=-1).reshape(-1)
    return {"top_k": top_k, "min_cosine": cosine.min().item(), "mean_cosine": cosine.mean().item()}


def _check_memory(memory, source: str) -> torch.Tensor:
    """A memory bank must be a finite, non-empty [N, F] float matrix (FeatureError naming ``source``)."""
    if not isinstance(memory, torch.Tensor):
        memory = _as_tensor(memory, source)
    if memory.ndim != 2 or memory.shape[0] == 0 or memory.shape[1] == 0:
        raise FeatureError(f"{source}: memory must be a [N, F] matrix, got shape {tuple(memory.shape)}")
    if not memory.is_floating_point():
        raise FeatureError(f"{source}: memory must be floating point, got {memory.dtype}")
    if not all(torch.isfinite(memory[s:s + 65536]).all() for s in range(0, memory.shape[0], 65536)):
        raise FeatureError(f"{source}: memory contains NaN or infinite values")
    return memory


def _as_tensor(value, source: str) -> torch.Tensor:
    import numpy as np

    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise FeatureError(f"{source}: expected a tensor or numpy array of memory rows, got {type(value).__name__}")


def load_memory(path: str | os.PathLike, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read a memory bank: ``.safetensors`` (key "memory") or the release's memory.pkl.

    The pickle goes through the restricted loader; rows are returned as stored
    (the release keeps its rows as they are).

    Args:
        path: a ``.safetensors`` bank (``topa memory build|import``) or the release's ``memory.pkl``.
        dtype: cast the rows to this dtype (default: as stored).

    Raises:
        ValueError: not a finite, non-empty [N, F] float matrix (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"memory file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = sorted(f.keys())
                memory = f.get_tensor("memory") if "memory" in keys else None
        except SafetensorError as exc:
            raise FeatureError(f"{path}: truncated or not a safetensors file ({exc})") from exc
        if memory is None:
            raise FeatureError(f"{path}: no tensor named 'memory' (found {keys})")
    else:
        from topa_plugin.release.safeload import load_release_pickle

        memory = load_release_pickle(path)
    memory = _check_memory(memory, str(path))
    return memory if dtype is None else memory.to(dtype)


def save_memory(memory: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a memory bank as fp16 safetensors (key "memory"), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    memory = _check_memory(memory, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = memory.detach().to("cpu", torch.float16).contiguous()
    return atomic_write(path, lambda tmp: save_file({"memory": rows}, str(tmp)))


def _row_digests(rows: torch.Tensor) -> np.ndarray:
    """64-bit content hash per fp16 row (duplicate detection). Two distinct rows share one with
    probability about n^2 / 2^65 (1e-6 for the release's 7.2M frames), which only drops one of
    them from the candidates; 8 bytes a frame keep the release's digests in 58 MB."""
    raw = rows.numpy().view(np.uint8)
    return np.frombuffer(b"".join(hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in raw),
                         dtype=np.uint64)


def _memory_rows(store: FeatureStore, ids: list[str]) -> torch.Tensor:
    """Frames of consecutive records of one shard as normalised fp16 memory rows (``FeatureStore.frames``
    refuses zero and NaN frames, naming the record)."""
    return l2_normalize(store.frames(ids)).half()


def check_text_store(store: FeatureStore, allow_image_features: bool) -> None:
    """A memory bank holds text features; a store of video frames is refused unless asked for."""
    if store.kind == "videos" and not allow_image_features:
        raise FeatureError(f"{store.directory}: holds CLIP image features of videos (`topa features videos`); "
                           "a memory bank holds text features (`topa features textvid` or `import-release`); "
                           "pass --allow-image-features to build one from image features anyway")


def build_memory(store: FeatureStore, size: int | None = None, seed: int = 0,
                 allow_image_features: bool = False) -> tuple[torch.Tensor, dict]:
    """A memory bank from a feature store: de-duplicated (by a 64-bit hash per row, ``_row_digests``),
    normalised fp16 frame rows, all of them (size None) or a uniform random sample of ``size`` (seeded),
    in store order.

    Records are read a shard run at a time (one read and one check per run, two passes), so memory
    holds one run's rows, an 8-byte digest per frame, and the bank.

    Args:
        store: a finished feature store of TextVid text features.
        size: how many distinct rows to keep (None: all).
        seed: seeds the uniform sample.
        allow_image_features: accept a store of video (image) features, which is not TOPA's bank.

    Returns:
        (memory [rows, D] fp16, stats with records / frames / unique / rows counts and ``kept``: each row's
        frame number in store order, for ``provenance.row_sources``).
    """
    from tqdm.auto import tqdm

    check_text_store(store, allow_image_features)
    runs = store.runs()
    digests = [_row_digests(_memory_rows(store, ids))
               for ids in tqdm(runs, desc="memory: hashing frames", unit="shard", delay=2, dynamic_ncols=True)]
    counts = [len(d) for d in digests]
    all_digests = np.concatenate(digests)
    del digests
    _, first = np.unique(all_digests, return_index=True)
    unique_rows = np.sort(first)
    stats = {"records": len(store), "frames": int(all_digests.shape[0]), "unique": len(unique_rows)}
    del all_digests, first
    if size is not None and size < len(unique_rows):
        rng = np.random.default_rng(seed)
        unique_rows = np.sort(rng.choice(unique_rows, size=size, replace=False))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    owner = np.searchsorted(offsets, unique_rows, side="right") - 1
    memory = torch.empty(len(unique_rows), store.dim, dtype=torch.float16)
    pos = 0
    for run, n in tqdm(list(zip(*np.unique(owner, return_counts=True))), desc="memory: collecting rows",
                       unit="shard", delay=2, dynamic_ncols=True):
        picked = torch.from_numpy(unique_rows[pos:pos + n] - offsets[run])
        memory[pos:pos + n] = _memory_rows(store, runs[run])[picked]
        pos += n
    stats["rows"] = int(memory.shape[0])
    stats["kept"] = unique_rows.tolist()
    return memory, stats


def nearest_rows(frames: torch.Tensor, memory: torch.Tensor, k: int,
                 max_chunk_elems: int = CPU_CHUNK_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines [n, k] descending, row numbers [n, k]) of each unit frame's k most similar memory rows,
    streaming over memory chunks (fp16 rows are widened one chunk at a time)."""
    x = frames.float()
    k = min(k, memory.shape[0])
    _, rows = _blocks(x.shape[0], memory.shape[0], memory.shape[1], max_chunk_elems, None)
    best = x.new_empty((x.shape[0], 0))
    best_idx = torch.empty((x.shape[0], 0), dtype=torch.long, device=x.device)
    for start, chunk in _memory_chunks(memory, rows, x.device):
        values, index = (x @ chunk.T).topk(min(k, chunk.shape[0]), dim=1)
        best, best_idx = torch.cat([best, values], dim=1), torch.cat([best_idx, index + start], dim=1)
        if best.shape[1] > k:
            best, keep = best.topk(k, dim=1)
            best_idx = best_idx.gather(1, keep)
    return best, best_idx


COVERAGE_SAMPLE = 256
COVERAGE_PERCENTILE = 5.0


def coverage_threshold(memory: torch.Tensor, sample: int = COVERAGE_SAMPLE, percentile: float = COVERAGE_PERCENTILE,
                       seed: int = 0) -> float:
    """The low end of the memory's own typical range: the ``percentile``-th percentile, over ``sample``
    rows drawn with ``seed``, of each row's cosine to its nearest *other* row.

    A frame's coverage (its largest cosine to the memory) below this is farther from every memory row
    than 95% of the memory's own rows are from their nearest neighbour: what it becomes after projection
    is a blend of texts none of which describes it well. (CLIP image features sit farther from text
    features than texts from each other -- the modality gap TOPA's projection bridges -- so read the
    flag as "less covered than the bank's own texts", and compare frames with each other.)"""
    if memory.shape[0] < 2:
        raise ValueError(f"a coverage threshold needs at least 2 memory rows, got {memory.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(memory.shape[0], generator=generator)[:sample].to(memory.device)
    queries = memory[picked].float()
    cosines, rows = nearest_rows(queries, memory, 2)
    other = torch.where(rows[:, 0] == picked, cosines[:, 1], cosines[:, 0])  # skip the row itself
    return float(torch.quantile(other.cpu(), percentile / 100.0))
