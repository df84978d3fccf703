"""Representation autoencoder (P6 RAE): a frozen representation encoder and a trained ViT decoder.

x [B, C, H, W] in [-1, 1]
  -> frozen encoder                                                                   [B, N, D]
     "mp3": P18's MP3 ViT (no position embeddings, reads images in [0, 1]);
     "probe": the Shapes probe network's conv stages (eval/probe.py; trained on what the scene
     holds: counts of each shape, colour, size), the 8 x 8 map before its pooling
  -> per-element normalisation: every (token, channel) element standardised by running
     statistics over the data (batch statistics only, as RAE computes them; frozen in eval)
  -> the latents a generator models [B, h, w, D]
  -> + sigma * eps in training, sigma ~ U(0, noise_tau) per example (noise-augmented decoder
     training: the decoder learns to read the imperfect latents a generator will hand it)
  -> ViT decoder (the ViT tokenizer's)                                               [B, C, H, W]

Only the decoder trains: the latent space is the encoder's, fixed before the generator sees it. The
encoder's weights come from `load_encoder` (a state dict, e.g. an MP3 encoder pretrained by
benchmarks/mp3.py and saved with safetensors, or a trained probe's model.safetensors), or from the
path in `encoder_weights`, read before training; without them the encoder is a fixed random ViT (RAE's
small analogue allows a fixed random projection). A saved RAE holds its encoder's weights, so it
loads on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.nn.conv import probe_trunk
from latentforge.pretraining.mp3 import MP3Config, MP3Encoder
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.registry import register
from latentforge.tokenizers.base import LatentSpec, Tokenizer, TokenizerConfig, check_latents
from latentforge.tokenizers.losses import ReconKind, image_autoencoder_loss
from latentforge.tokenizers.vit import ViTConfig, ViTDecoder


@dataclass
class RAEConfig(TokenizerConfig):
    name: str = "rae"
    image_size: int = 32
    in_channels: int = 3
    patch: int = 4
    encoder_dim: int = 96             # the latent channels: the encoder's width
    encoder_depth: int = 4
    encoder_heads: int = 4
    dim: int = 128                    # decoder width
    decoder_depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    noise_tau: float = 0.8            # training noise on the normalised latents, sigma ~ U(0, tau)
    norm_momentum: float = 0.01       # running per-element statistics
    recon_loss: ReconKind = "l1"
    # A safetensors state dict read before training (empty: a fixed random encoder): an MP3Encoder's
    # (benchmarks/mp3.py --save-encoder), or with encoder "probe" a Shapes probe network's (its
    # model.safetensors: the conv stages before the pooling are the encoder)
    encoder_weights: str = field(default="", metadata=ADDED_LATER)
    encoder: Literal["mp3", "probe"] = field(default="mp3", metadata=ADDED_LATER)
    probe_width: int = field(default=32, metadata=ADDED_LATER)  # the probe's first-stage channels

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch {self.patch}")
        if self.encoder not in ("mp3", "probe"):
            raise ValueError(f"encoder must be 'mp3' or 'probe', got {self.encoder!r}")
        if self.encoder == "probe" and (self.patch != 4 or self.encoder_dim != 2 * self.probe_width):
            raise ValueError(f"encoder 'probe' gives 2 * probe_width = {2 * self.probe_width} channels on a grid of "
                             f"side image_size / 4: set patch 4 and encoder_dim {2 * self.probe_width}, got patch "
                             f"{self.patch}, encoder_dim {self.encoder_dim}")
        if self.noise_tau < 0 or not 0 < self.norm_momentum <= 1:
            raise ValueError(f"need noise_tau >= 0 and 0 < norm_momentum <= 1, got {self.noise_tau}, "
                             f"{self.norm_momentum}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.patch
        return (side, side)

    def encoder_config(self) -> MP3Config:
        return MP3Config(size=self.image_size, patch=self.patch, channels=self.in_channels, dim=self.encoder_dim,
                         depth=self.encoder_depth, heads=self.encoder_heads, mlp_ratio=self.mlp_ratio)

    @classmethod
    def tiny(cls) -> RAEConfig:
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(image_size=8, patch=4, encoder_dim=16, encoder_depth=1, encoder_heads=2, dim=16,
                   decoder_depth=1, heads=2)


class ProbeEncoder(nn.Module):
    """The Shapes probe network's conv stages as a token encoder: [B, 3, S, S] in [-1, 1] -> [B, N, D]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*probe_trunk(width))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).flatten(2).transpose(1, 2)                      # [B, (S/4)^2, 2 * width]

    def load_probe(self, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
        """Load the body of a probe's state dict (its pooled feature layer and heads are not used)."""
        return self.load_state_dict({k: v for k, v in state.items() if k.startswith("body.")}, strict=False)


class ElementNorm(nn.Module):
    """Standardise every element of [B, N, D] by running mean and variance [N, D] over examples."""

    def __init__(self, tokens: int, channels: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(tokens, channels))
        self.register_buffer("var", torch.ones(tokens, channels))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, h: Tensor) -> Tensor:
        if self.training and h.shape[0] > 1:
            with torch.no_grad():
                mean, var = h.float().mean(0), h.float().var(0, unbiased=False)
                m = 1.0 if int(self.seen) == 0 else self.momentum  # the first batch sets them
                self.mean.lerp_(mean, m)
                self.var.lerp_(var, m)
                self.seen += 1
        return (h - self.mean) * torch.rsqrt(self.var + 1e-6)


