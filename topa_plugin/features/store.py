"""The feature store format (index.json + safetensors shards) and its read-only reader.

A store is finished when index.json exists; ``topa_plugin.features.writer`` writes it last, so
a reader never sees a half-written store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

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
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("version") != VERSION:
            raise FeatureError(f"{index_path}: unsupported version {index.get('version')!r}")
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
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.directory / shard), framework="pt")
        return self._handles[shard]

    def get(self, idx) -> torch.Tensor:
        """Frame features [T, D] as float32."""
        entry = self.records.get(str(idx))
        if entry is None:
            raise KeyError(f"{self.directory}: no features for record {idx!r}")
        return self._handle(entry["shard"]).get_tensor(entry["key"]).float()

    def __getstate__(self):  # open shard handles cannot cross into DataLoader workers
        return {**self.__dict__, "_handles": {}}
