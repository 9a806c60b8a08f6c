"""Feature extraction: TextVid captions, real videos, release import; resume after a crash."""
import contextlib
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.helpers.release_fixtures import write_malicious_memory
from topa_plugin.cli import main
from topa_plugin.demo.toy import write_toy_video
from topa_plugin.features.clip import load_clip
from topa_plugin.features.extract import (
    extract_textvid,
    extract_videos,
    fuse_frames,
    import_release,
    video_features,
)
from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.features.transforms import l2_normalize
from topa_plugin.features.video import VideoDecodeError, read_frames
from topa_plugin.features.writer import CRASH_ENV
from topa_plugin.textvid import read_textvid, sample_path, write_jsonl
from topa_plugin.utils.safeload import UnsafePickleError

SHARD = 16


@pytest.fixture(scope="module")
def encoder(toy_clip):
    return load_clip(str(toy_clip[0]), str(toy_clip[1]))


@contextlib.contextmanager
def one_thread():
    """Bitwise comparisons with a subprocess need the same thread count (OMP_NUM_THREADS=1 there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sample_store(encoder, tmp_path_factory):
    """The bundled sample extracted in-process, uninterrupted."""
    out = tmp_path_factory.mktemp("features") / "sample"
    with one_thread():
        extract_textvid(sample_path(), out, encoder, batch_size=32, shard_size=SHARD)
    return out


def test_fuse_frames_is_the_release_rule():
    rows = torch.randn(7, 5) * torch.rand(7, 1) * 10
    counts = [2, 1, 4]
    expected, start = [], 0
    for n in counts:
        unit = rows[start:start + n] / rows[start:start + n].norm(dim=-1, keepdim=True)
        mean = unit.mean(0)
        expected.append(mean / mean.norm())
        start += n
    torch.testing.assert_close(fuse_frames(rows, counts), torch.stack(expected))
    with pytest.raises(ValueError, match="7 caption rows"):
        fuse_frames(rows, [2, 2])


def test_sample_features_equal_a_direct_computation(sample_store, encoder):
    records = read_textvid(sample_path())
    store = FeatureStore(sample_store)
    assert store.ids() == [r.idx for r in records] and len(store) == len(records)
    assert store.encoder == encoder.identity and store.dim == 768
    index = json.loads((sample_store / "index.json").read_text())
    assert len(index["shards"]) == (len(records) + SHARD - 1) // SHARD
    assert index["shard"] == [i // SHARD for i in range(len(records))]
    for r in records:
        expected = []
        for captions in r.captions_per_frame:
            mean = l2_normalize(encoder.encode_text(captions)).mean(0)
            expected.append(mean / mean.norm())
        got = store.get(r.idx)
        assert got.dtype == torch.float32 and store.n_frames[store.position(r.idx)] == len(r.frames)
        torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=2e-3)  # stored as fp16
    with pytest.raises(KeyError, match="no features for record 'nope'"):
        store.get("nope")


def test_fusing_gathered_rows_in_blocks_equals_fusing_all_rows(monkeypatch):
    """Repeated captions share one encoded row; gathering them a block at a time gives the same frames."""
    from topa_plugin.features import extract

    unique = torch.randn(5, 8)
    index = torch.tensor([0, 3, 3, 1, 4, 0, 2, 2, 1])
    counts = [2, 3, 1, 3]
    expected = fuse_frames(unique[index], counts)
    monkeypatch.setattr(extract, "FUSE_ROWS", 2)  # frames cut across blocks
    assert torch.equal(fuse_frames(unique, counts, index), expected)
    with pytest.raises(ValueError, match="9 caption rows"):
        fuse_frames(unique, [4, 4], index)


def test_killed_extraction_resumes_to_identical_shards(sample_store, toy_clip, tmp_path):
    out = tmp_path / "resumed"
    args = ["features", "textvid", "--textvid", str(sample_path()), "--out", str(out),
            "--clip-model", str(toy_clip[0]), "--clip-pretrained", str(toy_clip[1]),
            "--batch-size", "32", "--shard-size", str(SHARD), "--device", "cpu"]
    crashed = subprocess.run([sys.executable, "-m", "topa_plugin.cli", *args], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", CRASH_ENV: "1"}, timeout=300, check=False)
    assert crashed.returncode == 75, crashed.stderr
    # one finished shard (logged after the header), one half-written shard under a temp name, no index yet
    progress = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert len(progress) == 2 and "header" in progress[0]
    assert [p.name for p in out.glob("shard-*.safetensors")] == [progress[1]["name"]]
    assert len(list(out.glob("shard-*.safetensors.tmp"))) == 1
    assert not (out / "index.json").exists()
    with pytest.raises(FeatureError, match="incomplete"):
        FeatureStore(out)

    with one_thread():
        assert main(args) == 0
    expected = sorted(p.name for p in sample_store.iterdir())
    assert sorted(p.name for p in out.iterdir()) == expected  # no temp or progress files left
    for name in expected:
        assert (out / name).read_bytes() == (sample_store / name).read_bytes(), name


def test_rerun_is_a_no_op_and_other_settings_are_refused(sample_store, encoder, tmp_path, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in sample_store.iterdir()}
    extract_textvid(sample_path(), sample_store, encoder, batch_size=32, shard_size=SHARD)
    extract_textvid(sample_path(), sample_store, encoder, batch_size=32, shard_size=8)  # shards are keyed by content
    assert capsys.readouterr().out.count("already complete (60 entries)") == 2
    assert {p.name: p.stat().st_mtime_ns for p in sample_store.iterdir()} == before
    with pytest.raises(FeatureError, match=r"index\.json.*dtype: 'float16' there, 'float32' now"):
        extract_textvid(sample_path(), sample_store, encoder, batch_size=32, shard_size=SHARD, dtype="float32")


# ---------------------------------------------------------------- release import

@pytest.fixture
def release(tmp_path):
    """A few sample records with release-style per-caption feature pickles (tensor and numpy)."""
    records = read_textvid(sample_path())[:5]
    textvid = write_jsonl(tmp_path / "textvid.jsonl", records)
    features = tmp_path / "features"
    features.mkdir()
    g = torch.Generator().manual_seed(0)
    rows = {}
    for i, r in enumerate(records):
        rows[r.idx] = torch.randn(sum(len(f) for f in r.frames), 768, generator=g).half()
        with open(features / f"{r.idx}.pkl", "wb") as f:
            pickle.dump(rows[r.idx] if i % 2 else rows[r.idx].numpy(), f)
    return records, textvid, features, rows


def test_release_import_fuses_per_frame(release, tmp_path):
    records, textvid, features, rows = release
    store = FeatureStore(import_release(textvid, features, tmp_path / "out", shard_size=2).parent)
    assert store.encoder == "ViT-L-14|openai"
    for r in records:
        expected = fuse_frames(rows[r.idx].float(), [len(f) for f in r.frames])
        torch.testing.assert_close(store.get(r.idx), expected, rtol=0, atol=2e-3)


def test_release_import_refuses_a_malicious_pickle(release, tmp_path):
    records, textvid, features, _ = release
    marker = tmp_path / "ran"
    write_malicious_memory(features / f"{records[3].idx}.pkl", marker)
    with pytest.raises(UnsafePickleError, match=f"{records[3].idx}.pkl"):
        import_release(textvid, features, tmp_path / "out", shard_size=2)
    assert not marker.exists()
    assert not (tmp_path / "out" / "index.json").exists()


def test_release_import_names_bad_and_missing_files(release, tmp_path):
    records, textvid, features, _ = release
    with open(features / f"{records[1].idx}.pkl", "wb") as f:
        pickle.dump(torch.zeros(2, 768), f)
    with pytest.raises(FeatureError, match=rf"{records[1].idx}\.pkl: record '{records[1].idx}': field 'frames'"):
        import_release(textvid, features, tmp_path / "out")
    (features / f"{records[2].idx}.pkl").unlink()
    (features / f"{records[4].idx}.pkl").unlink()
    with pytest.raises(FeatureError, match="2 release feature file") as info:
        import_release(textvid, features, tmp_path / "out2")
    assert records[2].idx in str(info.value) and records[4].idx in str(info.value)


# ---------------------------------------------------------------- videos

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_toy_video(root / "long.mp4", n_frames=24, seed=1)
    write_toy_video(root / "mid.mp4", n_frames=12, seed=2)
    write_toy_video(root / "short.mp4", n_frames=5, seed=3)
    return root


def test_read_frames_samples_uniformly(videos):
    import av

    with av.open(str(videos / "long.mp4")) as c:
        every = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    frames = read_frames(videos / "long.mp4", 8)
    assert frames.dtype == np.uint8 and frames.shape == (8, 64, 64, 3)
    assert np.array_equal(frames, every[np.linspace(0, 23, 8).astype(int)])
    assert read_frames(videos / "short.mp4", 8).shape[0] == 5


def test_unreadable_videos_are_named(tmp_path):
    import av

    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 50)
    container = av.open(str(tmp_path / "empty.mp4"), "w")  # an mp4 that never received a frame
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    for name, message in [("garbage.mp4", "cannot decode"), ("empty.mp4", "no video stream"),
                          ("missing.mp4", "video file not found")]:
        with pytest.raises(VideoDecodeError, match=rf"{name}: {message}"):
            read_frames(tmp_path / name, 4)


def test_video_features(videos, encoder, tmp_path):
    store = FeatureStore(extract_videos(videos, tmp_path / "out", encoder, num_frames=8, shard_size=2).parent)
    assert store.ids() == ["long", "mid", "short"]
    for stem, n in [("long", 8), ("mid", 8), ("short", 5)]:
        expected = l2_normalize(encoder.encode_images(read_frames(videos / f"{stem}.mp4", 8)))
        got = store.get(stem)
        assert got.shape == (n, 768)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)


def test_video_lists(videos, encoder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{videos / 'short.mp4'}\n\n{os.path.relpath(videos / 'mid.mp4', tmp_path)}\n")
    store = FeatureStore(extract_videos(listing, tmp_path / "out", encoder, num_frames=4).parent)
    assert store.ids() == ["short", "mid"]
    listing.write_text(f"{videos / 'short.mp4'}\nnowhere/clip.mp4\n")
    with pytest.raises(FeatureError, match=r"(?s)list\.txt: 1 listed video.*line 2: .*nowhere/clip\.mp4"):
        extract_videos(listing, tmp_path / "out2", encoder, num_frames=4)
    (tmp_path / "copy").mkdir()
    write_toy_video(tmp_path / "copy" / "short.mp4", n_frames=4)
    listing.write_text(f"{videos / 'short.mp4'}\n{tmp_path / 'copy' / 'short.mp4'}\n")
    with pytest.raises(FeatureError, match="share the id 'short'"):
        extract_videos(listing, tmp_path / "out3", encoder, num_frames=4)


def test_video_features_decode_a_bounded_window(videos, encoder, monkeypatch):
    """A shard's videos are decoded a few at a time, not all before encoding (memory), and the
    result equals encoding every frame in one call, whatever the number of decoding processes."""
    from topa_plugin.features import decode_pool

    paths = [videos / f"{stem}.mp4" for stem in ("long", "mid", "short")]
    decoded_frames = []
    held = []
    real_decode, real_encode = decode_pool.decode_frames, encoder.encode_images

    def decode(path, n, threads=0):
        decoded_frames.append(path)
        return real_decode(path, n, threads)

    def encode(images, batch_size):
        held.append(len(decoded_frames))
        return real_encode(images, batch_size=batch_size)

    monkeypatch.setattr(decode_pool, "decode_frames", decode)
    monkeypatch.setattr(encoder, "encode_images", encode)
    got = video_features(encoder, paths, 8, batch_size=4, workers=0)
    assert held[0] <= 2  # the first batch is encoded while at most one more video is decoded
    frames = np.concatenate([read_frames(p, 8) for p in paths])
    whole = l2_normalize(real_encode(frames, batch_size=4)).split([8, 8, 5])
    for (stem, tensor), expected in zip(got.items(), whole):
        assert torch.equal(tensor, expected), stem
    again = video_features(encoder, paths, 8, batch_size=4, workers=3)
    assert all(torch.equal(again[k], got[k]) for k in got)


# ---------------------------------------------------------------- skip and report

def clip_args(toy_clip) -> list[str]:
    return ["--clip-model", str(toy_clip[0]), "--clip-pretrained", str(toy_clip[1]), "--device", "cpu",
            "--batch-size", "32", "--shard-size", str(SHARD)]


@pytest.fixture
def two_bad_records(tmp_path):
    """The sample with record 3's answer broken and record 9 repeating record 0's id."""
    lines = sample_path().read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[3])
    bad["QAs"][0]["answer"] = "F"
    lines[3] = json.dumps(bad)
    dup = json.loads(lines[9])
    dup["idx"] = json.loads(lines[0])["idx"]
    lines[9] = json.dumps(dup)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, dup["idx"]


def test_invalid_records_stop_extraction_before_clip_loads(two_bad_records, tmp_path, capsys):
    path, _ = two_bad_records
    args = ["features", "textvid", "--textvid", str(path), "--out", str(tmp_path / "out"),
            "--clip-model", str(tmp_path / "no-such-clip.json"), "--clip-pretrained", str(tmp_path / "none")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "record 3" in err and "QAs[0].answer" in err and "record 9" in err and "duplicate id" in err
    assert "no-such-clip" not in err and not (tmp_path / "out").exists()


def test_skip_invalid_leaves_records_out_and_lists_them(two_bad_records, toy_clip, sample_store, tmp_path, capsys):
    path, dup_id = two_bad_records
    out = tmp_path / "out"
    with one_thread():
        assert main(["features", "textvid", "--textvid", str(path), "--out", str(out), *clip_args(toy_clip),
                     "--skip-invalid"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"wrote {out / 'index.json'}: 58 entries in 4 shard(s); 2 left out, listed in {out}.rejects.jsonl"
    rejects = [json.loads(line) for line in (tmp_path / "out.rejects.jsonl").read_text().splitlines()]
    assert [(r["record"], r["line"], r["id"]) for r in rejects] == [(3, 4, rejects[0]["id"]), (9, 10, dup_id)]
    assert "QAs[0].answer" in rejects[0]["problems"][0] and "duplicate id" in rejects[1]["problems"][0]
    store, reference = FeatureStore(out), FeatureStore(sample_store)
    records = read_textvid(sample_path())
    assert store.ids() == [r.idx for i, r in enumerate(records) if i not in (3, 9)]
    for idx in store.ids():  # the same features as extracting the valid file
        assert torch.equal(store.get(idx), reference.get(idx))


def test_a_renamed_identical_file_is_the_same_extraction(sample_store, encoder, tmp_path, capsys):
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_bytes(sample_path().read_bytes())
    before = {p.name: p.stat().st_mtime_ns for p in sample_store.iterdir()}
    extract_textvid(renamed, sample_store, encoder, batch_size=32, shard_size=SHARD)
    assert "already complete" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in sample_store.iterdir()} == before


def test_undecodable_videos_stop_or_are_skipped_and_listed(videos, encoder, toy_clip, tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("long.mp4", "short.mp4"):
        (folder / name).write_bytes((videos / name).read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video" * 50)
    out = tmp_path / "out"
    args = ["features", "videos", "--videos", str(folder), "--out", str(out), "--frames", "4", *clip_args(toy_clip)]
    assert main(args) == 2
    assert "broken.mp4: cannot decode" in capsys.readouterr().err
    assert main([*args, "--skip-invalid"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"2 entries in 1 shard(s); 1 left out, listed in {out}.rejects.jsonl")
    reject = json.loads((tmp_path / "out.rejects.jsonl").read_text())
    assert reject["id"] == "broken" and "broken.mp4: cannot decode" in reject["reason"]
    assert FeatureStore(out).ids() == ["long", "short"]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (folder / "broken.mp4").unlink()  # removing the bad video keeps every finished shard
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == {
        k: v for k, v in before.items() if k.startswith("shard-")}
    assert FeatureStore(out).ids() == ["long", "short"] and not (tmp_path / "out.rejects.jsonl").exists()
