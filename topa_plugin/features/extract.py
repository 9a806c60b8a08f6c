"""Extraction jobs: CLIP features of TextVid captions, of real videos, and of the release's
per-record pickles, each written to a feature store through the resumable writer."""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from topa_plugin.features.store import FeatureError
from topa_plugin.features.transforms import l2_normalize
from topa_plugin.features.writer import write_sharded

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
# Size of the per-record content digests that key finished shards (64 bits).
DIGEST_BYTES = 8
# Caption rows fuse_frames gathers at once: a 1000-record shard's 25k gathered float32 rows
# would be 77 MB (at D=768) beside the same again in normalised copies.
FUSE_ROWS = 4096


def fuse_frames(caption_rows: torch.Tensor, counts: Sequence[int], index: torch.Tensor | None = None) -> torch.Tensor:
    """Frame features from per-caption rows, as the release does: normalise each caption
    row, average the rows of each frame (``counts[i]`` consecutive captions), normalise.

    Caption j's row is ``caption_rows[index[j]]`` (default: row j), so a caption repeated in
    the data is encoded once; rows are gathered ``FUSE_ROWS`` at a time, never all at once."""
    n = caption_rows.shape[0] if index is None else len(index)
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    if int(counts_t.sum()) != n or (counts_t < 1).any():
        raise ValueError(f"{n} caption rows do not split into frames of {list(counts)} captions")
    rows = l2_normalize(caption_rows.float())
    frame_of_row = torch.repeat_interleave(torch.arange(len(counts_t)), counts_t)
    sums = rows.new_zeros(len(counts_t), rows.shape[1])
    for start in range(0, n, FUSE_ROWS):
        picked = rows[start:start + FUSE_ROWS] if index is None else rows[index[start:start + FUSE_ROWS]]
        sums.index_add_(0, frame_of_row[start:start + FUSE_ROWS], picked)
    return l2_normalize(sums / counts_t.unsqueeze(1))


