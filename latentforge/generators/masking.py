"""Masking schedules for masked generation, shared by MaskGIT/ENAT (masked.py) and MAR (mar.py).

Legend: B batch, N tokens, K decoding steps, r mask ratio (fraction of tokens masked).

Training hides a random subset of each example's tokens: draw a ratio r per example, mask the
ceil(r N) tokens of lowest rank in a random order of the N positions (`random_rank_mask`). The
two families draw r differently:
  MaskGIT   r = cos(pi/2 u), u ~ U(0, 1)                          (`cosine_ratio`)
  MAR       r ~ N(1, std^2) truncated to [ratio_min, 1]          (`truncated_normal`)
The count rounds up, minus 1e-6 so that a ratio landing on k/N up to float error masks k tokens,
not k + 1; every example masks at least one token.

Sampling starts from all N masked and reveals tokens over K steps along MaskGIT's cosine: after
step k the number still masked is
    m_k = floor(N cos(pi/2 (k+1)/K) + 1e-9),  clamped to [1, m_{k-1} - 1], and m_{K-1} = 0
(`masked_counts`; `reveal_counts` are the differences). The 1e-9 makes exact products floor to
themselves: floating point gives 64 cos(pi/2 * 26/39) = 31.999999999999993, not 32. The clamp
is the one of the MaskGIT and MAR reference code: each step reveals at least one token while
more than one is left, one stays masked until the last step, and the last step reveals all.
With more steps than tokens some steps reveal nothing; the samplers skip them.

MaskGIT picks the tokens to reveal at each step by confidence (masked.py); MAR reveals them in a
random order fixed at the start (`reveal_in_order`), drawing each with its diffusion head.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- sampling schedule


def masked_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each of `steps` decoding steps (see the module doc); the last is 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    counts, masked = [], num_tokens
    for k in range(steps):
        if k == steps - 1:
            masked = 0
        else:
            cosine = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps) + 1e-9)
            masked = max(1, min(masked - 1, cosine))
        counts.append(masked)
    return counts


def reveal_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens revealed at each of `steps` decoding steps: they sum to num_tokens."""
    before = [num_tokens, *masked_counts(num_tokens, steps)]
    return [a - b for a, b in zip(before, before[1:])]


# ----------------------------------------------------------------------------- training masks


def cosine_ratio(batch: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
    """MaskGIT's training mask ratios [B]: cos(pi/2 u), u ~ U(0, 1)."""
    u = torch.rand(batch, generator=generator, device=device)
    return torch.cos(math.pi / 2 * u)


def truncated_normal(n: int, mean: float, std: float, low: float, high: float, *,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """[n] draws of N(mean, std^2) restricted to [low, high], by inverse-CDF (exact, no rejection)."""
    lo, hi = (torch.special.ndtr(torch.tensor((v - mean) / std, dtype=torch.float64)) for v in (low, high))
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    x = mean + std * torch.special.ndtri(lo.to(u.device) + (hi - lo).to(u.device) * u)
    return x.clamp(low, high).float()


def random_rank_mask(ratio: Tensor, num_tokens: int, *, generator: torch.Generator | None = None) -> Tensor:
    """[B, N] bool, True where masked: per example, the ceil(r N) positions of lowest rank in a
    random order (at least one). ratio [B] in [0, 1].

    The order is drawn after the ratios, from the same generator, so a seeded caller gets the
    same masks as before the ratio law moved here.
    """
    count = torch.ceil(ratio * num_tokens - 1e-6).clamp(1, num_tokens)  # [B]
    rank = torch.rand(len(ratio), num_tokens, generator=generator, device=ratio.device).argsort(1).argsort(1)
    return rank < count[:, None]


# ----------------------------------------------------------------------------- MAR's sampler order


def reveal_in_order(order: Tensor, steps: int) -> Iterator[Tensor]:
    """The positions revealed at each decoding step, following a fixed order per sample.

    order [n, N]: a permutation of the N positions per sample (MAR draws it at random). Yields
    [n, k] slices of it sized by `reveal_counts`, skipping steps that reveal nothing.
    """
    start = 0
    for count in reveal_counts(order.shape[1], steps):
        if count:
            yield order[:, start : start + count]
            start += count
