"""Orthonormal 2D Haar wavelet transform of image batches, one or more levels.

Shapes: B batch, C channels, H x W image; level l works on an (H / 2^l) x (W / 2^l) grid.

One level splits every non-overlapping 2x2 block

    a b
    c d

into four coefficients (orthonormal: the 4x4 matrix below is its own inverse):

    LL = (a + b + c + d) / 2    low-pass along H and W       (pywt: cA)
    LH = (a + b - c - d) / 2    low along W, high along H    (pywt: cH, horizontal edges)
    HL = (a - b + c - d) / 2    high along W, low along H    (pywt: cV, vertical edges)
    HH = (a - b - c + d) / 2    high along both              (pywt: cD, diagonal)

Further levels transform LL again. Being orthonormal, the transform keeps the sum of
squares (Parseval), so a squared error splits exactly into per-band parts; the P34 loss
and the per-band PSNR in `latentforge.tokenizers.losses` rely on that.
"""

from __future__ import annotations

import torch
from torch import Tensor

BANDS: tuple[str, ...] = ("LH", "HL", "HH")  # order of the detail bands along dim 2 of a level


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be an integer >= 1, got {levels!r}")


def haar_dwt(x: Tensor, levels: int = 1) -> tuple[Tensor, list[Tensor]]:
    """Multi-level orthonormal Haar decomposition.

    Args:
        x: [B, C, H, W] floats; H and W must be multiples of 2**levels.
        levels: number of decomposition levels (>= 1).

    Returns:
        low: [B, C, H / 2^L, W / 2^L] approximation after L = `levels` levels.
        highs: one tensor per level, finest first: highs[l - 1] is
            [B, C, 3, H / 2^l, W / 2^l] holding (LH, HL, HH) of level l.

    Raises:
        ValueError: for a non-4D or non-float input, or a side not divisible by 2**levels.
    """
    _check_levels(levels)
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"haar_dwt expects float images [B, C, H, W], got {x.dtype} {list(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2**levels or w % 2**levels:
        raise ValueError(f"haar_dwt with levels={levels} needs H and W divisible by {2**levels}, "
                         f"got H={h}, W={w}")
    highs = []
    low = x
    for _ in range(levels):
        b, c, h, w = low.shape
        blocks = low.reshape(b, c, h // 2, 2, w // 2, 2)  # [B, C, h, 2 (row in block), w, 2 (col)]
        a, bb = blocks[:, :, :, 0, :, 0], blocks[:, :, :, 0, :, 1]  # top-left, top-right
        cc, d = blocks[:, :, :, 1, :, 0], blocks[:, :, :, 1, :, 1]  # bottom-left, bottom-right
        # Butterfly: sums and differences along W first, then along H (same result, fewer adds).
        top_sum, top_diff = a + bb, a - bb
        bot_sum, bot_diff = cc + d, cc - d
        low = (top_sum + bot_sum) / 2                                   # [B, C, h, w]
        lh = (top_sum - bot_sum) / 2
        hl = (top_diff + bot_diff) / 2
        hh = (top_diff - bot_diff) / 2
        highs.append(torch.stack((lh, hl, hh), dim=2))                # [B, C, 3, h, w]
    return low, highs


def haar_idwt(low: Tensor, highs: list[Tensor]) -> Tensor:
    """Invert `haar_dwt`: (low, highs finest first) -> [B, C, H, W].

    Raises:
        ValueError: when `highs` is empty or a level's shape does not fit the one above it.
    """
    if not highs:
        raise ValueError("haar_idwt needs at least one level of detail bands, got an empty list")
    if low.dim() != 4:
        raise ValueError(f"low must be [B, C, h, w], got {list(low.shape)}")
    x = low
    # Coarsest level first: each step doubles the side of the running approximation.
    for level in range(len(highs), 0, -1):
        band = highs[level - 1]
        b, c, h, w = x.shape
        if tuple(band.shape) != (b, c, 3, h, w):
            raise ValueError(f"highs[{level - 1}] (level {level}) must be [{b}, {c}, 3, {h}, {w}] "
                             f"to match the approximation, got {list(band.shape)}")
        lh, hl, hh = band.unbind(dim=2)
        # The 2x2 Haar matrix is symmetric and orthonormal, so synthesis is the analysis
        # butterfly again: undo the split along H (giving halves of a + b, c + d, a - b,
        # c - d), then the split along W.
        top_sum, bot_sum = (x + lh) / 2, (x - lh) / 2
        top_diff, bot_diff = (hl + hh) / 2, (hl - hh) / 2
        a, bb = top_sum + top_diff, top_sum - top_diff
        cc, d = bot_sum + bot_diff, bot_sum - bot_diff
        top = torch.stack((a, bb), dim=-1)                              # [B, C, h, w, 2]
        bottom = torch.stack((cc, d), dim=-1)
        x = torch.stack((top, bottom), dim=3).reshape(b, c, 2 * h, 2 * w)  # [B, C, h, 2, w, 2] -> [B, C, 2h, 2w]
    return x
