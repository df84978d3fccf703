"""ALiBi: attention with linear biases (Press et al. 2022), and P15's factored RoPE x ALiBi.

Legend: H heads, T queries, S keys.

ALiBi adds no position embedding to the tokens. Instead every head h adds a penalty proportional
to the distance between query i and key j to its attention scores,

    score_h(i, j) = q_i . k_j / sqrt(Dh) - m_h * |i - j|,

so a head with a large slope m_h looks at its neighbourhood and one with a small slope far back.
The bias depends on the distance only, never on absolute positions, which is why a model trained
on short sequences still runs (and behaves) on longer ones: a learned absolute table ends at the
trained length, and RoPE's rotation meets angles it has never seen.

Slopes:
- `geometric_slopes`: ALiBi's 2^(-8 h / H), h = 1..H (for H = 8: 1/2, 1/4, ..., 1/256). The paper
  derives the ladder for a power-of-two H; we use the same formula for any H (the ladder still
  runs from 2^(-8/H) down to 2^-8), not the paper's interleaving of two power-of-two ladders.
- `harmonic_slopes`: 1/h, h = 1..H (1, 1/2, 1/3, ...). P15 pairs RoPE with ALiBi "with
  harmonic-series slopes"; only its abstract is known (papers/details-P1-P17.md, section 15), so
  we read the harmonic series literally. These slopes are steeper than the geometric ones: every
  head is local, and RoPE carries the content-relative part of the score.

RoPE x ALiBi ("factored"): queries and keys are rotated by RoPE as usual and the per-head ALiBi
bias is added to the rotated scores, score = rot(q_i) . rot(k_j) / sqrt(Dh) - m_h |i - j|. The
attention weight factors into a RoPE (relative-phase, content) term times exp(-m_h |i - j|), a
distance prior that dominates at distances RoPE was never trained on.

The bias is an additive float mask for `F.scaled_dot_product_attention`; queries sit at positions
offset .. offset + T - 1 when a KV cache already holds `offset` keys (nn/attention.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def geometric_slopes(heads: int) -> Tensor:
    """ALiBi's per-head slopes 2^(-8 h / H), h = 1..H: [H] float32, steepest first."""
    h = torch.arange(1, heads + 1, dtype=torch.float64)
    return (2.0 ** (-8.0 * h / heads)).float()


def harmonic_slopes(heads: int) -> Tensor:
    """P15's harmonic-series slopes 1/h, h = 1..H: [H] float32, steepest first."""
    return (1.0 / torch.arange(1, heads + 1, dtype=torch.float64)).float()


def alibi_bias(slopes: Tensor, queries: int, keys: int, offset: int = 0) -> Tensor:
    """The additive score bias -m_h |i - j| of queries at positions offset .. offset + queries - 1
    against keys at positions 0 .. keys - 1: [H, T, S], slopes' dtype and device.

    Causal attention only ever reads j <= i, where this is -m_h (i - j); the absolute value keeps
    the bias symmetric (and meaningful) for bidirectional attention.
    """
    i = torch.arange(offset, offset + queries, device=slopes.device)
    j = torch.arange(keys, device=slopes.device)
    distance = (i[:, None] - j[None, :]).abs().to(slopes.dtype)  # [T, S]
    return -slopes[:, None, None] * distance                      # [H, T, S]
