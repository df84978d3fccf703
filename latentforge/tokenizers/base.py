"""The tokenizer contract: data <-> a grid of latents, described by a `LatentSpec`.

Latents are channels-last: `[B, *grid, C]` floats for continuous latents, `[B, *grid]` int64
codes for discrete ones (`[B, *grid, depth]` for residual VQ). `grid` is (H, W) for images,
(T, H, W) for video and (T,) for sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from latentforge.config import ModelConfig


@dataclass(frozen=True)
class LatentSpec:
    grid: tuple[int, ...]
    kind: Literal["discrete", "continuous"]
    vocab_size: int | None = None   # discrete: codes per level
    depth: int = 1                  # residual VQ levels
    channels: int | None = None     # continuous: vector size

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


@dataclass
class TokenizerConfig(ModelConfig):
    kind = "tokenizer"


class Tokenizer(nn.Module):
    """Base class. Subclasses set `self.config` and `self.spec` and implement the three methods."""

    config: TokenizerConfig
    spec: LatentSpec

    def encode(self, x: Tensor) -> Tensor:
        """Data -> latents (codes for discrete tokenizers)."""
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        """Latents (codes for discrete tokenizers) -> data."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """'loss' (to minimise) plus named terms and statistics, for the trainer."""
        raise NotImplementedError
