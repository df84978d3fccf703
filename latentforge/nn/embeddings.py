"""Position embeddings for latent grids of any rank (1D sequences, 2D images, 3D video)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GridPositionEmbedding(nn.Module):
    """Learned factorised position embedding: one table per grid axis, summed.

    For a grid (H, W) it returns [H*W, D] in raster order, row h col w = row[h] + col[w].
    Factorising keeps it small and lets the model know the 2D neighbourhood explicitly.
    """

    def __init__(self, grid: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(n, dim) * 0.02) for n in self.grid)

    def forward(self) -> Tensor:
        out = None
        for axis, table in enumerate(self.tables):
            shape = [1] * len(self.grid) + [table.shape[1]]
            shape[axis] = self.grid[axis]
            term = table.view(shape)
            out = term if out is None else out + term  # broadcasts to [*grid, D]
        return out.reshape(math.prod(self.grid), -1)


def sincos_2d(grid: tuple[int, int], dim: int) -> Tensor:
    """MAE's and DiT's fixed 2D sine-cosine positions, [H*W, D] float32 in raster order.

    Token (h, w) gets [enc(w), enc(h)]: the first half of the channels encodes the column, the
    second the row (DiT's code calls the halves "h" and "w", but its meshgrid puts w first), with
    enc(x) = [sin(x omega), cos(x omega)], omega_i = 10000^(-i / (D/4)), computed in float64.
    """
    if len(grid) != 2 or dim % 4:
        raise ValueError(f"sin-cos positions need a 2D grid and a width divisible by 4, got {tuple(grid)}, {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # [D/4]

    def enc(x: Tensor) -> Tensor:
        angles = x.to(torch.float64)[:, None] * omega[None]                              # [M, D/4]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)                           # [M, D/2]

    H, W = grid
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")        # [H, W] each
    return torch.cat([enc(cols.reshape(-1)), enc(rows.reshape(-1))], dim=-1).float()     # [H*W, D]


class SinCosPositionEmbedding(nn.Module):
    """Fixed 2D sine-cosine positions (`sincos_2d`) for an (H, W) grid: [H*W, D], no parameters.

    The table is a saved buffer, so a checkpoint's own table (DiT stores one) loads as given.
    """

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.register_buffer("table", sincos_2d(self.grid, dim))

    def forward(self) -> Tensor:
        return self.table


class TimestepEmbedding(nn.Module):
    """Diffusion time -> [B, D]: sinusoidal features of `scale * t`, then an MLP (DiT).

    Flow-matching times live in [0, 1] and DDPM times in [0, 1000); `scale` brings both to the
    range the frequencies were chosen for. The features are computed in fp32 under any autocast:
    in bf16, sin(1000 t) for nearby t would round to the same value.
    """

    def __init__(self, dim: int, scale: float = 1.0, freq_dim: int = 256, max_period: float = 10000.0,
                 freq_shift: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        half = freq_dim // 2
        # freq_shift 1 spaces the exponents over half - 1 steps instead of half: diffusers' DiT port
        # (CombinedTimestepLabelEmbeddings, downscale_freq_shift=1); DiT itself uses 0
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - freq_shift))
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        with torch.autocast(t.device.type, enabled=False):
            angles = (t.float() * self.scale)[:, None] * self.freqs[None]  # [B, F/2]
            features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        return self.mlp(features)
