"""The check every frame-feature tensor passes where it enters (files, caches, stores, the Python API):
NaN/Inf or an all-zero frame would otherwise flow through normalisation and scoring into a silently
wrong answer (every option NaN, option A "wins")."""

from __future__ import annotations

from topa_plugin.utils.errors import TopaInputError

_SHOWN = 10


class FeatureValueError(TopaInputError, ValueError):
    """Frame features holding NaN/Inf or zero vectors; the message names where they came from."""


def _rows(mask) -> str:
    rows = mask.nonzero().flatten().tolist()
    return f"{rows[:_SHOWN]}" + (f" and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else "")


def check_frame_features(features, source: str, error: type[ValueError] = FeatureValueError):
    """Return the tensor ``features`` [T, D] unchanged if every frame is finite with a non-zero norm; else raise
    ``error`` (the caller's own input-error type) naming ``source`` and the frames. Imports torch only here, so
    modules that run in decode workers can import this one."""
    import torch

    rows = features.detach()
    rows = rows.reshape(-1, rows.shape[-1]) if rows.ndim >= 2 else rows.reshape(1, -1)
    largest = rows.abs().amax(dim=1)  # NaN propagates; one pass serves both checks
    bad = ~torch.isfinite(largest)
    if bad.any():
        raise error(f"{source}: frame(s) {_rows(bad)} hold NaN or infinite values")
    zero = largest == 0
    if zero.any():
        raise error(f"{source}: frame(s) {_rows(zero)} are zero vectors (no direction to normalise)")
    return features
