"""Turn a local EgoSchema-shaped file plus a video folder into a ready lmms-eval task folder.

lmms-eval reads task rows only from a file named in the task yaml, and the yaml's functions see
only the row, so the folder written here holds a copy of the shipped EgoSchema yamls and the rows, each
checked and given the absolute ``video_path`` of its video.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from topa_plugin.lmms.choices import option_texts
from topa_plugin.utils import rowfiles
from topa_plugin.utils.errors import TopaInputError
from topa_plugin.utils.ids import id_problem

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_FILE = "egoschema_local.jsonl"  # named by the shipped yamls' data_files
EGOSCHEMA_YAMLS = "*egoschema*.yaml"  # the shipped yamls that read DATA_FILE
N_OPTIONS = 5  # lmms-eval's EgoSchema parser reads exactly options A-E
_VIDEO_SUFFIXES = (".mp4", ".MP4")


class TaskDataError(TopaInputError, ValueError):
    """Rows that cannot make a valid EgoSchema task; the message lists every problem."""


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a .jsonl, .json (list of objects) or .parquet file."""
    return rowfiles.read_rows(path, TaskDataError, (".jsonl", ".json", ".parquet"))


def _row_problems(row, where: str) -> list[str]:
    if not isinstance(row, dict):
        return [f"{where}: expected an object, got {type(row).__name__}"]
    problems = []
    for field in ("video_idx", "question"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            problems.append(f"{where} field {field!r}: expected a non-empty string, got {row.get(field)!r}")
    if isinstance(row.get("video_idx"), str) and id_problem(row["video_idx"]):
        problems.append(f"{where} field 'video_idx': {id_problem(row['video_idx'])}")
    options = row.get("option")
    if not (isinstance(options, list) and len(options) == N_OPTIONS and all(isinstance(o, str) and o.strip() for o in options)):
        problems.append(f"{where} field 'option': expected {N_OPTIONS} non-empty strings, got {options!r}")
    else:
        texts = [_normalised(t) for t in option_texts(options)]
        repeated = sorted({chr(ord("A") + j) for j, t in enumerate(texts) if texts.count(t) > 1})
        if repeated:
            problems.append(f"{where} field 'option': options {', '.join(repeated)} have the same text; "
                            "scoring cannot tell them apart")
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < N_OPTIONS:
        problems.append(f"{where} field 'answer': expected an option index 0-{N_OPTIONS - 1}, got {row.get('answer')!r}")
    return problems


def _normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def _duplicate_problems(rows: list, data: Path) -> list[str]:
    """Rows asking the same question about the same video: each would count twice in the accuracy."""
    first: dict[tuple[str, str], int] = {}
    problems = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("video_idx"), str) or not isinstance(row.get("question"), str):
            continue
        key = (row["video_idx"], _normalised(row["question"]))
        if key in first:
            problems.append(f"{data} row {i} (video_idx {row['video_idx']!r}): duplicate of row {first[key]} "
                            "(same video_idx and question)")
        else:
            first[key] = i
    return problems


def _find_video(row: dict, data_dir: Path, videos: Path | None) -> Path | None:
    if row.get("video_path"):
        path = Path(row["video_path"]).expanduser()
        path = path if path.is_absolute() else data_dir / path
        return path.resolve() if path.is_file() else None
    if videos is None:
        return None
    for suffix in _VIDEO_SUFFIXES:
        path = videos / f"{row['video_idx']}{suffix}"
        if path.is_file():
            return path.resolve()
    return None


def prepare_rows(data: str | Path, videos: str | Path | None) -> list[dict]:
    """Checked rows with options re-lettered "A. ".."E. ", integer answers and absolute video paths.

    A row's own ``video_path`` (absolute, or relative to the data file) wins over ``videos``.
    """
    data = Path(data)
    videos = Path(videos).expanduser() if videos is not None else None
    if videos is not None and not videos.is_dir():
        raise TaskDataError(f"{videos}: video folder not found")
    rows = read_rows(data)
    if not rows:
        raise TaskDataError(f"{data}: no rows")
    problems, prepared = _duplicate_problems(rows, data), []
    for i, row in enumerate(rows):
        where = f"{data} row {i}" + (f" (video_idx {row.get('video_idx')!r})" if isinstance(row, dict) else "")
        row_problems = _row_problems(row, where)
        if row_problems:
            problems.extend(row_problems)
            continue
        video = _find_video(row, data.parent, videos)
        if video is None:
            looked = row.get("video_path") or f"{videos}/{row['video_idx']}.mp4"
            problems.append(f"{where} field 'video_path': video not found ({looked})")
            continue
        texts = option_texts(row["option"])
        prepared.append({**row, "option": [f"{chr(ord('A') + j)}. {t}" for j, t in enumerate(texts)],
                         "answer": int(row["answer"]), "video_path": str(video)})
    if problems:
        raise TaskDataError(f"{len(problems)} problem(s) in {data}:\n" + "\n".join(problems))
    return prepared


def write_task_folder(data: str | Path, videos: str | Path | None, out: str | Path) -> Path:
    """Write ``out`` with the shipped EgoSchema yamls and the prepared rows; returns ``out``."""
    rows = prepare_rows(data, videos)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for yaml_file in sorted(TASKS_DIR.glob(EGOSCHEMA_YAMLS)):
        shutil.copyfile(yaml_file, out / yaml_file.name)
    with open(out / DATA_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return out