def encode_unique(encoder, texts: Sequence[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw embeddings of the distinct texts, each text's row among them): each distinct text is
    encoded once, shortest first."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    position = {t: i for i, t in enumerate(unique)}
    return encoder.encode_text(unique, batch_size=batch_size), torch.tensor([position[t] for t in texts], dtype=torch.long)


def _split_records(fused: torch.Tensor, records) -> dict[str, torch.Tensor]:
    """Consecutive frame rows of ``fused`` per record id."""
    return dict(zip((r.idx for r in records), fused.split([len(r.frames) for r in records])))


def textvid_features(encoder, records, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Fused frame features [n_frames, D] per record id, one encoder pass for all captions."""
    captions = [c for r in records for frame in r.captions_per_frame for c in frame]
    counts = [len(frame) for r in records for frame in r.captions_per_frame]
    embeddings, index = encode_unique(encoder, captions, batch_size)
    return _split_records(fuse_frames(embeddings, counts, index), records)


def caption_digest(record) -> str:
    """Digest of what a record's text features depend on: its captions, frame by frame."""
    data = json.dumps(record.captions_per_frame, ensure_ascii=False).encode("utf-8")
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


@dataclass
class TextVidSource:
    """A TextVid file checked record by record: the usable records' places in the file, ids and
    content digests, and the records left out (``--skip-invalid``) with every problem of each.
    Indexing it reads one record back from its byte span, so a shard holds its records only."""

    path: Path
    spans: tuple[array, array, array]  # position in the file, byte offset, byte size (compact at 721k)
    keys: list[str]
    digests: list[str]
    rejected: list[dict]
    digest: Callable = caption_digest

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        from topa_plugin.textvid.reader import read_record

        position, offset, size = (column[i] for column in self.spans)
        record = read_record(self.path, offset, size)
        if record.idx != self.keys[i] or self.digest(record) != self.digests[i]:
            raise FeatureError(f"{self.path}: record {position} (id {self.keys[i]!r}) changed after the file was "
                               "checked; rerun the command")
        return record


def check_textvid(textvid: str | Path, skip_invalid: bool = False, digest: Callable = caption_digest
                  ) -> TextVidSource:
    """Read a TextVid file once, before any model loads: every problem is raised together,
    or with ``skip_invalid`` the invalid records are set aside (a file that stops parsing
    part-way is an error either way: the records after the break are unknown)."""
    from topa_plugin.textvid.reader import record_of, scan_textvid
    from topa_plugin.textvid.records import Problem, TextVidError

    path = Path(textvid)
    source = TextVidSource(path, (array("q"), array("q"), array("q")), [], [], [], digest)
    problems, broken = [], []
    for item, found in scan_textvid(path, desc=f"checking {path.name}"):
        if item is None:
            broken += found
        elif found:
            problems += found
            source.rejected.append({"source": str(path), "record": item.index, "line": item.line,
                                    "id": found[0].id, "problems": [str(p) for p in found]})
        else:
            record = record_of(item)
            for column, value in zip(source.spans, (item.index, item.offset, item.size)):
                column.append(value)
            source.keys.append(record.idx)
            source.digests.append(digest(record))
    if broken or (problems and not skip_invalid):
        raise TextVidError(broken + problems if not skip_invalid else broken)
    if not source.keys:
        raise TextVidError([Problem(str(path), None, None, None, "no usable records")])
    return source


def extract_textvid(textvid: str | Path | TextVidSource, out_dir: str | Path, encoder, batch_size: int = 256,
                    shard_size: int = 1000, dtype: str = "float16", skip_invalid: bool = False) -> Path:
    """CLIP text features of every TextVid frame (fused per frame) into a feature store.

    Args:
        textvid: the release ``textvid.json`` / a ``.jsonl`` path, or the result of
            ``check_textvid`` (to check the file before loading CLIP).
        out_dir: the store directory; rerunning the same call resumes it.
        encoder: a ``ClipEncoder`` from ``load_clip``.
        batch_size: captions per CLIP batch.
        shard_size: records per shard file.
        dtype: storage dtype, ``"float16"`` or ``"float32"``.
        skip_invalid: leave invalid records out, listed in ``<out>.rejects.jsonl`` (default: fail,
            naming every problem).

    Returns:
        the store's ``index.json``.
    """
    source = textvid if isinstance(textvid, TextVidSource) else check_textvid(textvid, skip_invalid)
    # "source" lets `topa memory build` show each memory row's captions (not a header key resumes must match).
    header = {"kind": "textvid", "encoder": encoder.identity, "dim": encoder.embed_dim, "source": str(source.path.resolve())}
    return write_sharded(out_dir, header, source.keys, source, lambda recs: textvid_features(encoder, recs, batch_size),
                         shard_size, dtype, desc="textvid features", unit="rec", digests=source.digests,
                         rejected=source.rejected)


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
                   workers: int | None = None, undecodable: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Normalised CLIP image features [n_frames, D] per video stem.

    ``workers`` processes (``DecodePool``; default min(8, cores), 0: in this process) decode a
    few videos ahead with the exact seeking reader while frames are encoded as full batches fill
    up, so memory holds a few decoded videos, not a whole shard of full-resolution frames (256 HD
    videos x 10 frames is tens of GB). The batches are the ones encoding all frames at once would
    use, so the features do not depend on ``workers``. With ``undecodable`` given, a video that
    cannot be decoded is left out and its reason recorded there."""
    from PIL import Image

    from topa_plugin.features.decode_pool import DecodePool, VideoJob, VideoJobError

    lengths: list[int] = []
    stems: list[str] = []
    pending: list = []
    encoded: list[torch.Tensor] = []

    def encode(final: bool) -> None:
        nonlocal pending
        while len(pending) >= batch_size or (final and pending):
            batch, pending = pending[:batch_size], pending[batch_size:]
            encoded.append(encoder.encode_images(batch, batch_size=batch_size))

    with DecodePool(workers) as pool:
        jobs = (VideoJob(str(p), num_frames) for p in paths)
        for path, result in zip(paths, pool.imap(jobs, ahead=pool.workers + 1, failures=undecodable is not None)):
            if isinstance(result, VideoJobError):
                undecodable[path.stem] = str(result)
                continue
            stems.append(path.stem)
            lengths.append(len(result.frames))
            pending.extend(Image.fromarray(frame) for frame in result.frames)
            encode(final=False)
    encode(final=True)
    embeddings = l2_normalize(torch.cat(encoded)) if encoded else torch.empty(0, encoder.embed_dim)
    return dict(zip(stems, embeddings.split(lengths)))


def extract_videos(videos: str | Path, out_dir: str | Path, encoder, num_frames: int, batch_size: int = 64,
                   shard_size: int = 256, dtype: str = "float16", workers: int | None = None,
                   skip_invalid: bool = False) -> Path:
    """CLIP image features of uniformly sampled frames of real videos into a feature store.

    A video's features are keyed by its name and size, so removing videos keeps finished shards.
    With ``skip_invalid``, undecodable videos are left out and listed in ``<out>.rejects.jsonl``."""
    paths = list_videos(videos)
    keys = video_keys(paths)
    digests = [hashlib.blake2b(json.dumps([p.name, p.stat().st_size]).encode(), digest_size=DIGEST_BYTES).hexdigest()
               for p in paths]
    header = {"kind": "videos", "encoder": encoder.identity, "dim": encoder.embed_dim, "frames": num_frames}

    undecodable: dict[str, str] | None = {} if skip_invalid else None
    return write_sharded(out_dir, header, keys, paths,
                         lambda ps: video_features(encoder, ps, num_frames, batch_size, workers, undecodable),
                         shard_size, dtype, desc="video features", unit="video", digests=digests,
                         left_out=undecodable)


def load_release_rows(path: Path, record) -> torch.Tensor:
    """One record's release feature file: [n_captions, D] rows in frame key order."""
    from topa_plugin.utils.safeload import load_release_pickle

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
    """Fused frame features of the records' release files, fused for all records at once."""
    rows, counts = [], []
    for r in records:
        path = features_dir / f"{r.idx}.pkl"
        rows.append(load_release_rows(path, r))
        if rows[-1].shape[1] != dim:
            raise FeatureError(f"{path}: record {r.idx!r}: rows are {rows[-1].shape[1]}-d, expected {dim}")
        counts += [len(frame) for frame in r.frames]
    return _split_records(fuse_frames(torch.cat([row.float() for row in rows]), counts), records)


def import_release(textvid: str | Path, features_dir: str | Path, out_dir: str | Path,
                   encoder: str = "ViT-L-14|openai", shard_size: int = 1000, dtype: str = "float16") -> Path:
    """Convert the release's per-record features/{idx}.pkl (through the restricted
    loader) into a fused feature store. Every missing file is reported before starting."""
    features_dir = Path(features_dir)

    def digest(record) -> str:  # the caption counts and the feature file decide the fused rows
        path = features_dir / f"{record.idx}.pkl"
        size = path.stat().st_size if path.is_file() else None
        data = json.dumps([[len(frame) for frame in record.frames], size]).encode()
        return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()

    source = check_textvid(textvid, digest=digest)
    missing = [f"{features_dir / f'{idx}.pkl'} (record {idx!r})" for idx in source.keys
               if not (features_dir / f"{idx}.pkl").is_file()]
    if missing:
        shown = "\n".join(missing[:20]) + (f"\n... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise FeatureError(f"{features_dir}: {len(missing)} release feature file(s) missing:\n{shown}")
    dim = load_release_rows(features_dir / f"{source.keys[0]}.pkl", source[0]).shape[1]
    header = {"kind": "release-import", "encoder": encoder, "dim": dim}
    return write_sharded(out_dir, header, source.keys, source, lambda recs: release_features(features_dir, recs, dim),
                         shard_size, dtype, desc="release import", unit="rec", digests=source.digests)
