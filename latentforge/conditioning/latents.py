"""Conditioning on another model's latents: the second stage of a cascade (MAR-3D, P9).

MAR-3D generates a shape in two stages: a low-resolution stage samples a small set of latent
tokens, and a high-resolution stage generates a larger set *given* them. Trained on the true
low-resolution latents (the tokenizer's encodings) but fed the first stage's samples at test time,
the second stage meets inputs it never saw; **condition augmentation** (as in cascaded diffusion)
closes that gap by training on noised conditions:

    low latents [B, L, C] -> per-channel standardisation (`norm`, fitted on training latents)
      -> training: + sigma * eps, sigma ~ U(0, augment) per example; sampling: sigma = sample_noise
      -> Linear(C, D) + an embedding of sigma (so the model knows how far to trust its input)
      -> context tokens [B, L, D] (all real: mask True), read by cross-attention

The low latents form a set (point-set tokenizers, `ordered=False`): the tokens get no position, and
a generator reading them by cross-attention sees a permutation of them as the same condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.nn.embeddings import TimestepEmbedding
from latentforge.registry import register
from latentforge.tokenizers.base import LatentNorm


@dataclass
class LatentsConfig(ConditionerConfig):
    name: str = "latents"
    channels: int = 8                  # C of the conditioning latents
    augment: float = 0.0               # largest noise std added in training (0: no augmentation)
    sample_noise: float = 0.0          # the noise std the condition gets at sampling

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"LatentsConfig.channels must be >= 1, got {self.channels}")
        if self.augment < 0 or self.sample_noise < 0:
            raise ValueError(f"augment and sample_noise must be >= 0, got {self.augment}, {self.sample_noise}")

    @classmethod
    def tiny(cls) -> "LatentsConfig":
        return cls(dim=16, channels=3, augment=0.5, sample_noise=0.1)


@register("conditioner", "latents", LatentsConfig)
class LatentsConditioner(Conditioner):
    keys = ("low_latents",)

    def __init__(self, config: LatentsConfig) -> None:
        super().__init__(config)
        self.norm = LatentNorm(config.channels)
        self.proj = nn.Linear(config.channels, config.dim)
        # sigma in [0, ~1]: scaled to the 0..1000 range the sinusoid frequencies were chosen for
        self.level = TimestepEmbedding(config.dim, scale=1000.0, freq_dim=64)

    def noise_levels(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """[B] noise std per example: U(0, augment) while training, `sample_noise` otherwise."""
        cfg = self.config
        if self.training and cfg.augment > 0:
            return torch.rand(batch, generator=generator, device=device) * cfg.augment
        return torch.full((batch,), cfg.sample_noise, device=device)

    def forward(self, cond: dict[str, Tensor], generator: torch.Generator | None = None) -> Context:
        z = cond["low_latents"]
        if z.dim() != 3 or z.shape[-1] != self.config.channels or not z.is_floating_point():
            raise ValueError(f"low_latents must be float [B, L, {self.config.channels}], got {z.dtype} {list(z.shape)}")
        x = self.norm(z.float())                                                      # [B, L, C]
        sigma = self.noise_levels(len(x), x.device, generator)                         # [B]
        noise = torch.randn(x.shape, generator=generator, device=x.device) if sigma.any() else 0.0
        x = x + sigma[:, None, None] * noise
        tokens = self.proj(x) + self.level(sigma)[:, None]                            # [B, L, D]
        return Context(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
