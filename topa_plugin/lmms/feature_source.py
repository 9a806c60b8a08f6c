"""Per-video CLIP frame features for evaluation: precomputed files, a disk cache, or decode + encode.

Decoding and CLIP-encoding a long video costs far more than scoring its question, and the same
videos are evaluated again and again (both EgoSchema variants, reruns, other checkpoints), so
encoded frames are cached on disk under a key made of the video's content hash, the encoder
identity and the sampling -- never the path, so renamed or replaced files cannot go stale.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from topa_plugin.features.validation import check_frame_features
from topa_plugin.utils.atomic import atomic_write
from topa_plugin.utils.hashing import file_sha256
from topa_plugin.utils.ids import id_problem

CACHE_FORMAT = "topa-video-features-v1"  # bump when decoding or sampling changes meaning


class FeatureFileError(ValueError):
    """A precomputed or cached feature file that cannot be used; names the file."""


def content_digest(video_path: str | Path) -> str:
    """sha256 of the file, hashed once per process while its size, mtime and inode stay the same.

    Hashing a 1 GB video takes about a second; every task of a run (both EgoSchema variants,
    each of a doc's requests) asks again, so the digest is remembered, but only for this process:
    a memo kept on disk would trust mtimes across copies and restores, which is how caches go stale."""
    stat = os.stat(video_path)
    return _digest(str(Path(video_path).resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, *_stat) -> str:
    return file_sha256(path)


def cache_key(video_path: str | Path, encoder_identity: str, num_frames: int) -> str:
    parts = [CACHE_FORMAT, content_digest(video_path), encoder_identity, f"uniform:{num_frames}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def load_feature_array(path: Path, dim: int) -> torch.Tensor:
    """A [T, dim] float array from a .npy file (the TOPA release's format; never unpickled)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FeatureFileError(f"{path}: cannot read features ({exc})") from exc
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise FeatureFileError(f"{path}: expected features of shape [T>=1, {dim}], got {list(array.shape)}")
    return check_frame_features(torch.from_numpy(np.asarray(array, dtype=np.float32)), str(path), FeatureFileError)


class VideoFeatureSource:
    """Frame features [T, D] per video, from the cheapest place that has them.

    ``precomputed(video_id)``: ``feature_dir`` holding ``<video id>.npy`` files (as in the
    release) or a ``topa features videos`` store. ``get(video_path)``: the disk cache, else
    decode ``num_frames`` uniform frames and CLIP-encode them (``topa_plugin.features``), then
    cache. ``counts`` records where features came from.
    """

    def __init__(self, encoder, num_frames: int, cache_dir: str | Path | None = None,
                 feature_dir: str | Path | None = None, batch_size: int = 64):
        self.encoder = encoder
        self.num_frames = int(num_frames)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.feature_dir = Path(feature_dir) if feature_dir else None
        self.counts: Counter = Counter()
        self._store = None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        if self.feature_dir is not None:
            if not self.feature_dir.is_dir():
                raise FileNotFoundError(f"feature_dir {self.feature_dir}: folder not found")
            if (self.feature_dir / "index.json").is_file():
                self._store = self._open_store(self.feature_dir)

    def _open_store(self, directory: Path):
        from topa_plugin.features.store import FeatureStore

        store = FeatureStore(directory)
        if store.dim != self.encoder.embed_dim or store.encoder != self.encoder.identity:
            raise FeatureFileError(
                f"{directory / 'index.json'}: features of encoder {store.encoder!r} (dim {store.dim}), "
                f"but the CLIP model loaded is {self.encoder.identity!r} (dim {self.encoder.embed_dim})"
            )
        return store

    def precomputed(self, video_id: str) -> torch.Tensor | None:
        """Features from ``feature_dir`` for this id, or None when it has none."""
        if self.feature_dir is None:
            return None
        if self._store is not None:
            if video_id not in self._store:
                return None
            self.counts["precomputed"] += 1
            return self._store_features(video_id)
        if id_problem(video_id):
            raise FeatureFileError(f"feature_dir {self.feature_dir}: {id_problem(video_id)}")
        path = self.feature_dir / f"{video_id}.npy"
        if not path.is_file():
            return None
        self.counts["precomputed"] += 1
        return load_feature_array(path, self.encoder.embed_dim)

    def _store_features(self, video_id: str) -> torch.Tensor:
        from topa_plugin.features.store import FeatureError

        try:
            return self._store.get(video_id)
        except FeatureError as exc:
            raise FeatureFileError(str(exc)) from exc

    def get(self, video_path: str | Path) -> torch.Tensor:
        """Cached features of this file's content, else decode + encode (and cache)."""
        from topa_plugin.features.video import VideoDecodeError

        video_path = Path(video_path)
        if not video_path.is_file():
            raise VideoDecodeError(f"{video_path}: video file not found")
        entry = None
        if self.cache_dir is not None:
            entry = self.cache_dir / f"{cache_key(video_path, self.encoder.identity, self.num_frames)}.safetensors"
            if entry.is_file():
                self.counts["cached"] += 1
                return self._read_entry(entry)
        features = self.encode(video_path)
        if entry is not None:
            _write_entry(entry, features)
        return features

    def encode(self, video_path: Path) -> torch.Tensor:
        """Decode and CLIP-encode one video, bypassing every cache."""
        from topa_plugin.features.extract import video_features

        features = video_features(self.encoder, [video_path], self.num_frames, self.batch_size, workers=1)
        self.counts["decoded"] += 1
        return check_frame_features(features[video_path.stem], f"{video_path}: CLIP features", FeatureFileError)

    def _read_entry(self, path: Path) -> torch.Tensor:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            features = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise FeatureFileError(f"{path}: unreadable feature cache entry; delete it ({exc})") from exc
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != self.encoder.embed_dim:
            raise FeatureFileError(
                f"{path}: cached features have shape {list(features.shape)}, expected [T, {self.encoder.embed_dim}]; delete it"
            )
        return check_frame_features(features, f"{path} (feature cache entry; delete it)", FeatureFileError)


def _write_entry(path: Path, features: torch.Tensor) -> None:
    """Write then rename, so a crashed or concurrent run never leaves a half-written entry."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({"features": features.float().contiguous()}, str(tmp)))
