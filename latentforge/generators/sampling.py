"""Turning logits into tokens: temperature, top-k, top-p, guidance; reproducible with a generator."""

from __future__ import annotations

import torch
from torch import Tensor


def guide(logits: Tensor, cfg_scale: float) -> Tensor:
    """Classifier-free guidance on a batch laid out as [cond; uncond]: u + s (c - u)."""
    if cfg_scale == 1.0:
        return logits
    cond, uncond = logits.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits [B, V]."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of logits [B, V] -> [B] int64.

    Inverse-CDF sampling with explicitly drawn uniforms: the same generator state gives the
    same tokens however the logits were computed (cached or not), up to ties at the boundary.
    temperature 0 means greedy.
    """
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(1)
    return idx.clamp_max(probs.shape[-1] - 1)
