"""The feature store format (index.json + safetensors shards) and its read-only reader.

A store is finished when index.json exists; ``topa_plugin.features.writer`` writes it last, so
a reader never sees a half-written store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from topa_plugin.features.validation import check_frame_features

VERSION = 1


INDEX = "index.json"


PROGRESS = "progress.json"


DTYPES = {"float16": torch.float16, "float32": torch.float32}


class FeatureError(ValueError):
    """Bad feature input or store; the message names the file, record and field."""


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


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
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FeatureError(f"{index_path}: truncated or not JSON ({exc}); rerun the `topa features` "
                               "command that wrote this store") from exc
        if not isinstance(index, dict) or index.get("version") != VERSION:
            version = index.get("version") if isinstance(index, dict) else None
            raise FeatureError(f"{index_path}: unsupported version {version!r}")
        self.encoder: str = index["encoder"]
        self.dim: int = index["dim"]
        self.records: dict[str, dict] = index["records"]
        self._handles: dict[str, Any] = {}

    def __contains__(self, idx) -> bool:
        return str(idx) in self.records

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> list[str]:
        return list(self.records)

    def _handle(self, shard: str):
        if shard not in self._handles:
            from safetensors import SafetensorError, safe_open

            try:
                self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise FeatureError(f"{self.directory / shard}: missing, truncated or corrupt shard ({exc}); "
                                   "rerun the `topa features` command that wrote this store") from exc
        return self._handles[shard]

    def get(self, idx) -> torch.Tensor:
        """Frame features [T, D] as float32; NaN/Inf or zero frames fail, naming the shard and record."""
        from safetensors import SafetensorError

        entry = self.records.get(str(idx))
        if entry is None:
            raise KeyError(f"{self.directory}: no features for record {idx!r}")
        where = f"{self.directory / entry['shard']}: record {str(idx)!r}"
        try:
            features = self._handle(entry["shard"]).get_tensor(entry["key"]).float()
        except SafetensorError as exc:
            raise FeatureError(f"{where}: unreadable ({exc})") from exc
        return check_frame_features(features, where, FeatureError)

    def __getstate__(self):  # open shard handles cannot cross into DataLoader workers
        return {**self.__dict__, "_handles": {}}
