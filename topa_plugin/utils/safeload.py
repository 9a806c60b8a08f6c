"""Restricted loading of the TOPA release's pickle files.

The release ships `checkpoint_N.pth` (torch.save zip), Meta's `consolidated.*.pth`
and `memory.pkl` (a plain `pickle.dump` of a tensor). Plain unpickling runs
arbitrary code, so every file goes through an allow-list: tensors, storages,
numpy arrays, builtin containers, OrderedDict and argparse.Namespace. An allow-list of globals
is not enough on its own: pickle's BUILD sets attributes on whatever object it is given, so a
file could rewrite an allowed class or function (argparse.Namespace, torch's rebuild functions)
for the rest of the process. Plain pickles therefore go through the pure-Python unpickler with
BUILD restricted to instances of the allowed data types, as torch's weights_only loader does.

It sits on the floor (utils) because two stages read release pickles: features (per-record
features, memory.pkl) and release (checkpoints, Meta shards).
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import ClassVar

import torch

__all__ = ["UnsafePickleError", "load_release_pickle"]

# First bytes of torch.save's legacy (pre-zip) format: a protocol-2 pickle of its magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's current format is a zip archive


class UnsafePickleError(pickle.UnpicklingError):
    """A release file asked for a global outside the allow-list; nothing was executed."""


def load_release_pickle(path: str | Path, *, mmap: bool = False):
    """Load a torch.save file or a plain pickle without executing foreign code.

    Only tensors, numpy arrays, builtin containers and ``argparse.Namespace`` may be rebuilt, which
    is all the release's checkpoints, memory and feature pickles hold.

    Args:
        path: a release ``checkpoint_N.pth``, ``memory.pkl``, ``features/{idx}.pkl`` or Meta shard.
        mmap: map zip-format torch files instead of reading them (large weight shards).

    Raises:
        UnsafePickleError: the file asks for anything else; the message names the file and global.
        pickle.UnpicklingError: the file is not a readable pickle (e.g. truncated).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_TORCH_MAGIC))
    is_zip = zipfile.is_zipfile(path)
    if head.startswith(_ZIP_MAGIC) and not is_zip:
        raise pickle.UnpicklingError(f"{path}: truncated or corrupt torch.save zip archive (its end record is missing)")
    if is_zip or head == _LEGACY_TORCH_MAGIC:
        return _torch_load(path, str(path), mmap=mmap and is_zip)
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f).load()  # safe: find_class allow-list below
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{path}: {err}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, RuntimeError, TypeError, IndexError,
                KeyError, AttributeError, struct.error) as err:  # the pure-Python unpickler's ways to fail
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({err})") from err


def _torch_load(source, label: str, *, mmap: bool = False):
    """torch.load with weights_only=True, argparse.Namespace allowed, refusals re-raised as ours."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)  # safe: allow-listed
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            if found is None:
                raise pickle.UnpicklingError(f"{label}: not a readable torch file ({err})") from err
            raise UnsafePickleError(f"{label}: {_refusal(found.group(1))}") from None
        except (RuntimeError, EOFError) as err:
            raise pickle.UnpicklingError(f"{label}: not a readable torch file ({err})") from err


def _storage_from_bytes(data: bytes):
    """Replacement for torch.storage._load_from_bytes, which runs an unrestricted torch.load on the bytes."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"storage payload must be bytes, got {type(data).__name__}")
    return _torch_load(io.BytesIO(data), "embedded tensor storage")


def _refusal(name: str) -> str:
    return (
        f"refusing to unpickle global {name} "
        "(only tensors, storages, numpy arrays, containers and argparse.Namespace are allowed)"
    )


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed = {
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _without_hooks(torch._utils._rebuild_tensor_v2, 5),
        ("torch._utils", "_rebuild_tensor_v3"): _without_hooks(torch._utils._rebuild_tensor_v3, 5),
        ("torch._utils", "_rebuild_parameter"): _without_hooks(torch._utils._rebuild_parameter, 2),
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("argparse", "Namespace"): argparse.Namespace,
        # protocol-2 pickles spell bytes objects as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): _latin1_encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # numpy >= 2 pickles under numpy._core, older numpy under numpy.core
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


def _without_hooks(rebuild, hooks_position: int):
    """torch always saves an empty hook dict; a non-empty one would call allow-listed globals on backward."""

    @functools.wraps(rebuild)
    def checked(*args):
        if len(args) > hooks_position and args[hooks_position]:
            raise UnsafePickleError(f"refusing a tensor with backward hooks {args[hooks_position]!r}")
        return rebuild(*args)

    return checked


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1":
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only allow-listed globals (plus torch dtypes) and BUILDs only instances of the
    allowed data types; everything else is refused. Pure Python because the C unpickler cannot
    restrict BUILD; release pickles are a few large byte strings, so this costs little."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        found = _allowed_globals().get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafePickleError(_refusal(f"{module}.{name}"))

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r} in a plain pickle")

    def load_build(self):
        target = self.stack[-2] if len(self.stack) > 1 else None
        if not isinstance(target, _buildable_types()):
            what = getattr(target, "__qualname__", type(target).__qualname__)
            raise UnsafePickleError(f"refusing to set the state of {getattr(target, '__module__', '?')}.{what}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


@functools.cache
def _buildable_types() -> tuple[type, ...]:
    import numpy as np

    return (argparse.Namespace, collections.OrderedDict, np.ndarray, np.dtype)
