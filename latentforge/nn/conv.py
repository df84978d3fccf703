"""Convolutional blocks for autoencoders of any spatial rank (1D sequences, 2D images, 3D video).

Residual block, down- and up-sampling, and `conv_levels` (the level stack of an encoder or a
decoder), each with `dims` = 1, 2 or 3; the parameter names do not depend on `dims`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


_CONV: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    if dims not in _CONV:
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    return _CONV[dims](*args, **kwargs)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv(3) twice with a (1x1 projected) skip. [B, Cin, *S] -> [B, Cout, *S]."""

    def __init__(self, cin: int, cout: int, dims: int = 2) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), conv_nd(dims, cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), conv_nd(dims, cout, cout, 3, padding=1)
        self.skip = conv_nd(dims, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve every spatial size with a strided size-3 convolution. [B, C, *S] -> [B, C, *S/2]."""

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial size: nearest-neighbour, then a size-3 convolution (no checkerboard)."""

    def __init__(self, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def conv_levels(channels: tuple[int, ...], blocks: int, resample: type[nn.Module], dims: int = 2) -> nn.Sequential:
    """`blocks` residual blocks per level; `resample` (Downsample or Upsample) between levels."""
    layers: list[nn.Module] = []
    cin = channels[0]
    for i, c in enumerate(channels):
        for _ in range(blocks):
            layers.append(ResBlock(cin, c, dims))
            cin = c
        if i < len(channels) - 1:
            layers.append(resample(c, dims))
    return nn.Sequential(*layers)


def probe_trunk(width: int) -> list[nn.Module]:
    """The Shapes probe network's conv stages (eval/probe.py), [B, 3, S, S] in [-1, 1] ->
    [B, 2 * width, S / 4, S / 4]: conv-BN-SiLU at full, 1/2 and 1/4 resolution. A list, so the
    probe's Sequential keeps its parameter names; P6's RAE reuses the trained stages as its encoder."""
    def stage(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.SiLU()]

    w = width
    return [*stage(3, w), *stage(w, w, 2), *stage(w, 2 * w), *stage(2 * w, 2 * w, 2), *stage(2 * w, 2 * w)]
