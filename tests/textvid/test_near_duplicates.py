"""Near-duplicate clustering: planted pairs at known similarity are found exactly, nothing else; dedup keeps
the first of each cluster and reruns give the same bytes."""

from __future__ import annotations

import json

import pytest

from tests.helpers.textvid_synth import near_copy, planted_similarity, unique_record, write_json_list, write_jsonl
from topa_plugin.textvid.near_duplicates import (
    NearDuplicates,
    caption_shingles,
    check_threshold,
    dedup_file,
    jaccard,
    removed_path,
)
from topa_plugin.textvid.reader import iter_valid, read_textvid
from topa_plugin.textvid.records import TextVidError

CHANGED = (0, 1, 2, 3)  # planted pairs: Jaccard 1, 0.978, 0.957, 0.935
BELOW = 2  # captions rewritten: a pair at 72/108 = 0.667, under the 0.8 threshold


def planted_file(path, writer=write_jsonl):
    """60 unrelated Tideos; copies of four of them (at known similarity) and one below threshold, spread out."""
    records = [unique_record(i) for i in range(60)]
    far = near_copy(records[50], "far_copy", replaced=BELOW)
    for k, changed in enumerate(CHANGED):
        records.insert(20 + 10 * k, near_copy(records[3 * k + 1], f"copy_{changed}", changed))
    records.append(far)
    return writer(path, records)


def find(path, threshold=0.8) -> NearDuplicates:
    found = NearDuplicates(path, threshold)
    for item, record in iter_valid(path):
        found.add(item.index, record.idx, record.frames, item.offset, item.size)
    return found


def test_planted_similarity_is_the_exact_jaccard():
    original = unique_record(7)
    for changed, replaced in [(c, 0) for c in CHANGED] + [(0, BELOW)]:
        copy = near_copy(original, "x", changed, replaced)
        assert jaccard(caption_shingles(original["frames"]), caption_shingles(copy["frames"])) == \
            pytest.approx(planted_similarity(changed, replaced))


@pytest.mark.parametrize("writer", [write_jsonl, write_json_list], ids=["jsonl", "json"])
def test_planted_pairs_are_found_exactly(tmp_path, writer):
    path = planted_file(tmp_path / ("data" + (".jsonl" if writer is write_jsonl else ".json")), writer)
    found = find(path)
    assert sorted(found.clusters()) == sorted([[f"tideo_{3 * k + 1:05d}", f"copy_{c}"] for k, c in enumerate(CHANGED)])
    for match in found.matches:
        assert match.similarity == pytest.approx(planted_similarity(int(match.id.split("_")[1])))
    result = found.result()
    assert result["duplicates"] == len(CHANGED) and result["threshold"] == 0.8
    pair = result["pairs"][0]
    assert pair["captions"][0][0][0].startswith("u")  # the side-by-side view holds both Tideos' captions


def test_a_lower_threshold_takes_the_far_pair_too(tmp_path):
    found = find(planted_file(tmp_path / "data.jsonl"), threshold=0.6)
    assert ["tideo_00050", "far_copy"] in found.clusters()


def test_threshold_one_finds_exact_copies_only(tmp_path):
    found = find(planted_file(tmp_path / "data.jsonl"), threshold=1.0)
    assert found.clusters() == [["tideo_00001", "copy_0"]] and (found.bands, found.rows) == (7, 9)


def test_threshold_must_lie_in_the_unit_interval():
    for bad in (0, -0.1, 1.01):
        with pytest.raises(ValueError, match="outside"):
            check_threshold(bad)
    assert check_threshold(1.0) == 1.0


def test_dedup_keeps_first_seen_and_lists_the_removed(tmp_path):
    source = planted_file(tmp_path / "data.jsonl")
    out = tmp_path / "clean.jsonl"
    dedup_file(source, out)
    kept = [r.idx for r in read_textvid(out)]
    assert kept == [r.idx for r in read_textvid(source) if not r.idx.startswith("copy_")]
    removed = [json.loads(line) for line in removed_path(out).read_text().splitlines()]
    assert [(r["idx"], r["cluster"]) for r in removed] == sorted(
        [(f"copy_{c}", f"tideo_{3 * k + 1:05d}") for k, c in enumerate(CHANGED)],
        key=lambda pair: [r.idx for r in read_textvid(source)].index(pair[0]))
    first = out.read_bytes(), removed_path(out).read_bytes()
    dedup_file(source, out)
    assert (out.read_bytes(), removed_path(out).read_bytes()) == first
    # Kept records are the input's records, unchanged.
    originals = {json.loads(line)["idx"]: json.loads(line) for line in source.read_text().splitlines()}
    assert all(json.loads(line) == originals[json.loads(line)["idx"]] for line in out.read_text().splitlines())


def test_dedup_stops_at_an_invalid_record_and_writes_nothing(tmp_path):
    records = [unique_record(i) for i in range(3)]
    records[1]["QAs"][0]["answer"] = "F"
    source = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(TextVidError, match="record 1"):
        dedup_file(source, tmp_path / "out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]
    skipped = []
    dedup_file(source, tmp_path / "out.jsonl", skip_invalid=True, skipped=skipped)
    assert [r.idx for r in read_textvid(tmp_path / "out.jsonl")] == ["tideo_00000", "tideo_00002"]
    assert skipped and skipped[0].index == 1


def test_full_band_hashes_agree_with_the_index_buckets(tmp_path):
    """The filter that drops coarse-bucket neighbours compares the very bands datasketch indexed."""
    from topa_plugin.textvid.near_duplicates import BUCKET_MASK

    found = find(planted_file(tmp_path / "data.jsonl"))
    b = found.bands
    kept = [p for p in range(len(found.indices)) if p in found.lsh]
    assert len(kept) == len(found.indices) - len(found.matches)
    for position in kept:
        assert list(found.lsh.keys[position]) == [h & BUCKET_MASK for h in found.band_hashes[position * b:(position + 1) * b]]
