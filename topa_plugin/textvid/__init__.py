"""TextVid: textual videos ("Tideos") used for TOPA's text-only pre-alignment."""

from importlib import resources
from pathlib import Path

from topa_plugin.textvid.reader import read_textvid
from topa_plugin.textvid.records import QA, Problem, TextVidError, TextVidRecord, validate_records
from topa_plugin.textvid.stats import compute_stats
from topa_plugin.textvid.writer import append_jsonl, write_jsonl

__all__ = [
    "QA",
    "Problem",
    "TextVidError",
    "TextVidRecord",
    "append_jsonl",
    "compute_stats",
    "read_textvid",
    "sample_path",
    "validate_records",
    "write_jsonl",
]


def sample_path() -> Path:
    """Path of the bundled, hand-written sample (package data, for demos and tests)."""
    return Path(str(resources.files(__package__).joinpath("sample", "textvid_sample.jsonl")))
