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
