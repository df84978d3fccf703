"""Multi-scale residual quantization (VAR's tokenizer; P7 VAT's variational form on point-set tokens).

Legend: B batch, grid the latent grid (M,) for sets or (H, W) for images (square), C = dim, s a
scale (its side: s tokens of a set, s x s of an image), S = sum of s^rank over the scales.

    z [B, *grid, C]  (variational: -> mean, log-variance -> z ~ N(mean, var), KL to N(0, I))
    residual = z, total = 0
    for s in scales (ascending; the last is the grid's side):
        r_s  = area-downsample(residual) to s^rank tokens      the part of what is left at scale s
        e_s  = nearest codes of r_s in ONE shared codebook      codes [B, s^rank]
        up_s = (bi/tri)linear upsample(e_s) to the grid
        total += up_s ; residual -= up_s
    z_q = total (straight-through), codes = the scales' codes concatenated, coarse first: [B, S]

Every scale codes what the coarser ones left, so decoding the first k scales gives a coarse-to-fine
hierarchy (`lookup(codes[:, :S_k])`): the property P7 checks (quality rises with every scale) and
the one VAR's next-scale generator needs. VAT's claim for the variational form: scales then occupy
different parts of one Gaussian, which keeps the codebook in use (measured, not assumed:
BENCHMARKS.md). VAR's φ refinement convolutions after upsampling are not included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer
from latentforge.quantize.vq import VectorQuantizer, VQConfig
from latentforge.registry import register

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass
class MultiScaleConfig(VQConfig):
    name: str = "multiscale"
    l2_normalize: bool = False                   # residuals need their magnitude (as in residual VQ)
    scales: tuple[int, ...] = (1, 2, 4, 8, 16)   # sides, ascending; the last must be the grid's side
    rank: int = 1                                # the grid's rank: 1 for sets and sequences, 2 for images
    variational: bool = False                    # VAT: reparameterised Gaussian + KL before quantizing
    kl_weight: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        self.scales = tuple(int(s) for s in self.scales)
        if not self.scales or any(s < 1 for s in self.scales) or list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must be positive and strictly ascending, got {list(self.scales)}")
        if self.l2_normalize:
            raise ValueError("l2_normalize=True cannot be used with multi-scale residual quantization: the "
                             "scales' codes must add up to z")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.rank not in _MODES:
            raise ValueError(f"rank must be 1, 2 or 3, got {self.rank}")

    @classmethod
    def tiny(cls) -> "MultiScaleConfig":
        return cls(codebook_size=16, dim=4, kmeans_iters=2, scales=(1, 2, 5))


@register("quantizer", "multiscale", MultiScaleConfig)
class MultiScaleQuantizer(Quantizer):
    def __init__(self, config: MultiScaleConfig) -> None:
        super().__init__()
        self.config = config
        shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(VQConfig) if f.init}
        self.codebook = VectorQuantizer(VQConfig(**{**shared, "name": "vq"}))
        self.to_moments = nn.Linear(config.dim, 2 * config.dim) if config.variational else None

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def code_grid(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """The codes' grid for latents on `grid`: every scale's tokens in one row, (S,)."""
        self._check_grid(grid)
        return (sum(s ** len(grid) for s in self.config.scales),)

    def code_scales(self) -> tuple[int, ...]:
        return tuple(s ** self.config.rank for s in self.config.scales)

    def _check_grid(self, grid: tuple[int, ...]) -> None:
        side, rank = self.config.scales[-1], self.config.rank
        if len(grid) != rank or any(g != side for g in grid):
            raise ValueError(f"multi-scale quantization (rank {rank}, scales {list(self.config.scales)}) needs a "
                             f"grid of {rank} side(s) of {side}, got grid {list(grid)}")

    def _resize(self, x: Tensor, side: int) -> Tensor:
        """[B, *grid, C] -> [B, *(side,)*rank, C]: area average going down, (bi/tri)linear going up."""
        rank = x.dim() - 2
        y = x.movedim(-1, 1)
        if side < y.shape[-1]:
            y = F.adaptive_avg_pool1d(y, side) if rank == 1 else F.interpolate(y, size=(side,) * rank, mode="area")
        elif side > y.shape[-1]:
            y = F.interpolate(y, size=(side,) * rank, mode=_MODES[rank], align_corners=False)
        return y.movedim(1, -1)

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, C] -> Quantized with codes [B, S] (scales coarse to fine)."""
        cfg = self.config
        self._check_grid(tuple(z.shape[1:-1]))
        with torch.autocast(z.device.type, enabled=False):
            dtype, z = z.dtype, z.float()
            losses: dict[str, Tensor] = {}
            if self.to_moments is not None:
                mean, logvar = self.to_moments(z).chunk(2, -1)
                logvar = logvar.clamp(-30.0, 20.0)
                z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
                kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(-1).mean()
                losses["kl"] = cfg.kl_weight * kl
            residual, total = z, torch.zeros_like(z)
            codes, usage = [], []
            side = z.shape[1]
            for s in cfg.scales:
                q = self.codebook(self._resize(residual, s))
                for name, value in q.losses.items():
                    losses[name] = losses.get(name, 0.0) + value / len(cfg.scales)
                up = self._resize(q.z_q.detach(), side)
                total = total + up
                residual = residual - up
                codes.append(q.codes.reshape(len(z), -1))
                usage.append(q.stats["usage"])
            z_q = z + (total - z).detach()                                   # straight-through on the sum
            all_codes = torch.cat(codes, 1)
            counts = torch.bincount(all_codes.flatten(), minlength=cfg.codebook_size).float()
            p = counts / counts.sum()
            stats = {"usage": (counts > 0).float().mean(), "perplexity": torch.exp(-(p[p > 0] * p[p > 0].log()).sum()),
                     "residual_final": residual.detach().pow(2).mean()}
        return Quantized(z_q.to(dtype), all_codes, losses, stats)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, S_k] (the first k scales' codes, k >= 1) -> [B, *grid, C]: the sum of the
        decoded scales, each upsampled to the grid."""
        cfg = self.config
        rank, side = cfg.rank, cfg.scales[-1]
        bounds = [0]
        for s in cfg.scales:
            bounds.append(bounds[-1] + s ** rank)
        if codes.shape[-1] not in bounds[1:]:
            raise ValueError(f"expected the codes of the first k scales {list(cfg.scales)} ({bounds[1:]} codes), "
                             f"got {codes.shape[-1]}")
        total = None
        for s, a, b in zip(cfg.scales, bounds[:-1], bounds[1:]):
            if b > codes.shape[-1]:
                break
            e = self.codebook.lookup(codes[:, a:b]).view(len(codes), *(s,) * rank, -1)
            up = self._resize(e, side)
            total = up if total is None else total + up
        return total

    def scale_bounds(self) -> list[int]:
        """Code counts of the first k scales, k = 1 .. len(scales)."""
        rank = self.config.rank
        return [sum(s ** rank for s in self.config.scales[:k]) for k in range(1, len(self.config.scales) + 1)]


def scales_for(side: int, first: int = 1) -> tuple[int, ...]:
    """Doubling sides from `first` to `side` (side included even when not a power of two)."""
    out = [first]
    while out[-1] * 2 < side:
        out.append(out[-1] * 2)
    return tuple(out + [side]) if out[-1] != side else tuple(out)

