"""Memory bank building (de-duplicated, normalised, sampled) and the `topa memory` commands."""
import pickle

import pytest
import torch

from tests.helpers.release_fixtures import write_malicious_memory
from topa_plugin.cli import main
from topa_plugin.features.memory import build_memory, load_memory
from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.features.transforms import l2_normalize
from topa_plugin.features.writer import write_sharded


def make_store(path, tensors: dict, shard_size=2):
    write_sharded(path, {"kind": "test", "encoder": "test", "dim": 16}, list(tensors), list(tensors),
                  lambda keys: {k: tensors[k] for k in keys}, shard_size, dtype="float32")
    return FeatureStore(path)


@pytest.fixture
def store(tmp_path):
    """12 distinct directions, unnormalised, repeated within and across records."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 16, generator=g)
    tensors = {
        "a": torch.cat([base[:4], 2 * base[:2]]),   # exact scaled copies normalise to duplicates
        "b": base[4:9],
        "c": torch.cat([base[9:12], base[0:1]]),    # duplicate of a's first frame
        "d": 0.5 * base[4:6],
    }
    return make_store(tmp_path / "store", tensors), l2_normalize(base).half()


def _as_set(rows):
    return {tuple(r.tolist()) for r in rows}


def test_all_distinct_frames_normalised(store):
    store, distinct = store
    memory, stats = build_memory(store)
    assert stats == {"records": 4, "frames": 17, "unique": 12, "rows": 12,
                     "kept": [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13]}  # frame numbers in store order
    assert memory.dtype == torch.float16
    assert torch.equal(memory, distinct)  # store order, first occurrences
    assert torch.allclose(memory.float().norm(dim=1), torch.ones(12), atol=1e-3)


def test_uniform_sample_is_seeded_and_distinct(store):
    store, distinct = store
    a, stats = build_memory(store, size=5, seed=1)
    assert a.shape == (5, 16) and stats["rows"] == 5
    assert len(_as_set(a)) == 5 and _as_set(a) <= _as_set(distinct)
    assert torch.equal(build_memory(store, size=5, seed=1)[0], a)
    assert any(not torch.equal(build_memory(store, size=5, seed=s)[0], a) for s in range(2, 6))
    assert build_memory(store, size=50)[0].shape == (12, 16)


def test_zero_frames_are_refused(tmp_path):
    bad = make_store(tmp_path / "bad", {"x": torch.ones(2, 16), "y": torch.cat([torch.ones(1, 16), torch.zeros(1, 16)])})
    with pytest.raises(FeatureError, match=r"record 'y': frame\(s\) \[1\] are zero"):
        build_memory(bad)


def test_memory_build_command(store, tmp_path, capsys):
    store, distinct = store
    out = tmp_path / "memory.safetensors"
    assert main(["memory", "build", "--features", str(store.directory), "--all", "--out", str(out)]) == 0
    assert torch.equal(load_memory(out), distinct)
    assert "17 frames, 12 distinct" in capsys.readouterr().out
    assert main(["memory", "build", "--features", str(store.directory), "--size", "3", "--seed", "4",
                 "--out", str(out)]) == 0
    assert torch.equal(load_memory(out), build_memory(store, size=3, seed=4)[0])
    assert main(["memory", "build", "--features", str(tmp_path / "none"), "--all", "--out", str(out)]) == 2
    assert "none/index.json" in capsys.readouterr().err


def test_memory_import_command(tmp_path, capsys):
    rows = torch.randn(30, 16).half()
    with open(tmp_path / "memory.pkl", "wb") as f:
        pickle.dump(rows, f)
    out = tmp_path / "memory.safetensors"
    assert main(["memory", "import", "--pkl", str(tmp_path / "memory.pkl"), "--limit", "20", "--out", str(out)]) == 0
    assert torch.equal(load_memory(out), rows[:20])
    marker = tmp_path / "ran"
    write_malicious_memory(tmp_path / "evil.pkl", marker)
    assert main(["memory", "import", "--pkl", str(tmp_path / "evil.pkl"), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "evil.pkl" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_image_feature_stores_need_an_explicit_flag(tmp_path, capsys):
    tensors = {f"v{i}": torch.randn(3, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    path = tmp_path / "videos"
    write_sharded(path, {"kind": "videos", "encoder": "test", "dim": 16, "frames": 3}, list(tensors), list(tensors),
                  lambda keys: {k: tensors[k] for k in keys}, 2, dtype="float32")
    with pytest.raises(FeatureError, match="image features of videos"):
        build_memory(FeatureStore(path))
    args = ["memory", "build", "--features", str(path), "--all", "--out", str(tmp_path / "m.safetensors")]
    assert main(args) == 2
    assert "--allow-image-features" in capsys.readouterr().err
    assert main([*args, "--allow-image-features"]) == 0
    assert load_memory(tmp_path / "m.safetensors").shape == (12, 16)


def test_shard_runs_give_the_bank_of_record_by_record_reading(store, tmp_path):
    """Reading a shard at a time is an implementation detail: rows and order equal per-record reading."""
    store, _ = store
    memory, _ = build_memory(store)
    rows = torch.cat([l2_normalize(store.get(idx)).half() for idx in store.ids()])
    seen, expected = set(), []
    for row in rows:
        key = tuple(row.tolist())
        if key not in seen:
            seen.add(key)
            expected.append(row)
    assert torch.equal(memory, torch.stack(expected))
