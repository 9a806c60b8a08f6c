"""Which checkpoint a restarted run resumes from: the newest one whose files are all complete.

A run killed while writing its newest checkpoint leaves it truncated; resuming from it fails deep inside
torch.load or safetensors (or, worse, loads a partial state). The newest complete one is used instead,
and the log names the damaged file and the fallback."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

from topa_plugin.utils.errors import TopaInputError

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


class CheckpointError(TopaInputError, ValueError):
    """No checkpoint to resume from is usable; names the damaged file."""


def _file_problem(path: Path) -> str | None:
    """Why one checkpoint file is unreadable (truncated), judged from its format's framing, or None."""
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            return f"truncated or not JSON ({exc})"
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            return f"truncated or not safetensors ({exc})"
    elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
        return "truncated or not a torch.save zip archive"
    return None


def checkpoint_problem(directory: str | Path) -> str | None:
    """The first missing or truncated file of a Trainer checkpoint directory (naming it), or None."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        return f"{directory / STATE_FILE}: missing (the checkpoint was not finished)"
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        problem = _file_problem(path)
        if problem is not None:
            return f"{path}: {problem}"
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)] if output_dir.is_dir() else []
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)), reverse=True)


def resume_checkpoint(output_dir: str | Path, requested: str | None = None) -> str | None:
    """The checkpoint to resume from: ``requested`` if given (it must be complete), else the newest complete
    ``checkpoint-N`` in ``output_dir``, falling back past damaged ones with a warning; None when there is none."""
    if requested:
        problem = checkpoint_problem(requested)
        if problem is not None:
            raise CheckpointError(f"--resume_from_checkpoint {requested}: {problem}")
        return requested
    candidates = _checkpoints(Path(output_dir))
    damaged = []
    for checkpoint in candidates:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if damaged:
                logger.warning("resuming from %s instead of the newer %s", checkpoint, ", ".join(damaged))
            return str(checkpoint)
        logger.warning("cannot resume from %s: %s", checkpoint.name, problem)
        damaged.append(checkpoint.name)
    if damaged:
        raise CheckpointError(f"{output_dir}: no complete checkpoint to resume from ({', '.join(damaged)} damaged); "
                              "delete them to start over")
    return None
