"""Rotary position embedding (RoPE) for token grids of any rank: 1D sequences, 2D images, 3D video.

Legend: B batch, H heads, N tokens, Dh head size, k grid rank, F = Dh / 2 rotated pairs.

RoPE (Su et al. 2021) rotates each consecutive pair (q[2i], q[2i+1]) of a query or key by an
angle pos * freq_i, so a query-key dot product depends on positions only through their
difference. On a grid the head dimension is split among the axes (Step-Video's 3D RoPE: one
share for time, one each for height and width): pair i belongs to one axis and turns with that
axis's coordinate. Each axis gets an even number of head channels, as equal as the head size
allows, and its own frequency ladder base^(-j / pairs_of_axis). Positions are integers on the
token grid in raster order (time slowest), the order every generator flattens its grid in.

    rope = GridRoPE((T, H, W), head_dim)
    cos, sin = rope()                       # [N, F] each
    q = apply_rope(q, cos, sin)             # q [B, H, N, Dh]: pairs rotated
The tables are computed in fp32 and the rotation too, under any autocast: in bf16 the angle of a
far position would round to a neighbour's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def axis_pairs(head_dim: int, rank: int) -> tuple[int, ...]:
    """How many rotated pairs each of `rank` axes gets out of head_dim / 2, as equal as possible,
    the earlier (slower) axes getting fewer when they do not divide: (8, 8) of 32 pairs on a 2D
    grid, (10, 11, 11) on 3D."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head size, got {head_dim}")
    pairs = head_dim // 2
    if pairs < rank:
        raise ValueError(f"head size {head_dim} is too small for RoPE on a rank-{rank} grid "
                         f"(needs at least {2 * rank})")
    base, extra = divmod(pairs, rank)
    return tuple(base + (i >= rank - extra) for i in range(rank))


def rope_tables(coords: Tensor, pairs: tuple[int, ...], base: float) -> tuple[Tensor, Tensor]:
    """cos, sin [N, F] (fp32) of float64 coordinates [N, k]: axis a rotates its `pairs[a]` pairs at
    frequencies base^(-i / pairs[a]), the axes' pairs side by side (F = sum of pairs)."""
    angles = [coords[:, axis, None] * base ** (-torch.arange(n, dtype=torch.float64, device=coords.device) / n)
              for axis, n in enumerate(pairs)]                                            # [N, n] each
    angle = torch.cat(angles, -1)                                                         # [N, F]
    return angle.cos().float(), angle.sin().float()


class GridRoPE(nn.Module):
    """cos, sin tables [N, Dh/2] of the grid's tokens in raster order (buffers, not saved)."""

    def __init__(self, grid: tuple[int, ...], head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.pairs = axis_pairs(head_dim, len(self.grid))
        coords = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in self.grid),
                                            indexing="ij"), -1).reshape(-1, len(self.grid))  # [N, k]
        cos, sin = rope_tables(coords, self.pairs, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The tables [N, F], or those of kept tokens [B, K, F] (keep: int64 [B, K] indices)."""
        if keep is None:
            return self.cos, self.sin
        return self.cos[keep], self.sin[keep]


def sequence_rope(offset: int, length: int, head_dim: int, base: float = 10000.0,
                  device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """cos, sin [length, Dh/2] of 1D positions offset .. offset + length - 1: the rows GridRoPE((L,))
    would hold, for any L. A causal stack decoding with a KV cache asks for the newest positions
    only, and a sequence longer than training needs no table to outgrow."""
    coords = torch.arange(offset, offset + length, dtype=torch.float64, device=device)[:, None]  # [L, 1]
    return rope_tables(coords, axis_pairs(head_dim, 1), base)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs of x [B, H, N, Dh] by the angles of cos, sin ([N, F] shared by the batch,
    or [B, N, F] per example); returns x's dtype."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]                      # [B, 1, N, F]: every head alike
    with torch.autocast(x.device.type, enabled=False):
        pairs = x.float().unflatten(-1, (-1, 2))                   # [B, H, N, F, 2]
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1)
    return rotated.flatten(-2).to(x.dtype)
