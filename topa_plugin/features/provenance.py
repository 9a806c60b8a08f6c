"""Where each memory row came from: the sidecar ``<memory>.provenance.jsonl`` that ``topa memory build`` writes.

TOPA projects a video frame onto textual frames; to show *which* ones (``topa ask --report``), each memory
row needs its Tideo id, its frame index and the captions of that frame. The bank itself is a bare matrix
(the release's ``memory.pkl`` too), so this lives beside it: a header line naming the bank's row count
and sha256 (a sidecar of another bank is never read as this one's), then one line per row in row order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from topa_plugin.features.store import FeatureError, FeatureStore
from topa_plugin.utils.atomic import atomic_write
from topa_plugin.utils.constants import PROVENANCE_SUFFIX
from topa_plugin.utils.hashing import file_sha256

FORMAT = "topa-memory-provenance-v1"
CAPTION_SEPARATOR = " / "  # between the captions of one textual frame (its feature is their fused mean)


@dataclass(frozen=True)
class RowSource:
    """One memory row: the Tideo and frame it is the text feature of, and that frame's captions (None: not recorded)."""

    tideo: str
    frame: int
    text: str | None


def provenance_path(memory_path: str | os.PathLike) -> Path:
    """``memory.safetensors`` -> ``memory.provenance.jsonl`` (same folder, same stem)."""
    path = Path(memory_path)
    return path.with_name(path.stem + PROVENANCE_SUFFIX)


def row_sources(store: FeatureStore, frames: list[int], textvid: str | os.PathLike | None) -> list[RowSource]:
    """Tideo id and frame of each kept frame (global frame numbers in store order), with captions read
    from ``textvid`` when given. A TextVid record whose captions are not those the store's features were
    computed from fails, naming it: a wrong caption beside a row would be worse than none."""
    import numpy as np

    starts = np.concatenate([[0], np.cumsum(np.asarray(store.n_frames, dtype=np.int64))])
    owners = np.searchsorted(starts, frames, side="right") - 1
    ids = store.ids()
    texts: dict[str, list[str]] = {}
    if textvid is not None:
        texts = _captions(store, textvid, sorted({ids[o] for o in owners.tolist()}))
    sources = []
    for frame, owner in zip(frames, owners.tolist()):
        tideo, index = ids[owner], int(frame - starts[owner])
        text = texts[tideo][index] if tideo in texts else None
        sources.append(RowSource(tideo, index, text))
    return sources


def _captions(store: FeatureStore, textvid: str | os.PathLike, wanted: list[str]) -> dict[str, list[str]]:
    """Per wanted Tideo, one text per frame (its captions joined), checked against the store: the caption
    digest a ``topa features textvid`` store keeps, else (a release import) the frame count."""
    from topa_plugin.features.extract import check_textvid

    source = check_textvid(textvid, skip_invalid=True)
    position = {key: i for i, key in enumerate(source.keys)}
    texts = {}
    for tideo in wanted:
        if tideo not in position:
            raise FeatureError(f"{textvid}: no usable record {tideo!r}, which the memory's feature store "
                               f"{store.directory} holds; give the TextVid file the store was extracted from")
        record = source[position[tideo]]
        # a textvid store keeps each record's caption digest; a release import only its frame count
        same = (source.digests[position[tideo]] == store.digests[store.position(tideo)] if store.kind == "textvid"
                else len(record.frames) == store.n_frames[store.position(tideo)])
        if not same:
            raise FeatureError(f"{textvid}: record {tideo!r} has other captions than the ones the features in "
                               f"{store.directory} were computed from; give the TextVid file the store was extracted from")
        texts[tideo] = [CAPTION_SEPARATOR.join(captions) for captions in record.captions_per_frame]
    return texts


def write_provenance(memory_path: str | os.PathLike, sources: list[RowSource]) -> Path:
    """Write the sidecar of the bank at ``memory_path`` (written first: the header holds its sha256)."""
    path = provenance_path(memory_path)
    header = {"format": FORMAT, "rows": len(sources), "memory_sha256": file_sha256(memory_path)}
    lines = [header, *({"tideo": s.tideo, "frame": s.frame, "text": s.text} for s in sources)]
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return atomic_write(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))


def read_provenance(memory_path: str | os.PathLike | None, rows: int) -> tuple[list[RowSource] | None, str | None]:
    """(one RowSource per row, None) or (None, why there is none) for the bank at ``memory_path`` with
    ``rows`` rows. A sidecar of another bank is refused with the reason; an unreadable one fails naming it."""
    if memory_path is None:
        return None, "the memory bank was set in Python, not read from a file, so its rows have no recorded sources"
    path = provenance_path(memory_path)
    if not path.is_file():
        return None, (f"{Path(memory_path).name} has no {path.name} beside it: it was imported from the release's "
                      "memory.pkl or built before `topa memory build` recorded where rows come from; rebuild it "
                      "with `topa memory build` to see captions")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
        entries = [json.loads(line) for line in lines[1:]]
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"first line is not a {FORMAT} header")
        sources = [RowSource(str(e["tideo"]), int(e["frame"]), e.get("text")) for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise FeatureError(f"{path}: unreadable memory provenance ({exc}); rebuild the memory with `topa memory build`") from None
    if len(sources) != rows or header.get("rows") != rows:
        return None, f"{path.name} lists {len(sources)} rows but {Path(memory_path).name} has {rows}: it belongs to another bank"
    if header.get("memory_sha256") != file_sha256(memory_path):
        return None, f"{path.name} was written for another version of {Path(memory_path).name} (its sha256 differs)"
    return sources, None
