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


def token_probs(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None) -> Tensor:
    """The distribution `sample_tokens` draws from, fp32 over the last axis of logits [..., V].

    temperature 0 (greedy) is the one-hot of the argmax. Speculative decoding compares a draft's and
    a target's distributions token by token, so both must be the ones really drawn from.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    return filter_logits(logits / temperature, top_k, top_p).softmax(-1)


def draw_from(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row of (unnormalised) probabilities [B, V] -> [B] int64, by inverse CDF with
    explicitly drawn uniforms: the same generator state gives the same tokens however the
    probabilities were computed (cached or not), up to ties at the boundary."""
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(1)
    return idx.clamp_max(probs.shape[-1] - 1)


def sample_tokens(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of logits [B, V] -> [B] int64 (`token_probs`, then `draw_from`).
    temperature 0 means greedy and draws no random number."""
    if temperature == 0:
        return logits.float().argmax(-1)
    return draw_from(token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p), generator)
