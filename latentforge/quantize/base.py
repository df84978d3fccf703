"""The shared bottleneck interface and codebook statistics."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Quantized(NamedTuple):
    z_q: Tensor                  # [B, *grid, C] quantized latents (straight-through in training)
    codes: Tensor                # [B, *grid] int64 (or [B, *grid, depth] for residual VQ)
    losses: dict[str, Tensor]    # weighted terms to add to the training loss
    stats: dict[str, Tensor]     # detached diagnostics: usage, perplexity, ...


def codebook_stats(counts: Tensor) -> dict[str, float]:
    """Usage (fraction of codes used at least once), perplexity and dead codes from code counts [K]."""
    counts = counts.double()
    total = counts.sum().clamp_min(1)
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {
        "codebook_usage": used / counts.numel(),
        "perplexity": float(entropy.exp()),
        "dead_codes": counts.numel() - used,
    }


def code_histogram(codes: Tensor, size: int) -> Tensor:
    return torch.bincount(codes.reshape(-1), minlength=size)
