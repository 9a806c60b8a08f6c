"""Upload limits (size, duration, not a video) and the server's own upload folder."""

from __future__ import annotations

import os

import pytest

from tests.helpers.lmms_fixtures import write_garbage_video
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.serve.uploads import MB, UploadError, UploadLimits, upload_folder, video_duration

LIMITS = UploadLimits(max_bytes=MB, max_duration_s=5)


def test_a_video_within_the_limits_passes(tmp_path):
    video = write_toy_video(tmp_path / "ok.mp4", n_frames=24, fps=8)
    assert video_duration(video) == pytest.approx(3.0)
    assert LIMITS.check(str(video)) == video


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no video: upload one or pick an example"),
    (lambda d: d / "gone.mp4", "gone.mp4: the upload is no longer on the server"),
    (lambda d: write_toy_video(d / "long.mp4", n_frames=48, fps=8), "long.mp4: 6 s of video is over the server's limit of 5 s"),
    (lambda d: write_garbage_video(d / "junk.mp4"), "junk.mp4: not a video PyAV can read"),
])
def test_refusals_name_the_file_and_the_limit(tmp_path, make, message):
    with pytest.raises(UploadError) as refused:
        LIMITS.check(make(tmp_path))
    assert str(refused.value).startswith(message)
    assert str(tmp_path) not in str(refused.value)  # the server's folders stay out of messages


def test_size_is_checked_before_the_file_is_opened(tmp_path):
    big = tmp_path / "big.mp4"
    big.write_bytes(bytes(MB + 1))
    with pytest.raises(UploadError, match=r"big.mp4: 1.0 MB is over the server's limit of 1 MB"):
        LIMITS.check(big)


def test_a_file_without_a_video_stream_is_refused(tmp_path):
    import av
    import numpy as np

    path = tmp_path / "sound.m4a"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(UploadError, match="sound.m4a: has no video stream"):
        LIMITS.check(path)


def test_upload_folder_is_gradios_temp_dir_while_open_and_removed_after(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "parent"))
    with upload_folder() as folder:
        assert os.environ["GRADIO_TEMP_DIR"] == str(folder)
        assert folder.parent == tmp_path / "parent"
        (folder / "abc").mkdir()
        (folder / "abc" / "clip.mp4").write_bytes(b"x")
    assert not folder.exists()
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "parent")


def test_upload_folder_without_a_parent_restores_an_unset_variable(monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    with upload_folder() as folder:
        assert folder.name.startswith("topa-serve-")
    assert "GRADIO_TEMP_DIR" not in os.environ and not folder.exists()
