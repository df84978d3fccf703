"""Vector quantization (VQ-VAE) with the fixes that keep a codebook alive.

- l2-normalised codes and inputs (cosine distance): distances are bounded, codes spread out
  (ViT-VQGAN's factorised, normalised codes);
- k-means initialisation from the first training batch, so training starts with every code
  near the data instead of in empty space;
- dead-code revival: a code whose running usage falls below a threshold is moved onto a
  random encoder output of the current batch;
- straight-through gradients: the decoder's gradient is copied onto the encoder output;
- losses: codebook term ||sg(z) - e||^2 and commitment beta * ||z - sg(e)||^2.

All distances run in fp32, whatever the autocast context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, code_histogram
from latentforge.registry import register


@dataclass
class VQConfig(QuantizerConfig):
    name: str = "vq"
    codebook_size: int = 512
    dim: int = 32                  # code vector size (the encoder projects down to it)
    l2_normalize: bool = True
    commitment: float = 0.25       # beta
    kmeans_init: bool = True
    kmeans_iters: int = 10
    usage_decay: float = 0.95      # running per-step usage count of each code
    dead_threshold: float = 0.05   # revive a code whose running usage falls below this

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if not 0.0 < self.usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in (0, 1), got {self.usage_decay}")


@register("quantizer", "vq", VQConfig)
class VectorQuantizer(Quantizer):
    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.codebook = nn.Parameter(torch.randn(config.codebook_size, config.dim))
        self.register_buffer("initialized", torch.tensor(not config.kmeans_init))
        self.register_buffer("usage", torch.ones(config.codebook_size))

    @property
    def size(self) -> int:
        return self.config.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def _embeddings(self) -> Tensor:
        e = self.codebook.float()
        return F.normalize(e, dim=-1) if self.config.l2_normalize else e

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid] -> code vectors [B, *grid, dim]."""
        return F.embedding(codes, self._embeddings())

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of flat [N, dim] (fp32)."""
        e = self._embeddings()
        dist_sq = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return dist_sq.argmin(dim=1)

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, dim] -> Quantized with codes [B, *grid]."""
        with torch.autocast(z.device.type, enabled=False):
            dtype = z.dtype
            z = z.float()
            if self.config.l2_normalize:
                z = F.normalize(z, dim=-1)
            flat = z.reshape(-1, z.shape[-1])  # [N, dim]
            if self.training and not bool(self.initialized):
                self._kmeans_init(flat.detach())
            codes = self.nearest(flat)
            z_q = self._embeddings()[codes].view_as(z)
            codebook_loss = F.mse_loss(z_q, z.detach())
            commit_loss = F.mse_loss(z, z_q.detach())
            counts = code_histogram(codes, self.size)
            if self.training:
                self._revive_dead(flat.detach(), counts)
            z_q = z + (z_q - z).detach()  # straight-through
            p = counts.float() / counts.sum()
            stats = {
                "usage": (counts > 0).float().mean(),
                "perplexity": torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum()),
            }
        losses = {"codebook": codebook_loss, "commitment": self.config.commitment * commit_loss}
        return Quantized(z_q.to(dtype), codes.view(z.shape[:-1]), losses, stats)

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        """k-means++ seeding then Lloyd's iterations (spherical when codes are normalised).

        k-means++ matters here: image batches are dominated by a few patch types (background),
        and uniformly drawn seeds would spend most of the codebook on them.
        """
        k = self.size
        gen = torch.Generator(device=flat.device).manual_seed(0)
        centres = torch.empty(k, flat.shape[1], device=flat.device, dtype=flat.dtype)
        centres[0] = flat[torch.randint(flat.shape[0], (1,), generator=gen, device=flat.device)]
        nearest_sq = (flat - centres[0]).pow(2).sum(1)
        for i in range(1, k):
            weights = nearest_sq if nearest_sq.sum() > 0 else torch.ones_like(nearest_sq)
            pick = torch.multinomial(weights, 1, generator=gen)
            centres[i] = flat[pick]
            nearest_sq = torch.minimum(nearest_sq, (flat - centres[i]).pow(2).sum(1))
        for _ in range(self.config.kmeans_iters):
            assign = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ centres.t() + centres.pow(2).sum(1)[None]).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty clusters stay
            if self.config.l2_normalize:
                centres = F.normalize(centres, dim=-1)
        self.codebook.data.copy_(centres)
        _broadcast(self.codebook.data)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _revive_dead(self, flat: Tensor, counts: Tensor) -> None:
        cfg = self.config
        self.usage.mul_(cfg.usage_decay).add_(counts.float(), alpha=1 - cfg.usage_decay)
        dead = (self.usage < cfg.dead_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        picks = torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)
        self.codebook.data[dead] = flat[picks].to(self.codebook.dtype)
        _broadcast(self.codebook.data)
        self.usage[dead] = 1.0


def _broadcast(t: Tensor) -> None:
    """Keep codebooks identical across data-parallel ranks after a data-dependent reset."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, src=0)
