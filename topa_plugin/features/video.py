"""Read lmms-eval's uniform frame sample from a video: exactly, at the cost of a few GOPs.

The frames are those of a full decode at indices ``linspace(0, N-1, n).astype(int)`` (lmms-eval's
uniform sampling), N being the number of frames the decoder outputs. One demux pass (no decoding)
lists the packets; frame i is the i-th smallest timestamp among the packets the decoder keeps. For
each sampled frame the reader seeks to the key frame before it and decodes forward; frames that
no later frame references are skipped on the way (the decoder's non-reference skip), so cost grows
with frames x GOP length, not with the length of the video. Every frame the decoder outputs is
checked against the packet list; where seeking cannot be exact (no timestamps, duplicates, a frame
before any key frame, a seek that lands elsewhere) the reader decodes everything instead and
reports why. ``LMMS_VIDEO_DECODE_BACKEND`` set: lmms-eval's own reader with that backend, as before.
Every failure names the file; a truncated file is an error, never a shorter sample.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topa_plugin.utils.errors import TopaInputError

BACKEND_ENV = "LMMS_VIDEO_DECODE_BACKEND"
logger = logging.getLogger(__name__)
_logged_reasons: set[str] = set()


class VideoDecodeError(TopaInputError, RuntimeError):
    """A video that is missing, cannot be decoded, has no frames, or is truncated."""


class _NotExact(Exception):
    """Seeking cannot reproduce the full decode for this file; the message says why."""


@dataclass
class DecodeInfo:
    """How a sample was read: ``method`` seek | full | lmms-eval:<backend>; frame counts; fallback reason."""

    method: str
    total_frames: int = 0
    decoded: int = 0  # frames the decoder produced
    floor: int = 0  # frames from each sampled frame's key frame up to it, each once
    fallback: str | None = None
    indices: list[int] | None = None  # each returned frame's index in the full decode (None: lmms-eval's reader)
    times: list[float] | None = None  # each returned frame's presentation time in seconds


@dataclass
class _Packet:
    pts: int | None
    dts: int | None
    key: bool
    discard: bool  # decoded (it may be a reference) but not shown, e.g. cut by an mp4 edit list


def uniform_indices(total: int, num_frames: int) -> np.ndarray:
    """Evenly spaced indices over [0, total-1], at most ``total`` of them."""
    return np.linspace(0, total - 1, min(total, num_frames)).astype(int)


def _av():
    try:
        import av
    except ImportError as exc:
        raise ImportError("reading videos needs PyAV: pip install 'topa-plugin[video]'") from exc
    return av


def read_frames(path: str | Path, num_frames: int) -> np.ndarray:
    """Uniformly sampled RGB frames, uint8 [n, H, W, 3]; a fallback to full decoding is logged once.

    Args:
        path: a video file any FFmpeg build in PyAV reads (mp4, mkv, webm, ...).
        num_frames: frames to sample: indices ``linspace(0, N-1, num_frames)`` as lmms-eval does
            (all N frames when the video is shorter).

    Raises:
        VideoDecodeError: unreadable, truncated or frame-less video (naming the file).
    """
    frames, info = decode_frames(path, num_frames)
    log_fallback(info, path)
    return frames


def log_fallback(info: DecodeInfo, path) -> None:
    """Log a full-decode fallback once per reason in this process (the pool's parent logs for its workers)."""
    if info.fallback and info.fallback not in _logged_reasons:
        _logged_reasons.add(info.fallback)
        logger.warning("%s: decoding every frame (%s); other videos with this reason are not logged again",
                       path, info.fallback)


def decoder_name() -> str:
    """What makes the frames: ``exact`` (this reader) or ``lmms-eval:<backend>``; caches key on it."""
    backend = os.environ.get(BACKEND_ENV, "").strip()
    return f"lmms-eval:{backend}" if backend else "exact"


def decode_frames(path: str | Path, num_frames: int, threads: int = 0) -> tuple[np.ndarray, DecodeInfo]:
    """(frames, how they were read); ``threads``: decoder threads (0: FFmpeg picks). Raises
    VideoDecodeError naming the file."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = str(path)
    if not Path(path).is_file():
        raise VideoDecodeError(f"{path}: video file not found")
    decoder = decoder_name()
    try:
        if decoder != "exact":
            backend = decoder.removeprefix("lmms-eval:")
            frames, info = _read_with_lmms_eval(path, num_frames, backend), DecodeInfo(decoder)
        else:
            frames, info = _read_exact(path, num_frames, threads)
    except (ImportError, VideoDecodeError):
        raise
    except Exception as exc:  # decoders raise many unrelated types; all mean "cannot decode"
        raise VideoDecodeError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from exc
    if len(frames) == 0:
        raise VideoDecodeError(f"{path}: video has no decodable frames")
    return np.ascontiguousarray(frames, dtype=np.uint8), info


def _read_with_lmms_eval(path: str, num_frames: int, backend: str) -> np.ndarray:
    """lmms-eval's reader with the backend ``LMMS_VIDEO_DECODE_BACKEND`` names."""
    try:
        from lmms_eval.models.model_utils.load_video import read_video
    except ImportError as exc:
        raise ImportError(f"{BACKEND_ENV}={backend} selects lmms-eval's video reader, but lmms-eval is not "
                          "installed: pip install 'topa-plugin[eval]' or unset it") from exc
    frames = read_video(path, num_frm=num_frames, backend=backend)
    if len(frames) > num_frames:  # its fallback path returns every frame
        frames = frames[uniform_indices(len(frames), num_frames)]
    return frames


def _read_exact(path: str, num_frames: int, threads: int) -> tuple[np.ndarray, DecodeInfo]:
    av = _av()
    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        packets = _packet_list(av, container, path)
        shown = sorted((p.pts, i) for i, p in enumerate(packets) if not p.discard and p.pts is not None)
        if not shown:
            raise VideoDecodeError(f"{path}: video has no decodable frames")
        try:
            return _seek_and_decode(container, packets, shown, num_frames, threads)
        except _NotExact as reason:
            fallback = str(reason)
    frames, total, times = _full_decode(av, path, num_frames, len(shown), threads)
    indices = uniform_indices(total, num_frames).tolist()
    return frames, DecodeInfo("full", total, total, total, fallback, indices, times)


def _packet_list(av, container, path: str) -> list[_Packet]:
    """Every video packet in decode order (headers only, nothing decoded); truncation is an error."""
    stream = container.streams.video[0]
    packets = []
    with _ffmpeg_errors(av) as errors:
        for p in container.demux(stream):
            if p.size == 0:  # the demuxer's end-of-stream marker
                continue
            if p.is_corrupt:
                raise VideoDecodeError(f"{path}: packet {len(packets)} is truncated or corrupt (file cut short?)")
            packets.append(_Packet(p.pts, p.dts, p.is_keyframe, p.is_discard))
    if errors:
        raise VideoDecodeError(f"{path}: cannot read the whole file ({errors[0]}); truncated?")
    listed = stream.frames
    if listed and "mp4" in container.format.name and len(packets) < listed:
        raise VideoDecodeError(f"{path}: the file lists {listed} frames but holds {len(packets)}; truncated?")
    return packets


_LEVEL_LOCK = threading.Lock()


def _forward_ffmpeg_errors(av) -> None:
    """Once per process, let FFmpeg's error-level lines reach Python, where ``_ffmpeg_errors`` captures
    them per thread; the level is never lowered again. Setting PyAV's process-wide level back while another
    thread decodes breaks PyAV's log callback in that thread (a TypeError printed from inside FFmpeg), as
    two requests of ``topa serve`` decoding at once showed. Lines nobody captures go to the ``libav``
    logger, which prints nothing unless the application configures logging."""
    with _LEVEL_LOCK:
        level = av.logging.get_level()
        if level is None or level < av.logging.ERROR:
            logging.getLogger("libav").addHandler(logging.NullHandler())
            av.logging.set_level(av.logging.ERROR)


@contextmanager
def _ffmpeg_errors(av):
    """FFmpeg's error-level log lines of this thread while the block runs (how a demuxer reports a file
    that ends early)."""
    _forward_ffmpeg_errors(av)
    errors: list[str] = []
    with av.logging.Capture() as logs:  # this thread's lines only
        yield errors
    errors.extend(f"{name}: {message.strip()}" for lvl, name, message in logs if lvl <= av.logging.ERROR)


def _seek_and_decode(container, packets: list[_Packet], shown: list[tuple[int, int]],
                     num_frames: int, threads: int) -> tuple[np.ndarray, DecodeInfo]:
    """Decode each sampled frame from its key frame; raises _NotExact where that cannot be exact."""
    if len({pts for pts, _ in shown}) != len(shown):
        raise _NotExact("frames share timestamps")
    if any(p.pts is None and not p.discard for p in packets):
        raise _NotExact("packets without timestamps")
    targets = [shown[i][1] for i in uniform_indices(len(shown), num_frames)]
    spans = _spans(packets, targets)
    stream = container.streams.video[0]
    context = stream.codec_context
    context.thread_type = "AUTO"  # frame threads see each packet's skip_frame setting
    context.thread_count = threads
    got: dict[int, np.ndarray] = {}
    decoded = 0
    for key, last, wanted in spans:
        decoded += _decode_span(container, stream, context, packets, key, last, wanted, got)
    floor = sum(last - key + 1 for key, last, _ in spans)
    picked = uniform_indices(len(shown), num_frames).tolist()
    info = DecodeInfo("seek", len(shown), decoded, floor, indices=picked,
                      times=[float(shown[i][0] * stream.time_base) for i in picked])
    return np.stack([got[packets[d].pts] for d in targets]), info


def _spans(packets: list[_Packet], targets: list[int]) -> list[tuple[int, int, set[int]]]:
    """(key packet, last packet, wanted timestamps) per group of targets sharing a key frame, in order."""
    spans: list[list] = []
    for target in targets:
        key = target
        while key >= 0 and not (packets[key].key and packets[key].pts is not None
                                and packets[key].pts <= packets[target].pts):
            key -= 1
        if key < 0:
            raise _NotExact(f"frame at pts {packets[target].pts} comes before any key frame")
        if spans and key <= spans[-1][1]:  # same GOP, or one that starts before the last span ends
            spans[-1][0] = min(spans[-1][0], key)
            spans[-1][1] = max(spans[-1][1], target)
            spans[-1][2].add(packets[target].pts)
        else:
            spans.append([key, target, {packets[target].pts}])
    return [(key, last, wanted) for key, last, wanted in spans]


def _decode_span(container, stream, context, packets, key: int, last: int, wanted: set[int], got: dict) -> int:
    """Feed packets key..last to a flushed decoder, keep the wanted frames; returns frames decoded."""
    container.seek(packets[key].pts, stream=stream, backward=True, any_frame=False)
    context.flush_buffers()
    first = packets[key]
    expected = {p.pts for p in packets[key:last + 1] if not p.discard and p.pts >= first.pts}
    position = None
    decoded = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if position is None:
            if (packet.pts, packet.dts) != (first.pts, first.dts):
                if packet.dts is not None and first.dts is not None and packet.dts > first.dts:
                    raise _NotExact("seeking lands after the key frame")
                continue
            position = key
        context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        decoded += _keep(context.decode(packet), first.pts, expected, wanted, got)
        if position == last:
            break
        position += 1
    context.skip_frame = "DEFAULT"
    decoded += _keep(context.decode(None), first.pts, expected, wanted, got)
    missing = wanted - got.keys()
    if position is None or missing:
        raise _NotExact(f"the decoder did not return the frames at pts {sorted(missing)} after seeking")
    return decoded


def _keep(frames, first_pts: int, expected: set[int], wanted: set[int], got: dict) -> int:
    """Store the wanted frames as RGB; every frame must be one the packet list predicts."""
    count = 0
    for frame in frames:
        if frame.pts < first_pts:  # a leading frame of an open GOP: not ours to check or keep
            count += 1
            continue
        if frame.pts not in expected:
            raise _NotExact(f"the decoder returned an unlisted frame (pts {frame.pts}) after seeking")
        if frame.pts in wanted:
            got[frame.pts] = frame.to_ndarray(format="rgb24")
        count += 1
    return count


def _full_decode(av, path: str, num_frames: int, predicted: int, threads: int) -> tuple[np.ndarray, int, list]:
    """Decode every frame and keep the sampled ones as RGB; returns (frames, frame count, their times).

    Frames are picked while decoding for the count the packet list predicts (a few frames in
    memory, not the whole video); if the decoder outputs another count, a second pass picks again."""
    frames, total, times = _decode_picking(av, path, num_frames, predicted, threads)
    if total != predicted:
        frames, total, times = _decode_picking(av, path, num_frames, total, threads)
    return frames, total, times


def _decode_picking(av, path: str, num_frames: int, total: int, threads: int) -> tuple[np.ndarray, int, list]:
    wanted = set(uniform_indices(total, num_frames).tolist()) if total > 0 else set()
    kept, times, count = [], [], 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        for frame in container.decode(stream):
            if count in wanted:
                kept.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else None)
            count += 1
    return (np.stack(kept) if kept else np.empty((0, 0, 0, 3), np.uint8)), count, times
