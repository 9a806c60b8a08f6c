"""Reading TextVid files as a stream of checked records: every problem is reported with file, line, record,
id and field (``records`` defines the schema and its checks), and memory holds only the ids seen so far."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from topa_plugin.textvid.records import Problem, TextVidError, TextVidRecord, build_record, record_problems, repeated_id_problems
from topa_plugin.textvid.stream import RawRecord, iter_json_list, iter_jsonl

# Passes over a file show a progress bar once they have run this long.
PROGRESS_DELAY_S = 2.0


def _stream(path: Path, progress) -> Iterator[RawRecord | tuple[int | None, str]]:
    """The file's records in order, parsed one at a time (memory does not grow with the file)."""
    source = str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a TextVid .json/.jsonl file")
    if path.suffix not in (".json", ".jsonl"):
        raise TextVidError([Problem(source, None, None, None,
                                    "unsupported file type: expected .json (release list) or .jsonl (JSON Lines)")])
    with open(path, "rb") as f:
        yield from (iter_jsonl if path.suffix == ".jsonl" else iter_json_list)(f, progress)


def scan_textvid(path: str | os.PathLike, desc: str | None = None
                 ) -> Iterator[tuple[RawRecord | None, list[Problem]]]:
    """Every record of a release ``.json`` list or ``.jsonl`` file, in order, with its problems
    (parse, schema, repeated id); ``(None, [problem])`` for a problem outside any record.

    Records are parsed one at a time, so memory holds only the ids seen so far. ``desc`` shows
    a progress bar over the file's bytes when the pass takes more than a few seconds."""
    from tqdm.auto import tqdm

    path = Path(path)
    source = str(path)
    first_use: dict[str, int] = {}
    progress = tqdm(total=path.stat().st_size if path.is_file() else 0, unit="B", unit_scale=True,
                    desc=desc, delay=PROGRESS_DELAY_S, dynamic_ncols=True, disable=desc is None)
    seen = False
    with progress:
        for item in _stream(path, progress):
            seen = True
            if not isinstance(item, RawRecord):
                yield None, [Problem(source, None, None, None, item[1], item[0])]
                continue
            if item.error is not None:
                yield item, [Problem(source, item.index, None, None, item.error, item.line)]
                continue
            yield item, (record_problems(item.value, source, item.index, item.line)
                         + repeated_id_problems(first_use, item.value, source, item.index, item.line))
    if not seen:
        yield None, [Problem(source, None, None, None, "no records (an empty file or list)")]


def record_of(item: RawRecord) -> TextVidRecord:
    """The record of an item ``scan_textvid`` reported without problems (not checked again)."""
    return build_record(item.value)


def read_textvid(path: str | os.PathLike) -> list[TextVidRecord]:
    """Read a whole TextVid file, holding every record in memory (for large files: ``scan_textvid``).

    Args:
        path: the release's ``textvid.json`` (one JSON list) or a ``.jsonl`` file.

    Raises:
        TextVidError: listing every problem, each naming the file, line, record, id and field.
    """
    records, problems = [], []
    for item, found in scan_textvid(path):
        problems += found
        if item is not None and not found:
            records.append(build_record(item.value))
    if problems:
        raise TextVidError(problems)
    return records


def read_record(path: str | os.PathLike, offset: int, size: int) -> TextVidRecord:
    """One record of a file already checked by ``scan_textvid``, from its byte span."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(size)
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TextVidError([Problem(str(path), None, None, None,
                                    f"bytes {offset}..{offset + size} no longer hold a record ({e}); "
                                    "the file changed after it was checked")]) from None
    return TextVidRecord.from_dict(d, source=str(path))


def iter_valid(path: str | os.PathLike, skip_invalid: bool = False, desc: str | None = None,
               skipped: list[Problem] | None = None) -> Iterator[tuple[RawRecord, TextVidRecord]]:
    """The valid records of a file, streamed with their places in it.

    The first invalid record raises ``TextVidError`` naming it, unless ``skip_invalid``: then each invalid
    record's problems are appended to ``skipped`` and the record is left out. A file that stops parsing
    part-way is an error either way (what follows the break is unknown)."""
    for item, found in scan_textvid(path, desc=desc):
        if item is None:
            raise TextVidError(found)
        if found:
            if not skip_invalid:
                raise TextVidError(found[:1])
            if skipped is not None:
                skipped.extend(found)
            continue
        yield item, build_record(item.value)
