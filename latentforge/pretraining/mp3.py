"""P18 MP3: pretraining a ViT without position embeddings to say where each of its patches sits.

Tokens carry content only: patch pixels -> LayerNorm -> Linear -> LayerNorm, no position table.
The pretext task classifies every token's own position among all N = (size / patch)^2 (a linear
head on the final LayerNorm; cross-entropy against the token's index). Difficulty and cost come
from a random **context**: per image, a share 1 - mask_ratio of the tokens is drawn, and in every
self-attention layer all N queries attend to the context tokens only, to their *current* hidden
states (`Transformer(kv_index=...)`, not their input embeddings as a shortcut would do), so the
attention's cost falls to N x (1 - mask_ratio) N. Patches outside the context must be placed from
what they look like against the context.

Position can only be read off an image that breaks translation symmetry: Shapes scenes get a
background of chirped stripes for this (`position_backgrounds`).

Fine-tuning (`MP3Classifier`): the pretrained encoder with full attention, mean-pooled features and a
linear head, with or without a zero-initialised learned position table (the paper: models without
one, pretrained by MP3, match models with one trained from scratch). `features(images)` makes the
encoder a representation encoder for other stages (RAE's frozen encoder, P6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.patches import patchify
from latentforge.nn.transformer import Transformer, init_transformer_weights


@dataclass
class MP3Config:
    size: int = 32           # image side
    patch: int = 4           # N = (size / patch)^2 positions to tell apart
    channels: int = 3
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75  # eta: share of tokens left out of the keys/values in pretraining

    def __post_init__(self) -> None:
        if self.size % self.patch:
            raise ValueError(f"patch {self.patch} must divide the image side {self.size}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def tokens(self) -> int:
        return (self.size // self.patch) ** 2


class PatchTokens(nn.Module):
    """Images [B, C, H, W] -> content-only tokens [B, N, D]: LN(patch) -> Linear -> LN."""

    def __init__(self, cfg: MP3Config) -> None:
        super().__init__()
        width = cfg.channels * cfg.patch**2
        self.patch = cfg.patch
        self.norm_in = nn.LayerNorm(width)
        self.proj = nn.Linear(width, cfg.dim)
        self.norm_out = nn.LayerNorm(cfg.dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm_out(self.proj(self.norm_in(patchify(images, self.patch))))


class MP3Encoder(nn.Module):
    """The ViT MP3 pretrains: patch tokens (no positions), a shared `Transformer`, a position head."""

    def __init__(self, cfg: MP3Config) -> None:
        super().__init__()
        self.config = cfg
        self.embed = PatchTokens(cfg)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.mlp_ratio)
        self.position_head = nn.Linear(cfg.dim, cfg.tokens)  # on the transformer's final LayerNorm
        init_transformer_weights(self.transformer, cfg.depth)

    def context(self, batch: int, generator: torch.Generator | None = None, device=None) -> Tensor | None:
        """Random context token indices [B, K], K = round((1 - mask_ratio) N); None when eta = 0."""
        N, eta = self.config.tokens, self.config.mask_ratio
        if eta == 0:
            return None
        keep = max(1, round((1 - eta) * N))
        return torch.rand(batch, N, generator=generator).argsort(1)[:, :keep].to(device)

    def forward(self, images: Tensor, kv_index: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """Hidden states [B, N, D]; kv_index [B, K] restricts every layer's keys/values; positions
        [N, D] are added to the tokens (a fine-tuned model's table), none in pretraining."""
        tokens = self.embed(images)
        if positions is not None:
            tokens = tokens + positions
        return self.transformer(tokens, kv_index=kv_index)

    def pretrain_loss(self, images: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Position cross-entropy over all N tokens (the context's too), and top-1 accuracy."""
        B = images.shape[0]
        logits = self.position_head(self(images, self.context(B, generator, images.device)))  # [B, N, N]
        target = torch.arange(self.config.tokens, device=images.device).expand(B, -1)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        accuracy = (logits.argmax(-1) == target).float().mean()
        return {"loss": loss, "position_accuracy": accuracy.detach()}

    @torch.no_grad()
    def position_accuracy(self, images: Tensor, full_context: bool = True) -> float:
        """Top-1 position accuracy on held-out images, all tokens in the context by default."""
        kv = None if full_context else self.context(images.shape[0], torch.Generator().manual_seed(0), images.device)
        logits = self.position_head(self(images, kv))
        target = torch.arange(self.config.tokens, device=images.device)
        return float((logits.argmax(-1) == target).float().mean())

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Mean-pooled features [B, D] (full attention): a frozen representation encoder."""
        return self(images).mean(1)


class MP3Classifier(nn.Module):
    """Fine-tuning: encoder (full attention) -> mean pool -> Linear; optional learned position table,
    zero-initialised so that the pretrained encoder starts as it was pretrained."""

    def __init__(self, encoder: MP3Encoder, classes: int, position_embedding: bool) -> None:
        super().__init__()
        self.encoder = encoder
        dim, tokens = encoder.config.dim, encoder.config.tokens
        self.positions = nn.Parameter(torch.zeros(tokens, dim)) if position_embedding else None
        self.head = nn.Linear(dim, classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder(images, positions=self.positions).mean(1))  # [B, classes]


def position_backgrounds(images: np.ndarray, background: tuple[int, int, int], seed: int) -> np.ndarray:
    """Replace a flat background colour by chirped stripes plus noise: the stripes' period shrinks
    from about 12 px on the left (top) to 3 px on the right (bottom), so a patch's texture says where
    it is even after the patch embedding's LayerNorm removes its brightness (a plain gradient would
    not survive it). Each image draws its own phases, contrast and tint. uint8 [n, H, W, 3] in and out."""
    n, H, W, _ = images.shape
    rng = np.random.default_rng(seed)

    def chirp(length: int, phase: np.ndarray) -> np.ndarray:
        u = np.linspace(0, 1, length, dtype=np.float32)
        cycles = length * (u / 12 + u**2 * (1 / 3 - 1 / 12) / 2)  # local frequency 1/12 -> 1/3 per pixel
        return np.sin(2 * np.pi * cycles[None] + phase[:, None])          # [n, length]

    stripes_x = chirp(W, rng.uniform(0, 2 * np.pi, n))[:, None, :, None]  # [n, 1, W, 1]
    stripes_y = chirp(H, rng.uniform(0, 2 * np.pi, n))[:, :, None, None]  # [n, H, 1, 1]
    contrast = rng.uniform(25, 45, (n, 1, 1, 1)).astype(np.float32)
    tint = rng.uniform(70, 130, (n, 1, 1, 3)).astype(np.float32)
    field = tint + contrast * (stripes_x + stripes_y) + rng.normal(0, 4, (n, H, W, 3)).astype(np.float32)
    flat = (images == np.asarray(background, np.uint8)).all(-1, keepdims=True)  # [n, H, W, 1]
    return np.where(flat, np.clip(field, 0, 255), images).astype(np.uint8)
