"""The tokenizer contract: data <-> a grid of latents, described by a `LatentSpec`.

Latents are channels-last: `[B, *grid, C]` floats for continuous latents, `[B, *grid]` int64
codes for discrete ones (`[B, *grid, depth]` for residual VQ). `grid` is (H, W) for images,
(T, H, W) for video and (T,) for sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from latentforge.config import ModelConfig
from latentforge.quantize.base import Quantized, Quantizer


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


def latent_spec(quantizer: Quantizer, grid: tuple[int, ...]) -> LatentSpec:
    """What a bottleneck on `grid` hands to generators."""
    if quantizer.discrete:
        return LatentSpec(grid=tuple(grid), kind="discrete", vocab_size=quantizer.vocab_size, depth=quantizer.depth)
    return LatentSpec(grid=tuple(grid), kind="continuous", channels=quantizer.latent_channels)


def check_latents(spec: LatentSpec, z: Tensor) -> None:
    """Raise a ValueError naming the expected and the given shape/dtype when z does not fit spec."""
    if spec.kind == "discrete":
        shape = (*spec.grid, spec.depth) if spec.depth > 1 else spec.grid
        ok = z.dtype == torch.long and tuple(z.shape[1:]) == tuple(shape)
        if spec.depth > 1 and not ok:  # a prefix of the residual levels decodes too (coarser)
            ok = z.dtype == torch.long and tuple(z.shape[1:-1]) == tuple(spec.grid) and 1 <= z.shape[-1] <= spec.depth
        want = f"int64 codes [B, {', '.join(map(str, shape))}]" + (f" (or its first k of {spec.depth} levels)"
                                                                    if spec.depth > 1 else "")
    else:
        shape = (*spec.grid, spec.channels)
        ok = z.is_floating_point() and tuple(z.shape[1:]) == tuple(shape)
        want = f"float latents [B, {', '.join(map(str, shape))}]"
    if not ok:
        raise ValueError(f"expected {want}, got {z.dtype} {list(z.shape)}")


@dataclass
class TokenizerConfig(ModelConfig):
    kind = "tokenizer"
    # what the network reads, and its batch key: "image" float [B, C, H, W] in [-1, 1], or
    # "sequence" float [B, T, C]; a data set's modality must give the same layout
    layout: ClassVar[str] = "image"


class Tokenizer(nn.Module):
    """Base class. Subclasses set `config`, `spec` and `quantizer` and implement `quantize`
    (data -> Quantized), `decode_latents` (the bottleneck's output -> data) and `loss`;
    encode, decode and forward follow from those."""

    config: TokenizerConfig
    spec: LatentSpec
    quantizer: Quantizer

    def build_discriminator(self) -> None:
        """The patch-GAN of `config.discriminator` (if set) and the step counter that gates it,
        a buffer so that checkpoints resume it."""
        from latentforge.tokenizers.discriminator import PatchDiscriminator

        cfg = getattr(self.config, "discriminator", None)
        self.discriminator = None if cfg is None else PatchDiscriminator(cfg)
        if cfg is not None:
            self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    def quantize(self, x: Tensor) -> Quantized:
        raise NotImplementedError

    def decode_latents(self, z_q: Tensor) -> Tensor:
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Data -> latents (codes for discrete tokenizers)."""
        return self.quantize(x).codes

    def decode(self, z: Tensor) -> Tensor:
        """Latents (codes for discrete tokenizers) -> data."""
        check_latents(self.spec, z)
        return self.decode_latents(self.quantizer.lookup(z))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct: data -> bottleneck -> data."""
        return self.decode_latents(self.quantize(x).z_q)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """'loss' (to minimise) plus named terms and statistics, for the trainer."""
        raise NotImplementedError