@register("tokenizer", "rae", RAEConfig)
class RAETokenizer(Tokenizer):
    def __init__(self, config: RAEConfig) -> None:
        super().__init__()
        self.config = config
        encoder = MP3Encoder(config.encoder_config()) if config.encoder == "mp3" else ProbeEncoder(config.probe_width)
        self.encoder = encoder.requires_grad_(False).eval()
        self.norm = ElementNorm(config.grid[0] * config.grid[1], config.encoder_dim, config.norm_momentum)
        decoder = ViTConfig(image_size=config.image_size, in_channels=config.in_channels, patch=config.patch,
                            dim=config.dim, encoder_depth=0, decoder_depth=config.decoder_depth, heads=config.heads,
                            mlp_ratio=config.mlp_ratio, quantizer=QuantizerConfig(dim=config.encoder_dim))
        self.decoder = ViTDecoder(decoder)
        self.spec = LatentSpec(grid=config.grid, kind="continuous", channels=config.encoder_dim)

    def train(self, mode: bool = True) -> RAETokenizer:
        super().train(mode)
        self.encoder.eval()  # frozen: it never trains
        return self

    def load_encoder(self, state: dict[str, Tensor] | str | os.PathLike) -> None:
        """Load the frozen encoder's weights: a state dict (an MP3Encoder's, or a probe network's with
        encoder "probe"), or a safetensors file of one."""
        where = "the given state dict"
        if not isinstance(state, dict):
            from safetensors.torch import load_file

            where, state = str(state), load_file(str(state))
        if self.config.encoder == "probe":
            missing, unexpected = self.encoder.load_probe(state)
        else:
            missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{where}: not an {self.config.encoder} encoder of this config (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
        self.norm.seen.zero_()  # new features: the statistics start again

    def before_training(self) -> None:
        path = self.config.encoder_weights
        if not path:
            return
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer.encoder_weights: no file {path!r} (a safetensors {self.config.encoder} "
                                    "encoder: `python benchmarks/mp3.py --save-encoder FILE`, or a probe network's "
                                    "model.safetensors)")
        self.load_encoder(path)

    def _check(self, x: Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"expected images [B, {c}, {s}, {s}], got {list(x.shape)}")

    def quantize(self, x: Tensor) -> Quantized:
        """x [B, C, H, W] in [-1, 1] -> latents [B, h, w, D] (codes), noisy in training (z_q)."""
        self._check(x)
        with torch.no_grad():
            h = self.encoder((x + 1) / 2 if self.config.encoder == "mp3" else x)  # [B, N, D]; MP3 reads [0, 1]
        z = self.norm(h).unflatten(1, self.config.grid)                     # [B, h, w, D]
        if not self.training or self.config.noise_tau == 0:
            return Quantized(z, z, {}, {})
        sigma = torch.rand(z.shape[0], 1, 1, 1, device=z.device) * self.config.noise_tau
        return Quantized(z + sigma * torch.randn_like(z), z, {}, {"noise_sigma": sigma.mean().detach()})

    def decode_latents(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q.flatten(1, 2))                               # [B, C, H, W]

    def decode(self, z: Tensor) -> Tensor:
        check_latents(self.spec, z)
        return self.decode_latents(z)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return image_autoencoder_loss(self, batch["image"], self.config.recon_loss)
