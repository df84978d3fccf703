"""Convolutional blocks for image autoencoders: residual block, down- and up-sampling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with a (1x1 projected) skip. [B, Cin, H, W] -> [B, Cout, H, W]."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour then 3x3 convolution (no checkerboard artefacts)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
