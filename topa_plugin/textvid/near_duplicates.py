"""Near-duplicate Tideos: the same Tideo written again with a few words changed.

A Tideo's **shingles** are the word bigrams of each of its frame captions (a one-word caption is its own
shingle), and two Tideos are near-duplicates when the Jaccard similarity of their shingle sets is at least
the threshold (default 0.8: changing about one word in ten of every caption stays above it; Tideos on the
same topic written independently share far fewer bigrams).

Finding them is one streaming pass. Each Tideo's MinHash (datasketch, 64 permutations, a stable CRC-32 of
each shingle, so runs agree byte for byte) is looked up in a datasketch MinHash LSH index of the Tideos kept
so far; the index only proposes candidates, and each candidate is read back from its byte span in the file
and its exact Jaccard similarity decides. A Tideo whose best match reaches the threshold joins that match's
cluster (the earliest on ties) and stays out of the index; any other Tideo starts its own cluster. So every
cluster is its first-seen Tideo followed by the later ones that duplicate it, and ``dedup`` keeps exactly the
first ones. Memory holds the index and a few integers per Tideo, never their text: the index's buckets are
the low 16 bits of each band's CRC-32 (datasketch's ``hashfunc`` compression), so at most 65,536 bucket sets
per band exist whatever the file's size, and the neighbours a coarse bucket adds are dropped by comparing
the full band hashes before any record is read back.

The LSH's banding (``NearDuplicates.bands``, ``rows``) sets the chance that a pair at similarity s becomes a
candidate at all, 1 - (1 - s^rows)^bands; ``candidate_probability`` gives it, and the report states it.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from topa_plugin.textvid.reader import iter_valid
from topa_plugin.textvid.stream import read_span
from topa_plugin.textvid.words import words
from topa_plugin.textvid.writer import RecordWriter
from topa_plugin.utils.atomic import atomic_write

DEFAULT_THRESHOLD = 0.8
NUM_PERM = 64
# (false positive, false negative) weights of datasketch's banding optimiser: candidates are checked
# exactly, so a false candidate costs one read, a missed one a duplicate left in the data.
LSH_WEIGHTS = (0.3, 0.7)
# Above this the index keeps the banding it has here (7 bands of 9 rows): higher thresholds only need fewer
# candidates, and datasketch's optimiser would pick a single band (which it refuses) near 1.
INDEX_THRESHOLD_CAP = 0.8
MINHASH_SEED = 1
BUCKET_MASK = (1 << 16) - 1
# One int object per bucket: datasketch keeps every Tideo's bucket keys, and a new int per key would add
# 28 bytes per band and Tideo.
_BUCKETS = tuple(range(BUCKET_MASK + 1))


@functools.lru_cache(maxsize=8)
def banding(threshold: float) -> tuple[int, int]:
    """(bands, rows) datasketch's optimiser picks for ``threshold`` (a second or so of numerical integration:
    done once per threshold)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


