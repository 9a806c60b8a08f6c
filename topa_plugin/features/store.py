"""The feature store format (index.json + safetensors shards) and its read-only reader.

A store is finished when index.json exists; ``topa_plugin.features.writer`` writes it last, so
a reader never sees a half-written store. The index lists every shard with its size and
sha256 and, per record, its shard, frame count and content digest (columns, so the index of
the release's 721k Tideos loads in about a second). Opening a store checks that every shard is
there with its size; a shard's hash is checked the first time it is read.
"""

from __future__ import annotations

import json
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from topa_plugin.features.validation import check_frame_features
from topa_plugin.utils.constants import DTYPES as ALL_DTYPES
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.hashing import file_sha256

VERSION = 2


INDEX = "index.json"
PROGRESS = "progress.jsonl"
# Storage dtypes of a store: the half and full precision entries of the one dtype map.
DTYPES = {name: ALL_DTYPES[name] for name in ("float16", "float32")}
# Shards a reader keeps open (memory-mapped) at once.
OPEN_SHARDS = 4
# Index fields that must agree between a store and an extraction resuming into it.
HEADER_KEYS = ("version", "kind", "encoder", "dim", "dtype", "frames")


class FeatureError(TopaInputError, ValueError):
    """Bad feature input or store; the message names the file, record and field."""


def shard_problem(directory: Path, shard: dict, check_hash: bool) -> str | None:
    """Why a shard does not match its manifest entry ({name, bytes, sha256}), or None."""
    path = directory / shard["name"]
    if not path.is_file():
        return f"{path}: shard missing"
    size = path.stat().st_size
    if size != shard["bytes"]:
        return f"{path}: shard corrupt ({size} bytes, the manifest says {shard['bytes']})"
    if check_hash and file_sha256(path) != shard["sha256"]:
        return f"{path}: shard corrupt (its sha256 differs from the manifest's)"
    return None


def read_index(path: Path) -> dict[str, Any]:
    """index.json, with errors that name it."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FeatureError(f"{path}: not a readable feature index ({e}); rerun the `topa features` "
                           "command that wrote it to rewrite it") from None
    if not isinstance(index, dict) or index.get("version") != VERSION:
        version = index.get("version") if isinstance(index, dict) else None
        raise FeatureError(f"{path}: feature index version {version!r}, this topa reads version {VERSION}; "
                           "extract the features again into a new --out directory")
    return index


class FeatureStore:
    """Read-only access to a finished feature store (index.json + shards)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.is_file():
            if (self.directory / PROGRESS).is_file():
                raise FeatureError(f"{self.directory}: extraction incomplete; rerun the same "
                                   "`topa features` command to resume it")
            raise FileNotFoundError(f"{index_path}: no feature index")
        index = read_index(index_path)
        self.kind: str = index["kind"]
        self.encoder: str = index["encoder"]
        self.dim: int = index["dim"]
        self.shards: list[dict] = index["shards"]
        for shard in self.shards:
            problem = shard_problem(self.directory, shard, check_hash=False)
            if problem:
                raise FeatureError(f"{problem}; rerun the `topa features` command that wrote {self.directory}")
        self._ids: list[str] = index["ids"]
        self._shard_of = array("i", index["shard"])  # compact columns: 721k records
        self.n_frames = array("i", index["n_frames"])
        self.digests: list[str] = index["digests"]  # per record, what its features depend on (caption_digest)
        self.source: str | None = index.get("source")  # the TextVid file of a textvid store, where recorded
        self._position = {idx: i for i, idx in enumerate(self._ids)}
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._verified: set[int] = set()

    def __contains__(self, idx) -> bool:
        return str(idx) in self._position

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)

    def position(self, idx) -> int:
        """The record's row in the index columns (``n_frames``, ``digests``)."""
        try:
            return self._position[str(idx)]
        except KeyError:
            raise KeyError(f"{self.directory}: no features for record {idx!r}") from None

    def _handle(self, shard: int):
        """An open shard, its hash checked against the index the first time it is opened. At most
        ``OPEN_SHARDS`` stay open: each maps its file, and pages read stay resident while it is open."""
        if shard in self._handles:
            self._handles.move_to_end(shard)
            return self._handles[shard]
        from safetensors import safe_open

        entry = self.shards[shard]
        problem = shard_problem(self.directory, entry, check_hash=shard not in self._verified)
        if problem:
            raise FeatureError(f"{problem}; rerun the `topa features` command that wrote {self.directory}")
        self._verified.add(shard)
        self._handles[shard] = safe_open(str(self.directory / entry["name"]), framework="pt")
        if len(self._handles) > OPEN_SHARDS:
            self._handles.popitem(last=False)
        return self._handles[shard]

    def get(self, idx) -> torch.Tensor:
        """Frame features [T, D] as float32; NaN/Inf or zero frames fail, naming the shard and record."""
        i = self.position(idx)
        features = self._handle(self._shard_of[i]).get_tensor(self._ids[i]).float()
        where = f"{self.directory / self.shards[self._shard_of[i]]['name']}: record {self._ids[i]!r}"
        return check_frame_features(features, where, FeatureError)

    def frames(self, ids: Sequence[str]) -> torch.Tensor:
        """The frames of several records stacked [sum of T, D] as float32, checked in one pass (a bad
        frame fails as in ``get``, naming its record): reading a shard costs no per-record checks."""
        rows = torch.cat([self._handle(self._shard_of[i]).get_tensor(self._ids[i])
                          for i in map(self.position, ids)]).float()
        try:
            return check_frame_features(rows, str(self.directory), FeatureError)
        except FeatureError:
            for idx in ids:
                self.get(idx)  # raises naming the record
            raise

    def runs(self) -> list[list[str]]:
        """Record ids in index order, cut where the shard changes (to read a store shard by shard)."""
        out: list[list[str]] = []
        for i, (idx, shard) in enumerate(zip(self._ids, self._shard_of)):
            if i == 0 or shard != self._shard_of[i - 1]:
                out.append([])
            out[-1].append(idx)
        return out

    def __getstate__(self):  # open shard handles cannot cross into DataLoader workers
        return {**self.__dict__, "_handles": OrderedDict()}
