"""Residual vector quantization (SoundStream: Zeghidour et al. 2021; Encodec: Defossez et al. 2022).

Level 1 quantizes z, level k quantizes what levels 1..k-1 left over, and the decoder reads the sum
of the chosen code vectors: with `depth` codebooks of K codes a position has K^depth possible
values at the cost of depth * K code vectors. Each level is a `VectorQuantizer` (vq.py) with
its k-means initialisation, dead-code revival and optional EMA updates.

Quantizer dropout (SoundStream): in training, each example keeps a random number of levels
1..depth, so the decoder learns to read any prefix of the codes; one model then serves
several bitrates, and a coarse-to-fine generator (P3 Mogo) can stop after any level.

The encoder's gradient (`gradient`): "sum" passes the decoder's gradient once, straight through
(or rotated, `rotation_trick`) the sum of the levels' codes. "levels" passes it through every level
to that level's input residual, as SoundStream's Algorithm 1 and vector-quantize-pytorch do: the
encoder then gets the sum over the levels used (depth times the straight-through gradient, or each
level's rotation), which outweighs the commitment terms depth-fold.

Codes are `[B, *grid, depth]`, level-major in the last axis: codes[..., 0] is the coarsest.

Shapes: B batch, grid the latent grid (any rank), D = dim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.quantize.base import Quantized, Quantizer
from latentforge.quantize.vq import VectorQuantizer, VQConfig, rotate_onto
from latentforge.registry import register


@dataclass
class RVQConfig(VQConfig):
    """Every VQ option (codebook_size, commitment, k-means, EMA, rotation trick...) applies to
    each level; the fields below add the residual structure."""

    name: str = "rvq"
    # Residuals shrink level by level and their size is the information the next level adds;
    # normalising them to the unit sphere would throw that away (the sum of unit vectors can't
    # approach z). So residual levels use plain Euclidean codes.
    l2_normalize: bool = False
    depth: int = 2                    # levels (codebooks) per position
    shared_codebook: bool = False     # one codebook for every level
    quantizer_dropout: bool = True    # training: each example uses levels 1..n, n uniform in 1..depth
    # ... for this share of the examples only; the rest use every level (DAC: 0.5, so the full
    # bitrate is not starved of training)
    dropout_rate: float = field(default=1.0, metadata=ADDED_LATER)
    # How the decoder's gradient reaches the encoder: "sum" passes it once, through the sum of the
    # levels' codes; "levels" passes it through each level to that level's input residual, so the
    # encoder gets the sum over the levels used (SoundStream's and vector-quantize-pytorch's way)
    gradient: Literal["sum", "levels"] = field(default="sum", metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1], got {self.dropout_rate}")
        if self.gradient not in ("sum", "levels"):
            raise ValueError(f"gradient must be 'sum' or 'levels', got {self.gradient!r}")
        if self.l2_normalize:
            raise ValueError("l2_normalize=True cannot be used with residual VQ: normalising each residual "
                             "discards its magnitude, so the levels could not add up to z")

    def level_config(self) -> VQConfig:
        """The VQConfig of one level."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(VQConfig) if f.init}
        # With gradient="sum" the rotation, if any, is applied once to the sum of the levels (see
        # forward); with "levels" each level rotates its own residual onto its code.
        return VQConfig(**{**shared, "name": "vq", "rotation_trick": self.rotation_trick and self.gradient == "levels"})

    @classmethod
    def tiny(cls) -> "RVQConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(codebook_size=16, dim=4, depth=2, kmeans_iters=2)


@register("quantizer", "rvq", RVQConfig)
class ResidualVQ(Quantizer):
    # Any prefix of the levels decodes (coarser): `lookup` takes codes [..., :k].
    prefix_decodable = True

    def __init__(self, config: RVQConfig) -> None:
        super().__init__()
        self.config = config
        n = 1 if config.shared_codebook else config.depth
        self.levels = nn.ModuleList(VectorQuantizer(config.level_config()) for _ in range(n))

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def depth(self) -> int:
        return self.config.depth

    def level(self, k: int) -> VectorQuantizer:
        # A shared codebook is one VectorQuantizer called at every level, so its running usage
        # (dead-code revival) and EMA statistics see each level's residuals in turn.
        return self.levels[0 if self.config.shared_codebook else k]

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, D] -> Quantized with codes [B, *grid, depth]."""
        cfg = self.config
        with torch.autocast(z.device.type, enabled=False):
            dtype = z.dtype
            z = z.float()
            keep = self._levels_kept(z)  # [B] levels each example's z_q uses
            residual = z
            total = torch.zeros_like(z)  # [B, *grid, D]
            codes, losses, stats = [], {}, {}
            for k in range(cfg.depth):
                q = self.level(k)(residual)
                e = q.z_q.detach()  # the chosen code vectors of this level
                codes.append(q.codes)
                for name, value in q.losses.items():
                    losses[name] = losses.get(name, 0.0) + value
                # Residuals keep their gradient path to z (only the codes are constants), so
                # level k's commitment pulls z towards the sum of levels 1..k.
                residual = residual - e
                mask = (keep > k).to(z.dtype).view(-1, *[1] * (z.dim() - 1))  # [B, 1, ..., 1]
                # "levels": q.z_q equals e in value and carries the decoder's gradient to this
                # level's residual, hence to z (straight-through or the level's rotation).
                total = total + (q.z_q if cfg.gradient == "levels" else e) * mask
                stats[f"usage_l{k}"] = q.stats["usage"]
                stats[f"perplexity_l{k}"] = q.stats["perplexity"]
                stats[f"residual_l{k}"] = residual.detach().pow(2).mean()  # error after k+1 levels
            stats["usage"] = torch.stack([stats[f"usage_l{k}"] for k in range(cfg.depth)]).mean()
            stats["perplexity"] = torch.stack([stats[f"perplexity_l{k}"] for k in range(cfg.depth)]).mean()
            stats["levels_used"] = keep.float().mean()
            # Levels that dropout removed for an example still train their codebooks on its
            # residuals: those are the residuals the level sees whenever it is kept.
            if cfg.gradient == "levels":
                z_q = total
            elif cfg.rotation_trick:
                z_q = rotate_onto(z, total)
            else:
                z_q = z + (total - z).detach()  # straight-through on the sum
        return Quantized(z_q.to(dtype), torch.stack(codes, -1), losses, stats)

    def _levels_kept(self, z: Tensor) -> Tensor:
        """Per example, how many levels z_q sums [B]: random in training with dropout, else all."""
        b, depth = z.shape[0], self.config.depth
        full = torch.full((b,), depth, device=z.device)
        if self.training and self.config.quantizer_dropout and depth > 1:
            drawn = torch.randint(1, depth + 1, (b,), device=z.device)
            if self.config.dropout_rate >= 1.0:
                return drawn
            return torch.where(torch.rand(b, device=z.device) < self.config.dropout_rate, drawn, full)
        return full

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid, k] with 1 <= k <= depth (a prefix of the levels) -> [B, *grid, D]."""
        k = codes.shape[-1]
        if not 1 <= k <= self.config.depth:
            raise ValueError(f"expected codes [B, *grid, k] with 1 <= k <= depth={self.config.depth}, "
                             f"got shape {list(codes.shape)}")
        return sum(self.level(i).lookup(codes[..., i]) for i in range(k))
