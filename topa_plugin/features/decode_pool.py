"""Decode videos in worker processes, ahead of their consumer, in order and in bounded memory.

Evaluation and feature extraction read a few frames from each of thousands of videos; decoding
is the slow part and runs on the CPU while the model works, so worker processes (spawned: no
torch, no CUDA state in them) decode and hash the next videos while the caller encodes and scores
the current ones. Results come back in submission order; at most ``ahead`` videos are submitted
and not yet consumed, which bounds the frames held in memory. A job that fails raises in the
caller with the file named; a worker that dies, a failure and Ctrl-C all stop every worker.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from topa_plugin.features.video import (
    DecodeInfo,
    VideoDecodeError,
    decode_frames,
    log_fallback,
)
from topa_plugin.utils.hashing import file_sha256

MAX_DEFAULT_WORKERS = 8
_POLL_SECONDS = 0.5


def default_workers() -> int:
    """min(8, cores): decoding scales with cores; more processes only add memory."""
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


class VideoJobError(VideoDecodeError):
    """A job that failed; ``path`` names its video."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # crosses the process boundary with its path
        return VideoJobError, (self.path, str(self))


@dataclass
class VideoJob:
    """Read ``num_frames`` frames of ``path``; ``skip(digest)`` True means the caller already has its
    features (say, in a cache keyed by the content hash), so nothing is decoded."""

    path: str
    num_frames: int
    digest: bool = False
    skip: Callable[[str], bool] | None = None


@dataclass
class Decoded:
    """A job's result: frames uint8 [n, H, W, 3] (None when skipped), content sha256 if asked."""

    path: str
    frames: np.ndarray | None
    digest: str | None
    info: DecodeInfo | None


def run_job(job: VideoJob, threads: int = 0) -> Decoded:
    """Hash (if asked) and decode one video, in whichever process runs it; raises VideoJobError."""
    try:
        digest = file_sha256(job.path) if job.digest or job.skip else None
        if job.skip is not None and job.skip(digest):
            return Decoded(job.path, None, digest, None)
        frames, info = decode_frames(job.path, job.num_frames, threads=threads)
    except VideoDecodeError as exc:
        raise VideoJobError(job.path, str(exc)) from exc
    except OSError as exc:
        raise VideoJobError(job.path, f"{job.path}: cannot read video ({exc})") from exc
    return Decoded(job.path, frames, digest, info)


class DecodePool:
    """``imap(jobs)``: each job's ``Decoded``, in order, decoded by ``workers`` processes.

    ``workers=0`` decodes in the calling process (no processes, nothing ahead)."""

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"decode workers must be >= 0, got {workers}")
        cores = os.cpu_count() or 1
        # Threads per decoder: the cores left to each worker (0 in-process: FFmpeg's choice).
        self.threads = threads if threads is not None else (max(1, cores // self.workers) if self.workers else 0)
        self._processes: list = []
        self._tasks = self._results = None

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._tasks, self._results = context.Queue(), context.Queue()
        for _ in range(self.workers):
            process = context.Process(target=_worker, args=(self._tasks, self._results, self.threads), daemon=True)
            process.start()
            self._processes.append(process)

    def close(self) -> None:
        """Stop every worker now (queued jobs are dropped); safe to call twice."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join()
        self._processes = []
        for q in (self._tasks, self._results):
            if q is not None:
                q.cancel_join_thread()
                q.close()
        self._tasks = self._results = None

    def imap(self, jobs: Iterable[VideoJob], ahead: int | Callable[[], int],
             failures: bool = False) -> Iterator[Decoded | VideoJobError]:
        """Results in job order, with at most ``ahead`` (>= 1) jobs submitted and not yet yielded;
        a callable ``ahead`` is asked each time (a consumer holding results shrinks the window).
        A job that fails raises its ``VideoJobError``, or with ``failures`` is yielded in its place
        (``--skip-invalid``); a worker that dies always raises."""
        if self.workers == 0:
            for job in jobs:
                try:
                    result = run_job(job, self.threads)
                except VideoJobError as err:
                    if not failures:
                        raise
                    yield err
                    continue
                _log(result)
                yield result
            return
        jobs = iter(jobs)
        done: dict[int, tuple] = {}
        paths: dict[int, str] = {}
        submitted = consumed = 0
        try:
            while True:
                while submitted - consumed < max(1, ahead() if callable(ahead) else ahead):
                    job = next(jobs, None)
                    if job is None:
                        break
                    if not self._processes:
                        self._start()
                    paths[submitted] = job.path
                    self._tasks.put((submitted, job))
                    submitted += 1
                if consumed == submitted:
                    return
                while consumed not in done:
                    seq, ok, value = self._receive(paths)
                    done[seq] = (ok, value)
                ok, value = done.pop(consumed)
                del paths[consumed]
                consumed += 1
                if not ok:
                    if not failures:
                        raise value
                    yield value
                    continue
                _log(value)
                yield value
        except BaseException:
            self.close()
            raise

    def _receive(self, pending: dict[int, str]) -> tuple:
        """The next finished job; raises if a worker died instead of answering."""
        while True:
            try:
                return self._results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                dead = [p for p in self._processes if not p.is_alive()]
                if dead:
                    suspects = ", ".join(pending[s] for s in sorted(pending)[:self.workers])
                    raise VideoJobError(pending[min(pending)], f"a video decode worker died (exit code "
                                        f"{dead[0].exitcode}) while decoding one of: {suspects}") from None


def _log(result: Decoded) -> None:
    if result.info is not None:
        log_fallback(result.info, result.path)


def _worker(tasks, results, threads: int) -> None:
    """Worker loop: the parent handles Ctrl-C and stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        seq, job = tasks.get()
        try:
            results.put((seq, True, run_job(job, threads)))
        except Exception as exc:  # sent back and raised in the parent, which names the request
            if not isinstance(exc, VideoJobError):  # (only this type surely pickles)
                exc = VideoJobError(job.path, f"{job.path}: {type(exc).__name__}: {exc}")
            results.put((seq, False, exc))
