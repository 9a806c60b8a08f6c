"""A small video-QA annotation file in the NExT-QA csv layout, for finetuning tests."""

from __future__ import annotations

import csv
from pathlib import Path

FIELDS = ["video", "qid", "type", "question", "answer", *[f"a{i}" for i in range(5)]]


def write_videoqa_csv(path: Path, options: list[str], rows: int = 8, videos: int = 2) -> Path:
    """``rows`` questions over ``videos`` clips (``clip0``, ``clip1``, ...), each answered by option 1."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for i in range(rows):
            writer.writerow({"video": f"clip{i % videos}", "qid": i, "type": "TN", "question": "where does the square go",
                             "answer": 1, **{f"a{j}": o for j, o in enumerate(options)}})
    return path
