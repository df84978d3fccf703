"""Causal decoding with a KV cache: the sampler of the autoregressive families.

Legend: rows = samples x guidance copies, T0 prefix length, D width.

The autoregressive generator runs it over grid positions; the hierarchical one twice, over
positions (its base transformer, also in sliding windows past the training length) and over the
RVQ levels of one position (its depth transformer). The axial generator decodes along two axes
with per-row and per-column caches (axial.py) and does not fit this one-axis loop.

The parallel samplers live with their schedules: the masked-decoding schedule in masking.py
(MaskGIT's confidence loop in masked.py, MAR's random order in `masking.reveal_in_order`), the
diffusion ODE / DDIM in noise.py (`denoise`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from latentforge.nn.kv_quant import Staircase
from latentforge.nn.transformer import Transformer


def causal_decode(stack: Transformer, first: Tensor, steps: int, emit: Callable[[int, Tensor], Tensor | None], *,
                  use_cache: bool = True, kv_cache: str | Staircase = "full", **cross) -> None:
    """Run a causal transformer one position per step; `emit` draws and feeds back.

    Args:
        stack: the causal transformer; `cross` goes to every call (context_kv, context_mask).
        first: [rows, T0, D] the inputs known before the first draw: a BOS (T0 = 1), or a prefix
            of known positions encoded in one pass (a streaming window).
        steps: positions to draw.
        emit: emit(i, h) gets the stack's output at the newest position, h [rows, D], draws step
            i's token(s) and returns the input of the next position [rows, 1, D] (None after the last).
        use_cache: earlier positions' keys/values come from a KV cache and each step feeds only
            the newest input. False recomputes the whole prefix every step: the reference, equal
            up to float rounding.
        kv_cache: how the cache holds keys and values: "full" (the model's dtype), "int8", "int4",
            "int2", "staircase" (older blocks in fewer bits, P15), or a `Staircase` (nn/kv_quant.py).
    """
    rows, T0 = first.shape[:2]
    caches = stack.new_caches(rows, T0 + steps - 1, first, kv_cache) if use_cache else None
    fed: list[Tensor] = []
    x: Tensor | None = first
    for i in range(steps):
        fed.append(x)
        h = stack(x if use_cache else torch.cat(fed, dim=1), causal=True, caches=caches, **cross)  # [rows, T, D]
        x = emit(i, h[:, -1])
