"""Memory provenance: `topa memory build` records each row's Tideo, frame and captions, checked against the
store's features; a sidecar of another bank, or none, is reported with the reason, never read as this one's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers.memory_fixtures import build_textvid_memory
from topa_plugin.cli import main
from topa_plugin.features.memory import load_memory, save_memory
from topa_plugin.features.provenance import CAPTION_SEPARATOR, provenance_path, read_provenance
from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.features.transforms import l2_normalize
from topa_plugin.textvid import read_textvid


@pytest.fixture(scope="module")
def built(tmp_path_factory, toy_clip):
    return build_textvid_memory(tmp_path_factory.mktemp("provenance"), toy_clip)


def test_every_row_names_the_tideo_frame_and_captions_it_is_the_feature_of(built):
    textvid, store_dir, memory_path = built
    memory = load_memory(memory_path)
    sources, note = read_provenance(memory_path, memory.shape[0])
    assert note is None and len(sources) == memory.shape[0]
    store = FeatureStore(store_dir)
    records = {r.idx: r for r in read_textvid(textvid)}
    for row, source in enumerate(sources):
        frame = l2_normalize(store.get(source.tideo)[source.frame]).half()
        assert torch.equal(memory[row], frame), (row, source)
        assert source.text == CAPTION_SEPARATOR.join(records[source.tideo].captions_per_frame[source.frame])
    assert len({(s.tideo, s.frame) for s in sources}) == len(sources)


def test_a_sampled_memory_records_its_own_rows(built, tmp_path):
    textvid, store_dir, _ = built
    out = tmp_path / "small.safetensors"
    assert main(["memory", "build", "--features", str(store_dir), "--size", "7", "--seed", "3",
                 "--textvid", str(textvid), "--out", str(out)]) == 0
    memory = load_memory(out)
    sources, _ = read_provenance(out, 7)
    store = FeatureStore(store_dir)
    for row, source in enumerate(sources):
        assert torch.equal(memory[row], l2_normalize(store.get(source.tideo)[source.frame]).half())


def test_without_the_textvid_file_rows_have_ids_and_frames_but_no_text(built, tmp_path, capsys):
    textvid, store_dir, _ = built
    store = shutil.copytree(store_dir, tmp_path / "store")
    index = json.loads((store / "index.json").read_text())
    del index["source"]  # a store extracted before stores recorded their TextVid file
    (store / "index.json").write_text(json.dumps(index))
    out = tmp_path / "memory.safetensors"
    assert main(["memory", "build", "--features", str(store), "--all", "--out", str(out)]) == 0
    assert "no captions: give --textvid FILE" in capsys.readouterr().out
    sources, note = read_provenance(out, load_memory(out).shape[0])
    assert note is None and all(s.text is None and s.tideo for s in sources)


def test_a_textvid_file_with_other_captions_is_refused_naming_the_record(built, tmp_path, capsys):
    textvid, store_dir, _ = built
    changed = textvid.read_text().replace("cracks eggs", "cracks EGGS", 1)
    assert changed != textvid.read_text()
    (tmp_path / "other.jsonl").write_text(changed)
    code = main(["memory", "build", "--features", str(store_dir), "--all", "--textvid", str(tmp_path / "other.jsonl"),
                 "--out", str(tmp_path / "m.safetensors")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has other captions than the ones the features in" in err[0], err


def test_no_sidecar_or_another_banks_sidecar_is_reported_not_used(built, tmp_path):
    _, _, memory_path = built
    memory = load_memory(memory_path)
    bare = save_memory(memory, tmp_path / "imported.safetensors")
    sources, note = read_provenance(bare, memory.shape[0])
    assert sources is None and "has no imported.provenance.jsonl beside it" in note
    shutil.copy(provenance_path(memory_path), provenance_path(bare))
    changed = save_memory(memory.flip(0), bare)  # same shape, other rows: the copied sidecar is not this bank's
    sources, note = read_provenance(changed, memory.shape[0])
    assert sources is None and "written for another version of imported.safetensors" in note
    sources, note = read_provenance(changed, memory.shape[0] + 1)
    assert sources is None and "belongs to another bank" in note
    provenance_path(bare).write_text("not json\n")
    with pytest.raises(FeatureError, match="imported.provenance.jsonl: unreadable memory provenance"):
        read_provenance(bare, memory.shape[0])
