"""Atomic file writes: a file under its final name is always complete, and has the permissions the user's
umask gives (safetensors and mkstemp create 0600 files, which other users and jobs then cannot read)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process umask, read without changing it (os.umask would race with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permissions of a new file as open() would create it: 0o666 less the umask."""
    return 0o666 & ~umask()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, tmp: Path | None = None,
                 before_replace: Callable[[], None] | None = None) -> Path:
    """``write(tmp)`` fills a temporary sibling, which is fsynced, given ``path``'s current mode (or the
    umask's) and renamed over ``path``. ``before_replace`` runs just before the rename (fault injection)."""
    path = Path(path)
    tmp = tmp or path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.is_file() else new_file_mode())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def share_like_new_files(directory: str | os.PathLike) -> None:
    """Give the files a third-party writer just left private (safetensors through transformers' save_pretrained
    creates 0600 files) the mode a new file gets under the umask."""
    mode = new_file_mode()
    for path in Path(directory).rglob("*"):
        if path.is_file() and path.stat().st_mode & 0o777 == 0o600 != mode:
            os.chmod(path, mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    """``atomic_write`` of a bytes payload."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), **kwargs)
