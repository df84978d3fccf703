"""A directly supervised segmenter: the reference CAM-Seg (P33) is compared with.

A few 3x3 convolutions at full resolution (dilations widen the view to ~19 px, enough to see a
whole 32-px Shapes object and tell its outline), trained with per-pixel cross-entropy.

Legend: B batch, K classes, H x W pixels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvSegmenter(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dilations: tuple[int, ...] = (1, 1, 2, 4, 1)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for d in dilations:
            layers += [nn.Conv2d(channels, width, 3, padding=d, dilation=d), nn.GroupNorm(8, width), nn.SiLU()]
            channels = width
        layers.append(nn.Conv2d(width, num_classes, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> class logits [B, K, H, W]."""
        return self.net(x)

    def loss(self, x: Tensor, classes: Tensor) -> Tensor:
        """Mean per-pixel cross-entropy against class maps int64 [B, H, W]."""
        return F.cross_entropy(self(x), classes.long())
