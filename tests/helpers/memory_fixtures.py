"""A memory bank with provenance, made as a user makes one: TextVid records -> `topa features textvid`'s
store (toy CLIP) -> `topa memory build`, which records each row's Tideo, frame and captions beside it."""

from __future__ import annotations

from pathlib import Path


def build_textvid_memory(root: str | Path, toy_clip, records: int = 12) -> tuple[Path, Path, Path]:
    """(TextVid file, feature store, memory.safetensors) under ``root``, from the bundled sample's first records."""
    from topa_plugin.cli import main
    from topa_plugin.features.clip import load_clip
    from topa_plugin.features.extract import extract_textvid
    from topa_plugin.textvid import read_textvid, sample_path
    from topa_plugin.textvid.writer import write_jsonl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    textvid = write_jsonl(root / "textvid.jsonl", read_textvid(sample_path())[:records])
    store = extract_textvid(textvid, root / "store", load_clip(str(toy_clip[0]), str(toy_clip[1])), 64).parent
    memory = root / "memory.safetensors"
    assert main(["memory", "build", "--features", str(store), "--all", "--out", str(memory)]) == 0
    return textvid, store, memory
