"""Per-frame feature transforms shared by training and inference: normalisation, the release's
frame sampling to ``max_feats`` rows, and CapDec-style noise."""

from __future__ import annotations

import math

import torch


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Unit-normalise along ``dim``; zero vectors stay zero (as padded frames must)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def sample_frames(features: torch.Tensor, max_feats: int) -> torch.Tensor:
    """Bring ``[T, F]`` frame features to exactly ``max_feats`` rows, as the release does.

    Longer sequences keep rows ``(j * T) // max_feats``; shorter ones are padded with zero rows
    (which the release does not mask).

    Args:
        features: ``[T, F]`` per-frame features, T >= 1.
        max_feats: the model's video slots (``TopaConfig.max_feats``, 10 in the release).
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"expected frame features of shape [T>=1, F], got {tuple(features.shape)}")
    n = features.shape[0]
    if n > max_feats:
        return features[torch.tensor(sampled_rows(n, max_feats), device=features.device)]
    if n < max_feats:
        pad = features.new_zeros(max_feats - n, features.shape[1])
        return torch.cat([features, pad], dim=0)
    return features


def sampled_rows(n: int, max_feats: int) -> list[int]:
    """The rows of ``n`` frames that ``sample_frames`` keeps, in slot order (all of them when n <= max_feats;
    the remaining slots are zero padding)."""
    if n <= max_feats:
        return list(range(n))
    return [(j * n) // max_feats for j in range(max_feats)]


def noise_injection(x: torch.Tensor, variance: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """CapDec-style noise as in the release: normalise, add N(0, variance) noise, add a
    second noise vector of norm sqrt(variance), normalise. variance 0 returns x unchanged."""
    if variance < 0:
        raise ValueError(f"noise variance must be >= 0, got {variance}")
    if variance == 0:
        return x
    std = math.sqrt(variance)

    def gaussian() -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    noisy = l2_normalize(x) + gaussian() * std
    return l2_normalize(noisy + l2_normalize(gaussian()) * std)
