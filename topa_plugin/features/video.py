"""Decode and uniformly sample video frames.

Uses lmms-eval's reader when installed, so evaluation caches see exactly the frames
lmms-eval's own models see; otherwise PyAV directly. Every failure names the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class VideoDecodeError(RuntimeError):
    """A video that is missing, cannot be decoded, or has no frames."""


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """Evenly spaced indices over [0, total-1], at most ``total`` of them."""
    return np.linspace(0, total - 1, min(total, num_frames)).astype(int)


def _av():
    try:
        import av
    except ImportError as exc:
        raise ImportError("reading videos needs PyAV: pip install 'topa-plugin[video]'") from exc
    return av


def _has_video_stream(path: str) -> bool:
    with _av().open(path) as container:
        return len(container.streams.video) > 0


def _read_with_pyav(path: str, num_frames: int) -> np.ndarray:
    """Decode all frames once and keep a uniform sample (streams often lack a frame count)."""
    with _av().open(path) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        return np.empty((0, 0, 0, 3), dtype=np.uint8)
    return np.stack([frames[i] for i in uniform_indices(len(frames), num_frames)])


def _read_with_lmms_eval(path: str, num_frames: int) -> np.ndarray | None:
    """lmms-eval's reader, or None when lmms-eval is not installed."""
    try:
        from lmms_eval.models.model_utils.load_video import read_video
    except ImportError:
        return None
    frames = read_video(path, num_frm=num_frames)
    if len(frames) > num_frames:  # its fallback path returns every frame
        frames = frames[uniform_indices(len(frames), num_frames)]
    return frames


def read_frames(path: str | Path, num_frames: int) -> np.ndarray:
    """Uniformly sample up to ``num_frames`` RGB frames: uint8 [N, H, W, 3].

    Raises VideoDecodeError naming the file if it is missing, undecodable or empty."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = str(path)
    if not Path(path).is_file():
        raise VideoDecodeError(f"{path}: video file not found")
    try:
        if not _has_video_stream(path):
            raise VideoDecodeError(f"{path}: no video stream")
        frames = _read_with_lmms_eval(path, num_frames)
        if frames is None:
            frames = _read_with_pyav(path, num_frames)
    except (ImportError, VideoDecodeError):
        raise
    except Exception as exc:  # decoders raise many unrelated types; all mean "cannot decode"
        raise VideoDecodeError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from exc
    if len(frames) == 0:
        raise VideoDecodeError(f"{path}: video has no decodable frames")
    return np.ascontiguousarray(frames, dtype=np.uint8)
