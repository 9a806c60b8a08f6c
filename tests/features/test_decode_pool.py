"""The decode pool: ordered results, a bounded window, failures that name the file and stop the workers."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from topa_plugin.demo.toy import write_toy_video
from topa_plugin.features.decode_pool import DecodePool, VideoJob, VideoJobError
from topa_plugin.features.video import read_frames


def crash(digest: str) -> bool:
    """A ``skip`` hook that kills its worker, as a decoder crash would."""
    os._exit(3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool_videos")
    return [write_toy_video(root / f"v{i}.mp4", n_frames=6 + 3 * i, seed=i) for i in range(5)]


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_order_with_hashes(videos, workers):
    with DecodePool(workers) as pool:
        results = list(pool.imap((VideoJob(str(v), 4, digest=True) for v in videos), ahead=2))
    assert [r.path for r in results] == [str(v) for v in videos]
    for result, path in zip(results, videos):
        assert np.array_equal(result.frames, read_frames(path, 4))
        assert result.digest is not None and len(result.digest) == 64
    assert not multiprocessing.active_children()


def test_jobs_are_taken_a_bounded_window_ahead(videos):
    taken = []

    def jobs():
        for v in videos:
            taken.append(v)
            yield VideoJob(str(v), 2)

    with DecodePool(2) as pool:
        results = pool.imap(jobs(), ahead=2)
        next(results)
        assert len(taken) <= 3  # two submitted ahead, one more asked for to find the window full
        results.close()
    assert not multiprocessing.active_children()


def test_failures_name_the_file_and_stop_the_workers(videos, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    with DecodePool(2) as pool, pytest.raises(VideoJobError, match=r"broken\.mp4: cannot decode") as failure:
        list(pool.imap((VideoJob(str(p), 4) for p in [videos[0], broken, videos[1]]), ahead=3))
    assert failure.value.path == str(broken)
    assert not multiprocessing.active_children()


def test_a_dead_worker_fails_instead_of_hanging(videos):
    with DecodePool(1) as pool, pytest.raises(VideoJobError, match=r"worker died .*v0\.mp4") as failure:
        list(pool.imap([VideoJob(str(videos[0]), 4, skip=crash)], ahead=1))
    assert failure.value.path == str(videos[0])
    assert not multiprocessing.active_children()


def test_ctrl_c_in_the_consumer_stops_the_workers(videos):
    """Workers ignore SIGINT; the parent's KeyboardInterrupt (here raised while it handles a
    result, as Ctrl-C would) terminates them."""
    with pytest.raises(KeyboardInterrupt), DecodePool(2) as pool:
        for _ in pool.imap((VideoJob(str(v), 2) for v in videos), ahead=4):
            assert len(multiprocessing.active_children()) == 2
            raise KeyboardInterrupt
    assert not multiprocessing.active_children()
