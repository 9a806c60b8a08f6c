"""The sharded writer: content-keyed shards, a linear progress log, verified resume, rejects."""

from __future__ import annotations

import json

import pytest
import torch

from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.features.writer import rejects_path, store_summary, write_sharded

HEADER = {"kind": "test", "encoder": "random", "dim": 4}


def tensor(key: str) -> torch.Tensor:
    return torch.full((int(key[1:]) % 3 + 1, 4), float(int(key[1:]) + 1))  # never zero: stores refuse zero frames


class Compute:
    """Features of keys, counting the items it was asked for; ``fail_after`` shards interrupts a run."""

    def __init__(self, fail_after: int | None = None, left_out: dict | None = None, drop: tuple = ()):
        self.calls, self.fail_after, self.left_out, self.drop = [], fail_after, left_out, drop

    def __call__(self, keys):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(list(keys))
        out = {}
        for k in keys:
            if k in self.drop:
                if self.left_out is not None:
                    self.left_out[k] = f"{k} cannot be read"
            else:
                out[k] = tensor(k)
        return out


def write(out, keys, compute, shard_size=10, **kwargs):
    return write_sharded(out, HEADER, keys, keys, compute, shard_size, dtype="float32", **kwargs)


def shard_times(out) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}


KEYS = [f"k{i}" for i in range(100)]


def test_interrupted_run_logs_one_line_per_finished_shard_and_resumes(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        write(out, KEYS, Compute(fail_after=3))
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert "header" in lines[0] and [len(entry["records"]) for entry in lines[1:]] == [10, 10, 10]
    finished = shard_times(out)
    compute = Compute()
    write(out, KEYS, compute)
    assert [len(c) for c in compute.calls] == [10] * 7  # only the unfinished shards
    assert all(shard_times(out)[name] == t for name, t in finished.items())
    store = FeatureStore(out)
    assert store.ids() == KEYS and not (out / "progress.jsonl").exists()
    for k in KEYS:
        torch.testing.assert_close(store.get(k), tensor(k))


def test_removed_records_keep_every_finished_shard(tmp_path):
    out = tmp_path / "store"
    write(out, KEYS, Compute())
    before = shard_times(out)
    kept = [k for k in KEYS if k not in ("k5", "k55")]
    compute = Compute()
    write(out, kept, compute)
    assert compute.calls == [] and shard_times(out) == before
    store = FeatureStore(out)
    assert store.ids() == kept and "k5" not in store
    compute = Compute()
    write(out, [*kept, "k100"], compute, shard_size=7)  # an addition is computed alone
    assert compute.calls == [["k100"]] and FeatureStore(out).ids() == [*kept, "k100"]


def test_changed_content_is_recomputed(tmp_path):
    out = tmp_path / "store"
    write(out, KEYS[:20], Compute())
    compute = Compute()
    digests = list(KEYS[:20])
    digests[13] = "new content"
    write_sharded(out, HEADER, KEYS[:20], KEYS[:20], compute, 10, dtype="float32", digests=digests)
    assert compute.calls == [["k13"]]
    assert json.loads((out / "index.json").read_text())["digests"][13] == "new content"


def test_corrupt_or_missing_shard_is_named_and_rewritten(tmp_path, capsys):
    out = tmp_path / "store"
    write(out, KEYS[:30], Compute())
    victim = sorted(out.glob("shard-*"))[1]
    original = victim.read_bytes()
    victim.write_bytes(original[:-4] + b"\0\0\0\0")  # same size, other bytes
    store = FeatureStore(out)
    key = next(k for k in KEYS[:30] if store.shards[store._shard_of[store.position(k)]]["name"] == victim.name)
    with pytest.raises(FeatureError, match=rf"{victim.name}: shard corrupt \(its sha256"):
        store.get(key)
    write(out, KEYS[:30], Compute())
    assert "rewriting it" in capsys.readouterr().out and victim.read_bytes() == original
    victim.unlink()
    with pytest.raises(FeatureError, match=rf"{victim.name}: shard missing"):
        FeatureStore(out)
    victim.write_bytes(original[:100])
    with pytest.raises(FeatureError, match=rf"{victim.name}: shard corrupt \(100 bytes"):
        FeatureStore(out)
    compute = Compute()
    write(out, KEYS[:30], compute)
    assert [len(c) for c in compute.calls] == [10] and victim.read_bytes() == original


def test_left_out_records_are_listed_with_the_callers_rejects(tmp_path):
    out = tmp_path / "store"
    left_out: dict = {}
    prior = [{"source": "data.json", "record": 7, "id": "x", "problems": ["bad"]}]
    write(out, KEYS[:20], Compute(left_out=left_out, drop=("k3",)), left_out=left_out, rejected=prior)
    assert "k3" not in FeatureStore(out) and len(FeatureStore(out)) == 19
    lines = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert lines == [*prior, {"id": "k3", "reason": "k3 cannot be read"}]
    assert store_summary(out / "index.json") == f"19 entries in 2 shard(s); 2 left out, listed in {rejects_path(out)}"
    compute = Compute()
    write(out, KEYS[:20], compute, left_out={})  # the rejected record counts as done
    assert compute.calls == [] and rejects_path(out).is_file()
    write(out, [k for k in KEYS[:20] if k != "k3"], Compute())  # removed from the source: nothing left out
    assert not rejects_path(out).exists()


def test_compute_may_not_drop_keys_silently(tmp_path):
    with pytest.raises(FeatureError, match="computed keys differ"):
        write(tmp_path / "store", KEYS[:5], Compute(drop=("k2",)))


def test_other_settings_and_old_indexes_are_refused(tmp_path):
    out = tmp_path / "store"
    write(out, KEYS[:5], Compute())
    with pytest.raises(FeatureError, match=r"dim: 4 there, 8 now"):
        write_sharded(out, {**HEADER, "dim": 8}, KEYS[:5], KEYS[:5], Compute(), 10)
    (out / "index.json").write_text('{"version": 1, "records": {}}')
    with pytest.raises(FeatureError, match=r"index\.json: feature index version 1"):
        FeatureStore(out)
    (out / "index.json").write_text('{"version": 2, "kind"')
    with pytest.raises(FeatureError, match=r"index\.json: not a readable feature index"):
        FeatureStore(out)
