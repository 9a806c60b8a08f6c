"""The text-to-image bridge: frame sampling and projection of CLIP features onto a text memory.

TOPA trains on CLIP *text* features and reads CLIP *image* features at zero-shot time; the
projection onto a memory of text features (DeCap-style) closes that modality gap.
"""

from __future__ import annotations

import torch


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Unit-normalise along ``dim``; zero vectors stay zero (as padded frames must)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def sample_frames(features: torch.Tensor, max_feats: int) -> torch.Tensor:
    """Bring ``[T, F]`` frame features to exactly ``max_feats`` rows, as the release does.

    Longer sequences keep rows ``(j * T) // max_feats``; shorter ones are padded with zero rows
    (which the release does not mask).
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"expected frame features of shape [T>=1, F], got {tuple(features.shape)}")
    n = features.shape[0]
    if n > max_feats:
        index = torch.div(torch.arange(max_feats) * n, max_feats, rounding_mode="floor")
        return features[index.to(features.device)]
    if n < max_feats:
        pad = features.new_zeros(max_feats - n, features.shape[1])
        return torch.cat([features, pad], dim=0)
    return features


def project_to_memory(frames: torch.Tensor, memory: torch.Tensor, temperature: float = 100.0) -> torch.Tensor:
    """Replace each frame feature f by normalise(softmax(temperature * M f)^T M).

    A zero (padded) frame gets uniform weights, i.e. the normalised mean of the memory.
    """
    memory = memory.to(device=frames.device, dtype=torch.float32)
    flat = frames.reshape(-1, frames.shape[-1]).float()
    weights = torch.softmax(temperature * flat @ memory.T, dim=-1)
    projected = l2_normalize(weights @ memory)
    return projected.reshape(frames.shape).to(frames.dtype)
