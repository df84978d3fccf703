"""The shared bottleneck interface and codebook statistics.

Every bottleneck maps encoder outputs z [B, *grid, dim] to a `Quantized`: the latents the decoder
reads (straight-through or reparameterised in training), the codes a generator models (int64
indices for discrete bottlenecks, `[B, *grid, depth]` for residual ones; the latent vectors
themselves for continuous ones), weighted loss terms and detached statistics. A recipe picks a
bottleneck by `name` (`tokenizer.quantizer.name: fsq`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from latentforge.config import ModelConfig


class Quantized(NamedTuple):
    z_q: Tensor                  # [B, *grid, C] quantized latents (straight-through in training)
    codes: Tensor                # [B, *grid] int64 (or [B, *grid, depth] for residual VQ)
    losses: dict[str, Tensor]    # weighted terms to add to the training loss
    stats: dict[str, Tensor]     # detached diagnostics: usage, perplexity, ...


@dataclass
class QuantizerConfig(ModelConfig):
    kind = "quantizer"
    dim: int = 32  # channels of the encoder output the bottleneck reads


class Quantizer(nn.Module):
    """Base class of every bottleneck. Discrete ones set `discrete = True` and `vocab_size`."""

    config: QuantizerConfig
    discrete: bool = True
    # Codes of several levels per position whose first k levels decode alone (residual VQ): the
    # evaluation then reports quality against the number of levels decoded.
    prefix_decodable: bool = False

    @property
    def vocab_size(self) -> int | None:
        """Codes per level (None for continuous bottlenecks)."""
        return None

    @property
    def depth(self) -> int:
        """Code levels per position (residual quantizers: more than one)."""
        return 1

    def code_grid(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """The grid of the codes a generator models for latents on `grid`: the same grid, except
        for multi-scale quantizers (every scale's tokens in one row)."""
        return tuple(grid)

    def code_scales(self) -> tuple[int, ...]:
        """Tokens per scale of multi-scale codes, coarse first; () for single-scale bottlenecks."""
        return ()

    @property
    def latent_channels(self) -> int:
        """Channels of the latents a continuous bottleneck hands to a generator."""
        return self.config.dim

    def forward(self, z: Tensor) -> Quantized:
        raise NotImplementedError

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes (as in `Quantized.codes`) -> the latents the decoder reads [B, *grid, dim]."""
        raise NotImplementedError


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


def usage_stats(counts: Tensor) -> dict[str, Tensor]:
    """Batch statistics from code counts [K]: fraction of codes used, perplexity exp(H(p))."""
    p = counts.float() / counts.sum().clamp_min(1)
    return {
        "usage": (counts > 0).float().mean(),
        "perplexity": torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()),
    }


def assignment_entropies(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Entropy penalty terms (MaskGIT / LFQ) of soft code assignments p_n = softmax(logits_n), logits
    [N, K] in fp32: the mean per-vector entropy and the entropy of the batch-mean assignment."""
    logp = torch.log_softmax(logits, dim=-1)  # [N, K]
    p = logp.exp()
    per_vector = -(p * logp).sum(-1).mean()
    mean_p = p.mean(0)  # [K]
    # A code far from every vector has mean_p = 0 exactly in fp32; the clamp keeps 0 * log 0 at 0.
    codebook = -(mean_p * torch.log(mean_p.clamp_min(1e-10))).sum()
    return per_vector, codebook


def code_histogram(codes: Tensor, size: int) -> Tensor:
    """How many times each of the `size` codes occurs in `codes` (int64 [size]).

    A scatter-add rather than `torch.bincount`: bincount's length depends on the largest code,
    a value on the device, so it breaks a torch.compile graph; this one's length is `size`."""
    flat = codes.reshape(-1)
    return torch.zeros(size, dtype=torch.long, device=codes.device).scatter_add_(0, flat, torch.ones_like(flat))
