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
    ordered: bool = True            # False for sets (a point-set tokenizer's latents): no raster order
    scales: tuple[int, ...] = ()    # multi-scale codes: tokens per scale, coarse first (sum = the grid)
    scale_rank: int = 1             # multi-scale codes: each scale is a side^rank grid (2 for images)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


def latent_spec(quantizer: Quantizer, grid: tuple[int, ...], ordered: bool = True) -> LatentSpec:
    """What a bottleneck on `grid` hands to generators (`ordered` False for sets)."""
    if quantizer.discrete:
        return LatentSpec(grid=quantizer.code_grid(tuple(grid)), kind="discrete", vocab_size=quantizer.vocab_size,
                          depth=quantizer.depth, ordered=ordered, scales=quantizer.code_scales(),
                          scale_rank=len(grid) if quantizer.code_scales() else 1)
    return LatentSpec(grid=tuple(grid), kind="continuous", channels=quantizer.latent_channels, ordered=ordered)


def latent_stats(z: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and standard deviation [C] of continuous latents [..., C], in fp32.

    Every position of every example counts as one observation of the C-vector. The std is the
    population one (biased: divides by the count, not count - 1), clamped at 1e-6 so that a dead
    channel does not divide by zero; for the thousands of vectors a tokenizer yields the two
    conventions agree to 1e-4 relative.
    """
    flat = z.detach().float().reshape(-1, z.shape[-1])
    if flat.shape[-1] != channels or flat.shape[0] < 2:
        raise ValueError(f"need >= 2 latent vectors of {channels} channels, got {list(z.shape)}")
    return flat.mean(0), flat.std(0, unbiased=False).clamp_min(1e-6)


class LatentNorm(nn.Module):
    """The one definition of continuous-latent normalisation: x = (z - mean) / std per channel.

    A tokenizer's latents are far from unit variance (a KL bottleneck's are typically 0.1-5),
    while the noise processes of the continuous generators assume data of roughly unit scale;
    normalising makes their signal-to-noise schedules mean what they say. The statistics are
    fitted once on the training latents (`fit`, with `latent_stats`) and travel as buffers with
    the model that learns in normalised units, so a saved generator decodes on its own.
    `bound` is the largest |normalised latent| seen by `fit` (inf before it): DDIM clips its x0
    guesses to it.
    """

    # names the statistics had before this module held them (DiT: latent_scale / latent_bound,
    # MAR: latent_std): `load_legacy_keys` maps them so runs saved then still load
    LEGACY = {"latent_mean": "mean", "latent_scale": "std", "latent_std": "std", "latent_bound": "bound"}

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.register_buffer("bound", torch.tensor(float("inf")))

    @torch.no_grad()
    def fit(self, z: Tensor) -> None:
        """Set mean, std and bound from a sample of latents [..., C]."""
        mean, std = latent_stats(z, self.channels)
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.bound.copy_(self(z.detach().float()).abs().max())

    def forward(self, z: Tensor) -> Tensor:
        """Latents [..., C] in the tokenizer's units -> normalised units."""
        return (z - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        """Normalised [..., C] -> the tokenizer's units."""
        return x * self.std + self.mean

    @classmethod
    def load_legacy_keys(cls, state_dict: dict, prefix: str, name: str) -> None:
        """Rename a parent's pre-LatentNorm buffers (prefix + "latent_mean", ...) in place to
        prefix + name + ".mean", ... (bound inf where there was none); a state dict without them is left as it is."""
        found = [old for old in cls.LEGACY if prefix + old in state_dict]
        for old in found:
            state_dict[f"{prefix}{name}.{cls.LEGACY[old]}"] = state_dict.pop(prefix + old)
        if found and f"{prefix}{name}.bound" not in state_dict:  # MAR kept no bound: never clip
            state_dict[f"{prefix}{name}.bound"] = torch.tensor(float("inf"))


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
    # "sequence" float [B, T, C], "video" float [B, C, T, H, W], or "audio" float [B, L, 1]; a data
    # set's modality must give the same layout
    layout: ClassVar[str] = "image"
    # split entries the loss reads beside the examples (a point-set tokenizer's occupancy queries
    # and labels), fed with each batch under their own names
    batch_keys: ClassVar[tuple[str, ...]] = ()


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

    def last_layer(self) -> Tensor:
        """The decoder's output weight, where an adaptive GAN weight compares gradient norms."""
        raise NotImplementedError(f"{type(self).__name__} does not name its decoder's last layer, which the "
                                  "adaptive GAN weight (discriminator.adaptive) needs")

    def before_training(self) -> None:
        """Read the weights the config names by path (a frozen pretrained part) before the first
        training step. A saved tokenizer holds those weights, so loading one never calls this."""

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
