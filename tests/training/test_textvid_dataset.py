"""TextVidDataset at scale: records read back from their byte spans, --skip_invalid with rejects,
frame counts checked against the store index, and the content-keyed start-up scan cache."""

from __future__ import annotations

import json

import pytest
import torch

from topa_plugin.textvid import TextVidError, sample_path
from topa_plugin.training.samples import DataError
from topa_plugin.training.textvid_dataset import TextVidDataset

from .test_datasets import random_frames, write_store


def samples(ds, epochs=2) -> list:
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            s = ds[i]
            out.append((s["input_ids"].tolist(), s["caption"]["input_ids"].tolist(), s["task_coin"],
                        s["video_features"]))
    return out


def test_a_release_json_list_gives_the_samples_of_its_jsonl(processor, records, tmp_path):
    store = write_store(tmp_path / "store", {r.idx: random_frames(len(r.frames), i) for i, r in enumerate(records)})
    listing = tmp_path / "textvid.json"
    listing.write_text(json.dumps([r.to_dict() for r in records], indent=1), encoding="utf-8")
    a = samples(TextVidDataset(sample_path(), store, processor, max_seq_len=512, answer_balance=True))
    b = samples(TextVidDataset(listing, store, processor, max_seq_len=512, answer_balance=True))
    assert len(a) == len(b) == 2 * len(records)
    for x, y in zip(a, b):
        assert x[:3] == y[:3] and torch.equal(x[3], y[3])


def test_skip_invalid_leaves_out_bad_records_and_lists_why(processor, records, tmp_path):
    lines = sample_path().read_text(encoding="utf-8").splitlines()
    bad = json.loads(lines[4])
    bad["QAs"][0]["answer"] = "F"
    lines[4] = json.dumps(bad)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    features = {r.idx: random_frames(len(r.frames), i) for i, r in enumerate(records) if i != 7}
    features[records[11].idx] = random_frames(len(records[11].frames) + 2, 11)
    store = write_store(tmp_path / "store", features)
    with pytest.raises(TextVidError, match="record 4"):
        TextVidDataset(data, store, processor, max_seq_len=512)
    rejects = tmp_path / "run.rejects.jsonl"
    ds = TextVidDataset(data, store, processor, max_seq_len=512, skip_invalid=True, rejects=rejects)
    assert ds.positions == [i for i in range(len(records)) if i not in (4, 7, 11)]
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["record"], r["line"], r["id"]) for r in listed] == [
        (4, 5, records[4].idx), (7, 8, records[7].idx), (11, 12, records[11].idx)]
    assert "QAs[0].answer" in listed[0]["problems"][0]
    assert listed[1]["problems"] == [f"idx: not in the feature index of {store}"]
    assert listed[2]["problems"][0].startswith(f"frames: {len(records[11].frames)} frames but")
    assert len(samples(ds, epochs=1)) == len(records) - 3


def _no_scan(*args, **kwargs):
    raise AssertionError("the file was scanned again")


def test_the_start_up_scan_is_cached_by_content(processor, records, tmp_path, monkeypatch):
    from topa_plugin.textvid import reader as reader_module

    store = write_store(tmp_path / "store", {r.idx: random_frames(len(r.frames), i) for i, r in enumerate(records)})
    data = tmp_path / "data.jsonl"
    data.write_bytes(sample_path().read_bytes())
    cache = tmp_path / "out" / "scan.json"
    first = TextVidDataset(data, store, processor, max_seq_len=155, overlong="skip", scan_cache=cache)
    assert cache.is_file() and first.usable_qas  # some QAs are cut off at 155

    monkeypatch.setattr(reader_module, "scan_textvid", _no_scan)
    again = TextVidDataset(data, store, processor, max_seq_len=155, overlong="skip", scan_cache=cache)
    assert (again.positions, again.usable_qas, again.kept.ids) == (first.positions, first.usable_qas, first.kept.ids)
    assert (list(again.kept.offsets), list(again.kept.sizes)) == (list(first.kept.offsets), list(first.kept.sizes))
    assert samples(again, epochs=1)[0][:3] == samples(first, epochs=1)[0][:3]
    with pytest.raises(AssertionError, match="scanned again"):  # another max_seq_len is another key
        TextVidDataset(data, store, processor, max_seq_len=160, overlong="skip", scan_cache=cache)
    with pytest.raises(AssertionError, match="scanned again"):  # so is another overlong policy
        TextVidDataset(data, store, processor, max_seq_len=155, scan_cache=cache)
    text = sample_path().read_bytes()
    data.write_bytes(text.replace(b"grey sweater", b"gray sweater"))  # any changed byte is another key
    with pytest.raises(AssertionError, match="scanned again"):
        TextVidDataset(data, store, processor, max_seq_len=155, overlong="skip", scan_cache=cache)
    data.write_bytes(text)
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(text)
    with pytest.raises(AssertionError, match="scanned again"):  # the cached messages name the file
        TextVidDataset(moved, store, processor, max_seq_len=155, overlong="skip", scan_cache=cache)
    other = write_store(tmp_path / "other", {r.idx: random_frames(len(r.frames) + (i == 0), i) for i, r in enumerate(records)})
    with pytest.raises(AssertionError, match="scanned again"):  # another feature index: another key
        TextVidDataset(data, other, processor, max_seq_len=155, overlong="skip", scan_cache=cache)


def test_a_cached_scan_still_writes_rejects_and_a_failing_scan_is_not_cached(processor, records, tmp_path, monkeypatch):
    from topa_plugin.textvid import reader as reader_module

    store = write_store(tmp_path / "store", {r.idx: random_frames(len(r.frames), i)
                                             for i, r in enumerate(records) if i != 3})
    cache, rejects = tmp_path / "scan.json", tmp_path / "run.rejects.jsonl"
    with pytest.raises(DataError, match="without usable features"):
        TextVidDataset(sample_path(), store, processor, max_seq_len=512, scan_cache=cache)
    assert not cache.exists()
    TextVidDataset(sample_path(), store, processor, max_seq_len=512, skip_invalid=True, rejects=rejects,
                   scan_cache=cache)
    listed = rejects.read_text()
    rejects.unlink()
    monkeypatch.setattr(reader_module, "scan_textvid", _no_scan)
    again = TextVidDataset(sample_path(), store, processor, max_seq_len=512, skip_invalid=True, rejects=rejects,
                           scan_cache=cache)
    assert rejects.read_text() == listed and records[3].idx not in again.kept.ids


def test_train_writes_rejects_beside_and_the_scan_cache_into_its_output_dir(processor, records, tmp_path):
    from topa_plugin.training.arguments import DataArguments
    from topa_plugin.training.train import build_dataset

    store = write_store(tmp_path / "store", {r.idx: random_frames(len(r.frames), i)
                                             for i, r in enumerate(records) if i != 2})
    args = DataArguments(data_path=str(sample_path()), feature_folder=str(store), max_seq_len=512, skip_invalid=True)
    ds = build_dataset(args, processor, 0, str(tmp_path / "run"))
    assert len(ds) == len(records) - 1 and (tmp_path / "run" / "textvid-scan.json").is_file()
    assert json.loads((tmp_path / "run.rejects.jsonl").read_text())["id"] == records[2].idx
    with pytest.raises(DataError, match="--skip_invalid applies to TextVid pretraining"):
        build_dataset(DataArguments(data_path="qa.csv", feature_folder=str(store), task="finetune",
                                    skip_invalid=True), processor, 0, str(tmp_path / "run"))
