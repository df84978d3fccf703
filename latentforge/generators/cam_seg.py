"""CAM-Seg (P33): semantic segmentation as image-conditioned generation of a mask's continuous latents.

Legend: B batch, h x w the latent grid (the same for image and mask), N = h w tokens, C_m mask
latent channels, C_i image latent channels, D the MAR width.

CAM-Seg draws the segmentation mask as a colour image (`data.shapes_seg`), encodes it with a KL
autoencoder, and trains MAR with a per-token diffusion head to produce the mask's latents given the
image. In the paper's code the image's latents (from the same frozen KL-VAE) are concatenated with
the mask tokens in one sequence and never masked, so mask token i sits next to the image token at
the same place. We compose the same thing from library parts:

    image latents [B, h, w, C_i] -> raster [B, N, C_i]
      -> `image_map` (per-channel standardisation + Linear(C_i, D)) -> spatial map [B, N, D], added to
         the mask token at the same grid position (the alignment CAM-Seg gets from concatenation)
      -> MAR's `latents` conditioner -> context tokens [B, N, D], cross-attended by every block (the
         whole image, for the shape of an object a token only sees part of)
    MAR over the mask latents [B, h, w, C_m], loss = diffusion loss on masked mask tokens

Inference as in the paper's validation notebook: one backbone pass with every mask token unknown
(`steps=1`), the head drawing all tokens at once; the mask autoencoder decodes them and
`palette_argmax` reads the classes back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.conditioning.latents import LatentsConfig
from latentforge.conditioning.sketch import with_sketch
from latentforge.generators.mar import MARConfig, MARGenerator
from latentforge.tokenizers.base import LatentNorm


class CamSeg(nn.Module):
    """MAR over mask latents conditioned on the aligned image latents of the same grid.

    Args:
        mar: MAR's config; its `grid`/`channels` are the mask latents'. A copy of it with the `latents`
            conditioner of the image latents (width mar.dim) and p_uncond 0 is built.
        image_channels: C_i of the image tokenizer's latents.
    """

    def __init__(self, mar: MARConfig, image_channels: int) -> None:
        super().__init__()
        # the image is always given: no guidance, so no null condition to learn (p_uncond 0)
        mar = dataclasses.replace(mar, conditioner=LatentsConfig(dim=mar.dim, channels=image_channels), p_uncond=0.0)
        self.mar = MARGenerator(mar)
        self.image_norm = LatentNorm(image_channels)
        self.image_map = nn.Linear(image_channels, mar.dim)

    @torch.no_grad()
    def fit_norms(self, image_latents: Tensor, mask_latents: Tensor) -> None:
        """Standardise both latents with statistics of the training set (before training)."""
        self.image_norm.fit(image_latents)
        self.mar.conditioner.norm.fit(image_latents)
        self.mar.latent_norm.fit(mask_latents)

    def context(self, image_latents: Tensor) -> Context:
        """Image latents [B, h, w, C_i] -> context tokens [B, N, D] with the aligned map [B, N, D]."""
        grid = tuple(self.mar.config.grid)
        if image_latents.dim() != 4 or tuple(image_latents.shape[1:3]) != grid:
            raise ValueError(f"image latents must be [B, {grid[0]}, {grid[1]}, C], got {list(image_latents.shape)}")
        flat = image_latents.reshape(len(image_latents), -1, image_latents.shape[-1])   # [B, N, C_i]
        context = self.mar.encode_condition({"low_latents": flat})
        return with_sketch(context, self.image_map(self.image_norm(flat)))

    def loss(self, mask_latents: Tensor, image_latents: Tensor) -> Tensor:
        """MAR's masked diffusion loss of mask latents [B, h, w, C_m] given the image's."""
        return self.mar.loss(mask_latents, self.context(image_latents))["loss"]

    @torch.no_grad()
    def sample(self, image_latents: Tensor, *, generator: torch.Generator | None = None, steps: int = 1,
               head_steps: int = 50, temperature: float = 1.0) -> Tensor:
        """Mask latents [B, h, w, C_m] for image latents [B, h, w, C_i] (steps=1: CAM-Seg's single pass)."""
        options = {"steps": steps, "temperature": temperature}
        if "head_steps" in self.mar.sampling_options() and self.mar.config.head_objective != "mse":
            options["head_steps"] = head_steps
        return self.mar.sample(len(image_latents), self.context(image_latents), generator=generator, **options)


def train_steps(params: list[nn.Parameter], loss_fn: Callable[[Tensor], Tensor], n: int, steps: int, batch: int,
                lr: float, generator: torch.Generator) -> list[float]:
    """Adam on `loss_fn(indices)` over random minibatches of `n` examples; returns the losses per step.
    (The benchmarks' small in-memory fits: no data loader, no checkpoint, one seeded generator.)"""
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=generator)
        loss = loss_fn(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
