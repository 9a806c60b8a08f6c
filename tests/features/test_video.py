"""The exact seeking frame reader against a full decode, on the containers and codecs evaluations meet."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from topa_plugin.features import video
from topa_plugin.features.video import (
    VideoDecodeError,
    decode_frames,
    read_frames,
    uniform_indices,
)

av = pytest.importorskip("av")


def write_clip(path, n, codec="libx264", gop=12, bframes=0, vfr=False, faststart=False, size=(96, 64),
               open_gop=False):
    """A moving textured clip; ``vfr``: irregular frame durations (ms time base); ``open_gop``: key
    frames that B-frames before them in time reference across (decoded after them)."""
    rng = np.random.default_rng(len(str(path)) + n)
    width, height = size
    texture = np.kron(rng.integers(0, 256, (height // 4 + 40, width // 4 + 40, 3), dtype=np.uint8),
                      np.ones((4, 4, 1), np.uint8))
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if vfr:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}:open-gop={int(open_gop)}"
            stream.codec_context.options = {"x264-params": params, "preset": "veryfast"}
        else:
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "g": str(gop)}
        pts = 0
        for i in range(n):
            y, x = (i * 3) % 80, (i * 5) % 80
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[y:y + height, x:x + width]), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += (40, 10, 80, 33)[i % 4]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_leading_frames(src, dst, frames: int):
    """Remux with the first ``frames`` frames before time 0: the mp4 gets an edit list hiding
    them, so its frame count (stream.frames) lists more frames than a decoder outputs."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = source.streams.video[0]
        target = out.add_stream_from_template(stream)
        shift = frames * int(1 / (stream.average_rate * stream.time_base))
        for packet in source.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = target
            out.mux(packet)
    return dst


def full_decode(path, n):
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([frames[i] for i in uniform_indices(len(frames), n)]), len(frames)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    made = {
        "h264": write_clip(root / "h264.mp4", 120),
        "h264_bframes": write_clip(root / "h264_b.mp4", 120, bframes=3),
        "h264_open_gop": write_clip(root / "open_gop.mp4", 120, bframes=3, open_gop=True),
        "h264_gop250": write_clip(root / "gop250.mp4", 520, gop=250, bframes=3, size=(32, 32)),
        "vp9_webm": write_clip(root / "vp9.webm", 90, codec="libvpx-vp9"),
        "vp9_mkv": write_clip(root / "vp9.mkv", 90, codec="libvpx-vp9"),
        "vfr": write_clip(root / "vfr.mp4", 100, bframes=2, vfr=True),
        "one_frame": write_clip(root / "one.mp4", 1),
    }
    made["edit_list"] = cut_leading_frames(write_clip(root / "src.mp4", 60, bframes=2), root / "edit.mp4", 3)
    return made


@pytest.mark.parametrize("name", ["h264", "h264_bframes", "h264_open_gop", "h264_gop250", "vp9_webm", "vp9_mkv",
                                  "vfr", "edit_list", "one_frame"])
@pytest.mark.parametrize("n", [1, 10, 33])
def test_frames_equal_a_full_decode(clips, name, n):
    expected, total = full_decode(clips[name], n)
    frames, info = decode_frames(clips[name], n)
    assert frames.dtype == np.uint8 and frames.shape == expected.shape
    assert np.array_equal(frames, expected)
    assert info.method == "seek" and info.total_frames == total
    assert info.decoded <= info.floor  # the floor counts decoded-but-hidden edit-list frames too


@pytest.mark.parametrize("name", ["h264_bframes", "vfr", "edit_list"])
def test_each_frame_comes_with_its_index_and_time_in_the_full_decode(clips, name, monkeypatch):
    with av.open(str(clips[name])) as container:
        times = [frame.time for frame in container.decode(video=0)]
    picked = uniform_indices(len(times), 10).tolist()
    _, seek = decode_frames(clips[name], 10)
    assert seek.indices == picked and seek.times == pytest.approx([times[i] for i in picked])
    monkeypatch.setattr(video, "_spans", lambda *args: (_ for _ in ()).throw(video._NotExact("test")))
    _, full = decode_frames(clips[name], 10)
    assert full.method == "full" and (full.indices, full.times) == (seek.indices, seek.times)


def test_cost_follows_gop_not_length(clips):
    """10 frames of a GOP-12 clip decode a few GOPs; B-frames no later frame uses are skipped."""
    _, plain = decode_frames(clips["h264"], 10)
    assert plain.floor < plain.total_frames * 0.6
    _, bframes = decode_frames(clips["h264_bframes"], 10)
    assert bframes.decoded < bframes.floor


def test_frame_count_metadata_is_not_trusted(clips):
    with av.open(str(clips["edit_list"])) as container:
        listed = container.streams.video[0].frames
    with av.open(str(clips["vp9_webm"])) as container:
        assert container.streams.video[0].frames == 0  # webm: no count at all
    _, total = full_decode(clips["edit_list"], 1)
    assert listed == total + 3  # the wrong count the reader must not use
    assert decode_frames(clips["edit_list"], 10)[1].total_frames == total


def test_equals_lmms_eval_pyav_reader_where_its_count_is_right(clips):
    lmms_video = pytest.importorskip("lmms_eval.models.model_utils.load_video")
    for name in ("h264", "h264_bframes"):
        assert np.array_equal(read_frames(clips[name], 8), lmms_video.read_video(str(clips[name]), num_frm=8))


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_truncated_file_is_an_error(tmp_path, suffix):
    codec = "libx264" if suffix == ".mp4" else "libvpx-vp9"
    whole = write_clip(tmp_path / f"whole{suffix}", 60, codec=codec, faststart=True)
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(VideoDecodeError, match=rf"cut\{suffix}: .*(truncated|cut short)"):
        read_frames(cut, 8)


def test_unseekable_files_fall_back_to_a_full_decode_logged_once(clips, monkeypatch, caplog):
    def refuse(*args):
        raise video._NotExact("frames share timestamps")

    monkeypatch.setattr(video, "_spans", refuse)
    monkeypatch.setattr(video, "_logged_reasons", set())
    with caplog.at_level("WARNING", logger=video.__name__):
        for name in ("h264_bframes", "vp9_mkv"):
            frames, info = decode_frames(clips[name], 10)
            assert np.array_equal(frames, full_decode(clips[name], 10)[0])
            assert info.method == "full" and info.fallback == "frames share timestamps"
            read_frames(clips[name], 10)
    assert len([r for r in caplog.records if "frames share timestamps" in r.getMessage()]) == 1


def test_decode_backend_variable_selects_lmms_eval_reader(clips, monkeypatch):
    pytest.importorskip("lmms_eval")
    monkeypatch.setenv(video.BACKEND_ENV, "pyav")
    frames, info = decode_frames(clips["h264_bframes"], 10)
    assert info.method == "lmms-eval:pyav" and video.decoder_name() == "lmms-eval:pyav"
    assert np.array_equal(frames, full_decode(clips["h264_bframes"], 10)[0])
    monkeypatch.setenv(video.BACKEND_ENV, "nonsense")
    with pytest.raises(VideoDecodeError, match="nonsense"):
        decode_frames(clips["h264"], 4)
