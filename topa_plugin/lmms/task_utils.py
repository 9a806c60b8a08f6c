"""Functions the shipped EgoSchema task yamls call (``!function topa_plugin.lmms.task_utils.*``).

Unlike lmms-eval's own ``egoschema_doc_to_visual`` (a fixed ``$HF_HOME/egoschema/videos``
folder and ``sys.exit`` when a file is missing), videos are found per row and a missing
video raises an error naming the row and every path tried.
"""

from __future__ import annotations

import os
from pathlib import Path

from topa_plugin.lmms.choices import option_texts

VIDEO_DIR_ENV = "TOPA_EGOSCHEMA_VIDEOS"
_SUFFIXES = (".mp4", ".MP4")


class MissingVideoError(FileNotFoundError):
    """A task row whose video file does not exist."""


def _video_dirs() -> list[Path]:
    """``$TOPA_EGOSCHEMA_VIDEOS`` if set, else lmms-eval's EgoSchema download folder."""
    if os.environ.get(VIDEO_DIR_ENV):
        return [Path(os.environ[VIDEO_DIR_ENV]).expanduser()]
    hf_home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return [hf_home / "egoschema" / "videos"]


def resolve_video(doc: dict) -> Path:
    """The row's ``video_path`` if it has one, else ``<video dir>/<video_idx>.mp4``."""
    if doc.get("video_path"):
        candidates = [Path(doc["video_path"]).expanduser()]
    else:
        candidates = [d / f"{doc['video_idx']}{s}" for d in _video_dirs() for s in _SUFFIXES]
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise MissingVideoError(
        f"EgoSchema row video_idx={doc.get('video_idx')!r}: video not found (tried {tried}); "
        f"write the task folder with `topa lmms-tasks --data FILE --videos DIR --out DIR` or set {VIDEO_DIR_ENV}"
    )


def doc_to_visual(doc: dict) -> list[str]:
    return [str(resolve_video(doc))]


def doc_to_choice(doc: dict) -> list[str]:
    """Option texts without their "A. " prefixes.

    lmms-eval's ``egoschema_doc_to_choice`` keeps only the text up to the option's second
    ".", which would make the mcppl variant rank other texts than the generate variant.
    """
    return option_texts(doc["option"])
