"""Uploaded videos: the size and duration limits a request must meet, and the folder uploads live in.

Gradio writes each upload under its temporary folder (``GRADIO_TEMP_DIR``) before any code of ours runs;
``upload_folder`` gives the server a folder of its own there, removed when the server stops, and Gradio's
``delete_cache`` removes uploads older than the retention while it runs. Frames and thumbnails of an
answer stay in memory (the explanation embeds them), so a request leaves no other file behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from topa_plugin.utils.errors import TopaInputError

MB = 1024 * 1024


class UploadError(TopaInputError, ValueError):
    """An upload the server refuses: missing, too large, too long or not a video; the message says which."""


@dataclass(frozen=True)
class UploadLimits:
    """What one request may send: ``max_bytes`` per file, ``max_duration_s`` of video."""

    max_bytes: int
    max_duration_s: float

    def check(self, path: str | os.PathLike | None) -> Path:
        """``path`` if it is within the limits; raises :class:`UploadError` naming the file otherwise."""
        if path is None:
            raise UploadError("no video: upload one or pick an example")
        path = Path(path)
        if not path.is_file():
            raise UploadError(f"{path.name}: the upload is no longer on the server (uploads are removed after a while); "
                              "upload it again")
        size = path.stat().st_size
        if size > self.max_bytes:
            raise UploadError(f"{path.name}: {size / MB:.1f} MB is over the server's limit of {self.max_bytes / MB:.0f} MB")
        duration = video_duration(path)
        if duration is not None and duration > self.max_duration_s:
            raise UploadError(f"{path.name}: {duration:.0f} s of video is over the server's limit of {self.max_duration_s:.0f} s")
        return path


def video_duration(path: Path) -> float | None:
    """Seconds of video the container declares (None when it declares none); a file PyAV cannot open as a
    video raises :class:`UploadError`. Reads the header only, so an oversized video is refused before decoding."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.video
            if not streams:
                raise UploadError(f"{path.name}: has no video stream")
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
            if stream.frames and stream.average_rate:
                return float(stream.frames / stream.average_rate)
            return None
    except av.error.FFmpegError as err:
        raise UploadError(f"{path.name}: not a video PyAV can read ({err.strerror or type(err).__name__})") from None


@contextlib.contextmanager
def upload_folder():
    """A fresh folder for this server's uploads, set as ``GRADIO_TEMP_DIR`` (under the caller's one, if set)
    while the server runs and removed afterwards with everything in it."""
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="topa-serve-", dir=parent)
    os.environ["GRADIO_TEMP_DIR"] = folder
    try:
        yield Path(folder)
    finally:
        if parent is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = parent
        shutil.rmtree(folder, ignore_errors=True)