def check_threshold(threshold: float) -> float:
    """``threshold`` when it lies in (0, 1]; ValueError naming it otherwise."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold:g} is outside (0, 1]")
    return threshold


def caption_shingles(frames: Iterable[dict]) -> set[str]:
    """The word bigrams of every frame caption (a caption of one word is its own shingle)."""
    shingles = set()
    for frame in frames:
        for caption in frame.values():
            w = words(caption)
            if len(w) == 1:
                shingles.add(w[0])
            shingles.update(f"{a} {b}" for a, b in zip(w, w[1:]))
    return shingles


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _shingle_hash(shingle: str) -> int:
    return zlib.crc32(shingle.encode("utf-8"))


def _identity(value: int) -> int:
    return value


def _band_hash(band: bytes) -> int:
    return zlib.crc32(band)


def _bucket(band: bytes) -> int:
    """The index's bucket key of a band: the low bits of its CRC-32, so Tideos share bucket objects (datasketch's
    ``hashfunc`` compression; one set per Tideo and band would cost about 300 bytes each). Candidates the coarse
    buckets add are dropped by comparing the full band hashes (``NearDuplicates.band_hashes``)."""
    return _BUCKETS[_band_hash(band) & BUCKET_MASK]


@dataclass
class Match:
    """A Tideo found to duplicate an earlier one: both positions and ids, and their exact similarity."""

    record: int
    id: str
    cluster_record: int
    cluster_id: str
    similarity: float
    cluster_position: int  # places among the records added (the file's valid records)
    position: int


@dataclass
class NearDuplicates:
    """Streaming near-duplicate clustering of one file's Tideos, fed in file order."""

    path: Path
    threshold: float = DEFAULT_THRESHOLD
    matches: list[Match] = field(default_factory=list)

    def __post_init__(self):
        from datasketch import MinHash, MinHashLSH

        check_threshold(self.threshold)
        self.lsh = MinHashLSH(num_perm=NUM_PERM, params=banding(min(self.threshold, INDEX_THRESHOLD_CAP)),
                              hashfunc=_bucket)
        self._template = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, hashfunc=_identity)
        # Every record added, by position: its index in the file and byte span (to read candidates back), and
        # the full hash of each of its bands (``bands`` per record).
        self.indices, self.offsets, self.sizes = array("q"), array("q"), array("q")
        self.band_hashes = array("I")

    @property
    def bands(self) -> int:
        return self.lsh.b

    @property
    def rows(self) -> int:
        return self.lsh.r

    def candidate_probability(self, similarity: float) -> float:
        return 1 - (1 - similarity ** self.rows) ** self.bands

    def _minhash(self, shingles: set[str]):
        from datasketch import MinHash

        m = MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED, hashfunc=_identity, scheme=self._template.scheme,
                    permutations=self._template.permutations)
        m.update_batch([_shingle_hash(s) for s in sorted(shingles)])
        return m

    def _read(self, position: int) -> dict:
        return read_span(self.path, self.offsets[position], self.sizes[position])

    def add(self, index: int, idx: str, frames: list[dict], offset: int, size: int) -> Match | None:
        """The next record (``index``: its place in the file; records come in file order): its match among
        the kept Tideos, or None when it is kept (and indexed)."""
        position = len(self.indices)
        for column, value in zip((self.indices, self.offsets, self.sizes), (index, offset, size)):
            column.append(value)
        shingles = caption_shingles(frames)
        minhash = self._minhash(shingles)
        # The bytes datasketch hands to ``hashfunc`` for each band (big-endian hash values).
        bands = [_band_hash(minhash.hashvalues[start:end].byteswap().tobytes()) for start, end in self.lsh.hashranges]
        b = self.bands
        best = None
        for candidate in sorted(self.lsh.query(minhash)):
            if not any(x == y for x, y in zip(bands, self.band_hashes[candidate * b:(candidate + 1) * b])):
                continue  # met only in a coarse bucket: no band in common
            d = self._read(candidate)
            similarity = jaccard(shingles, caption_shingles(d["frames"]))
            if similarity >= self.threshold and (best is None or similarity > best.similarity):
                best = Match(index, idx, self.indices[candidate], str(d["idx"]), similarity, candidate, position)
        self.band_hashes.extend(bands)
        if best is None:
            self.lsh.insert(position, minhash, check_duplication=False)
            return None
        self.matches.append(best)
        return best

    def clusters(self) -> list[list[str]]:
        """Each cluster with members: its first Tideo's id, then its members' ids in file order."""
        members: dict[int, list[Match]] = {}
        for match in self.matches:
            members.setdefault(match.cluster_record, []).append(match)
        return [[group[0].cluster_id] + [m.id for m in group] for _, group in sorted(members.items())]

    def result(self, examples: int = 5) -> dict:
        clusters = self.clusters()
        return {
            "threshold": self.threshold, "shingles": "word bigrams of each frame caption",
            "num_perm": NUM_PERM, "bands": self.bands, "rows": self.rows,
            "recall_at": {f"{s:g}": self.candidate_probability(s) for s in (self.threshold, 0.9, 0.95)},
            "clusters": clusters, "duplicates": len(self.matches),
            "records_in_clusters": sum(len(c) for c in clusters),
            "pairs": [self._pair(m) for m in self.matches[:examples]],
        }

    def _pair(self, match: Match) -> dict:
        """A matched pair with both Tideos' captions, frame by frame, for the side-by-side view."""
        first, second = (self._read(i) for i in (match.cluster_position, match.position))
        return {"similarity": match.similarity, "ids": [match.cluster_id, match.id],
                "records": [match.cluster_record, match.record],
                "captions": [[list(frame.values()) for frame in d["frames"]] for d in (first, second)]}


def removed_path(out: str | os.PathLike) -> Path:
    """Where ``dedup`` lists what it removed: ``clean.jsonl`` -> ``clean.removed.jsonl``."""
    out = Path(out)
    return out.with_name(out.stem + ".removed.jsonl")


def dedup_file(path: str | os.PathLike, out: str | os.PathLike, threshold: float = DEFAULT_THRESHOLD,
               skip_invalid: bool = False, skipped: list | None = None) -> NearDuplicates:
    """Copy ``path`` to ``out`` (``.jsonl`` or ``.json``) keeping the first Tideo of each near-duplicate
    cluster; the others go to ``removed_path(out)``, one line each with the cluster they duplicate.
    Both files appear complete or not at all.

    Raises:
        TextVidError: ``path`` cannot be read, or (without ``skip_invalid``) its first invalid record.
    """
    found = NearDuplicates(Path(path), threshold)
    removed = removed_path(out)
    tmp = removed.with_name(f"{removed.name}.{os.getpid()}.tmp")
    try:
        with RecordWriter(out) as kept, open(tmp, "w", encoding="utf-8") as lines:
            for item, record in iter_valid(path, skip_invalid, f"dedup {Path(path).name}", skipped):
                match = found.add(item.index, record.idx, record.frames, item.offset, item.size)
                if match is None:
                    kept.write(item.value)
                else:
                    lines.write(json.dumps({"idx": match.id, "record": match.record, "cluster": match.cluster_id,
                                            "cluster_record": match.cluster_record,
                                            "similarity": round(match.similarity, 6)}, ensure_ascii=False) + "\n")
        atomic_write(removed, lambda _: None, tmp=tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return found
