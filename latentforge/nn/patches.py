"""Images <-> patch tokens, in raster order: the layout every ViT in the package shares (the ViT
tokenizer, MP3, token dropping, video probes, NViST).

Legend: B batch, C channels, H W image side, p patch, h w = H/p W/p, N = h*w tokens, D width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, h*w, C*p*p] in raster order (the order GridPositionEmbedding uses)."""
    return F.pixel_unshuffle(x, p).flatten(2).transpose(1, 2)


def unpatchify(tokens: Tensor, p: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of `patchify`: [B, h*w, C*p*p] -> [B, C, h*p, w*p]."""
    x = tokens.transpose(1, 2).unflatten(2, grid)  # [B, C*p*p, h, w]
    return F.pixel_shuffle(x, p)


class PatchEmbedding(nn.Module):
    """ViT's token embedding: each token sees exactly its own patch. [B, C, H, W] -> [B, N, D]."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(in_channels * patch * patch, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(patchify(x, self.patch))
