"""Per-video CLIP frame features for evaluation: precomputed files, a disk cache, or decode + encode.

Decoding and CLIP-encoding a long video costs far more than scoring its question, and the same
videos are evaluated again and again (both EgoSchema variants, reruns, other checkpoints), so
encoded frames are cached on disk under a key made of the video's content hash, the encoder
identity and the sampling -- never the path, so renamed or replaced files cannot go stale.
Videos are hashed and decoded ahead of use by a ``DecodePool``; its workers check this cache
themselves, so this module imports torch only inside functions.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from topa_plugin.features.validation import check_frame_features
from topa_plugin.utils.atomic import atomic_write
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.hashing import file_sha256
from topa_plugin.utils.ids import id_problem

# Bump when decoding or sampling changes meaning. v2: frames of the exact seeking reader (the
# full decode's), not lmms-eval's metadata-counted ones; the decode backend is part of the key.
CACHE_FORMAT = "topa-video-features-v2"


class FeatureFileError(TopaInputError, ValueError):
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
    return key_for_digest(content_digest(video_path), encoder_identity, num_frames)


def key_for_digest(digest: str, encoder_identity: str, num_frames: int) -> str:
    from topa_plugin.features.video import decoder_name

    parts = [CACHE_FORMAT, digest, encoder_identity, f"uniform:{num_frames}", f"decoder:{decoder_name()}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def entry_path(cache_dir: Path, encoder_identity: str, num_frames: int, digest: str) -> Path:
    return cache_dir / f"{key_for_digest(digest, encoder_identity, num_frames)}.safetensors"


def entry_exists(cache_dir: Path, encoder_identity: str, num_frames: int, digest: str) -> bool:
    """Run by decode workers: is this content already encoded (then nothing is decoded)?"""
    return entry_path(cache_dir, encoder_identity, num_frames, digest).is_file()


def load_feature_array(path: Path, dim: int):
    """A [T, dim] float tensor from a .npy file (the TOPA release's format; never unpickled)."""
    import torch

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise FeatureFileError(f"{path}: cannot read features ({exc})") from exc
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise FeatureFileError(f"{path}: expected features of shape [T>=1, {dim}], got {list(array.shape)}")
    return check_frame_features(torch.from_numpy(np.asarray(array, dtype=np.float32)), str(path), FeatureFileError)


def clip_loader(clip_model: str, clip_pretrained: str | None, feature_dim: int, checkpoint: str | Path, device):
    """A loader of the CLIP encoder for a checkpoint's ``feature_dim``: a config that declares another
    width fails now; a model that turns out to give another width fails when it loads (on first use)."""
    from topa_plugin.features.clip import configured_embed_dim, load_clip

    where = Path(checkpoint) / "config.json"

    def check(dim: int | None) -> None:
        if dim is not None and dim != feature_dim:
            raise ValueError(f"CLIP model {clip_model} ({clip_pretrained}) gives {dim}-d features, but the "
                             f"checkpoint {where} expects feature_dim={feature_dim}")

    check(configured_embed_dim(str(clip_model)))

    def load():
        encoder = load_clip(str(clip_model), clip_pretrained, device=device)
        check(encoder.embed_dim)
        return encoder

    return load


class VideoSourceError(RuntimeError):
    """A video whose features cannot be had; ``path`` names it (the caller adds which request)."""

    def __init__(self, path: Path, message: str):
        super().__init__(message)
        self.path = path


class VideoFeatureSource:
    """Frame features [T, D] per video, from the cheapest place that has them.

    ``precomputed(video_id)``: ``feature_dir`` holding ``<video id>.npy`` files (as in the
    release) or a ``topa features videos`` store. ``stream(paths)``: per path, the disk cache,
    else ``num_frames`` uniform frames decoded ahead by ``decode_workers`` processes and
    CLIP-encoded several videos per batch, then cached. ``encoder`` is a ClipEncoder or a
    loader called on the first video to encode (with ``identity``/``dim`` given, a run that
    finds everything cached never loads CLIP). ``counts`` records where features came from.
    """

    def __init__(self, encoder, num_frames: int, cache_dir: str | Path | None = None,
                 feature_dir: str | Path | None = None, batch_size: int = 64, decode_workers: int | None = None,
                 identity: str | None = None, dim: int | None = None):
        self._encoder, self._load = (None, encoder) if callable(encoder) else (encoder, None)
        self.identity = identity if identity is not None else encoder.identity
        self.dim = int(dim if dim is not None else encoder.embed_dim)
        self.num_frames = int(num_frames)
        self.batch_size = int(batch_size)
        self.decode_workers = decode_workers
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

    @property
    def encoder(self):
        """The CLIP encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = self._load()
        return self._encoder

    def _open_store(self, directory: Path):
        from topa_plugin.features.store import FeatureStore

        store = FeatureStore(directory)
        if store.dim != self.dim or store.encoder != self.identity:
            raise FeatureFileError(
                f"{directory / 'index.json'}: features of encoder {store.encoder!r} (dim {store.dim}), "
                f"but the CLIP model configured is {self.identity!r} (dim {self.dim})"
            )
        return store

    def precomputed(self, video_id: str):
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
        return load_feature_array(path, self.dim)

    def _store_features(self, video_id: str):
        from topa_plugin.features.store import FeatureError

        try:
            return self._store.get(video_id)
        except FeatureError as exc:
            raise FeatureFileError(str(exc)) from exc

    def get(self, video_path: str | Path):
        """One video's features (cached, else decoded and encoded, then cached)."""
        stream = self.stream([Path(video_path)])
        try:
            return next(stream)
        finally:
            stream.close()

    def decode(self, video_path: str | Path):
        """One video decoded here, uncached, keeping its frames (the ``Decoded`` frames and how they were
        read); no model work, so callers may decode beside a model that is busy. Raises VideoDecodeError
        naming the file."""
        from topa_plugin.features.decode_pool import VideoJob, run_job

        return run_job(VideoJob(str(video_path), self.num_frames))

    def encode_decoded(self, video_path: str | Path, decoded):
        """The features of a ``decode``d video, as ``get`` gives them."""
        return _checked(Path(video_path), self._encode([decoded.frames])[0])

    def stream(self, videos: Sequence[Path], group: int = 1) -> Iterator:
        """Features per path, in order. Decoding runs ahead in worker processes; decoded videos
        are encoded ``group`` at a time. Videos decoding or decoded but not yet encoded number at
        most ``decode_workers + group``. Raises VideoSourceError naming the failing file."""
        from topa_plugin.features.decode_pool import DecodePool, VideoJob

        videos = [Path(v) for v in videos]
        skip = None
        if self.cache_dir is not None:
            skip = functools.partial(entry_exists, self.cache_dir, self.identity, self.num_frames)
        jobs = (VideoJob(str(p), self.num_frames, digest=True, skip=skip) for p in dict.fromkeys(videos))
        done: dict = {}
        held: list = []  # decoded results taken from the pool, waiting for their group's encode
        group = max(1, group)
        with DecodePool(self.decode_workers) as pool:
            results = pool.imap(jobs, ahead=lambda: pool.workers + group - len(held))
            given: set = set()
            for path in videos:
                if path not in done:
                    self._fill(done, results, group, held)
                elif path in given:  # the same video again in this call (a group fills ahead)
                    self.counts["reused"] += 1
                given.add(path)
                yield done[path]

    def _fill(self, done: dict, results: Iterator, group: int, held: list) -> None:
        """Take the next ``group`` results: read cache hits, encode the decoded ones in one call."""
        from topa_plugin.features.decode_pool import VideoJobError

        for _ in range(group):
            try:
                result = next(results, None)
            except VideoJobError as exc:
                raise VideoSourceError(Path(exc.path), str(exc)) from exc
            if result is None:
                break
            path = Path(result.path)
            if result.frames is None:
                entry = entry_path(self.cache_dir, self.identity, self.num_frames, result.digest)
                try:
                    done[path] = self._read_entry(entry)
                except FeatureFileError as exc:
                    raise VideoSourceError(path, str(exc)) from exc
                self.counts["cached"] += 1
            else:
                held.append(result)
        if held:
            features = self._encode([r.frames for r in held])
            for result, value in zip(held, features):
                value = _checked(Path(result.path), value)  # NaN/Inf never reaches the cache
                if self.cache_dir is not None:
                    _write_entry(entry_path(self.cache_dir, self.identity, self.num_frames, result.digest), value)
                done[Path(result.path)] = value
                self.counts["decoded"] += 1
            held.clear()

    def _encode(self, clips: list[np.ndarray]) -> list:
        """Normalised CLIP features per clip, all clips' frames in shared batches."""
        from topa_plugin.features.transforms import l2_normalize

        raw = self.encoder.encode_images(np.concatenate(clips), batch_size=self.batch_size)
        return list(l2_normalize(raw).split([len(c) for c in clips]))

    def _read_entry(self, path: Path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            features = load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError) as exc:
            raise FeatureFileError(f"{path}: unreadable feature cache entry; delete it ({exc})") from exc
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != self.dim:
            raise FeatureFileError(
                f"{path}: cached features have shape {list(features.shape)}, expected [T, {self.dim}]; delete it"
            )
        return check_frame_features(features, f"{path} (feature cache entry; delete it)", FeatureFileError)


def _checked(path: Path, features):
    """A video's fresh CLIP features, refused naming the video if a frame is NaN/Inf or zero."""
    try:
        return check_frame_features(features, f"{path}: CLIP features", FeatureFileError)
    except FeatureFileError as exc:
        raise VideoSourceError(path, str(exc)) from exc


def _write_entry(path: Path, features) -> None:
    """Write then rename, so a crashed or concurrent run never leaves a half-written entry."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({"features": features.float().contiguous()}, str(tmp)))
