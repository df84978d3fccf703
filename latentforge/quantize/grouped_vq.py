"""Grouped (multi-head) vector quantization: each vector cut into groups, each group quantized apart.

z [B, *grid, D] is split into G slices of D/G channels, and slice g is quantized by its own
codebook of K codes (product quantization: Jegou et al. 2011; the "heads" of
vector-quantize-pytorch), or by one codebook shared by every slice (`shared_codebook`). A position
then takes one of K^G values for G * K code vectors, and each codebook only has to cover a
D/G-dimensional space, where K codes sit denser and fewer of them go unused. Each group is a
`VectorQuantizer` (vq.py) with all its options: k-means initialisation, dead-code revival, EMA
updates, the rotation trick, SimVQ and the entropy penalty act per group.

Codes are `[B, *grid, G]`, the layout of residual VQ's levels, so `LatentSpec.depth` is G: the
hierarchical generator models a position's G codes with its depth transformer, and generators of
one code per position refuse the tokenizer by name (generators/base.py). Unlike residual levels,
groups are side by side, not coarse-to-fine: no prefix of them decodes, and `lookup` asks for all G.

Shapes: B batch, grid the latent grid (any rank), D = dim, G = groups, K = codebook_size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer
from latentforge.quantize.vq import VectorQuantizer, VQConfig
from latentforge.registry import register


@dataclass
class GroupedVQConfig(VQConfig):
    """Every VQ option applies to each group, on D/G channels; `dim` is the whole vector's width."""

    name: str = "grouped_vq"
    groups: int = 2                 # G slices of dim // G channels, one code each
    shared_codebook: bool = False   # one codebook for every group

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")
        if self.dim % self.groups:
            raise ValueError(f"dim={self.dim} must be divisible by groups={self.groups}")

    def group_config(self) -> VQConfig:
        """The VQConfig of one group's codebook."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(VQConfig) if f.init}
        return VQConfig(**{**shared, "name": "vq", "dim": self.dim // self.groups})

    @classmethod
    def tiny(cls) -> "GroupedVQConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(codebook_size=16, dim=4, groups=2, kmeans_iters=2)


@register("quantizer", "grouped_vq", GroupedVQConfig)
class GroupedVQ(Quantizer):
    def __init__(self, config: GroupedVQConfig) -> None:
        super().__init__()
        self.config = config
        n = 1 if config.shared_codebook else config.groups
        self.codebooks = nn.ModuleList(VectorQuantizer(config.group_config()) for _ in range(n))

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def depth(self) -> int:
        return self.config.groups

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, D] -> Quantized with codes [B, *grid, G]."""
        G = self.config.groups
        parts = z.chunk(G, dim=-1)  # G x [B, *grid, D/G]
        if self.config.shared_codebook:
            # One call on every slice at once: the shared codebook's k-means, running usage and
            # EMA statistics see one step's worth of vectors per step, from all groups.
            q = self.codebooks[0](torch.cat(parts, dim=0))  # [G*B, *grid, ...]
            z_q = torch.cat(q.z_q.chunk(G, dim=0), dim=-1)       # [B, *grid, D]
            codes = torch.stack(q.codes.chunk(G, dim=0), dim=-1)  # [B, *grid, G]
            return Quantized(z_q, codes, q.losses, q.stats)
        outs = [vq(part) for vq, part in zip(self.codebooks, parts)]
        # Each group's losses are means over its D/G channels; their mean over groups is the
        # same per-channel scale as one VQ over all D channels.
        losses = {name: torch.stack([o.losses[name] for o in outs]).mean() for name in outs[0].losses}
        stats = {name: torch.stack([o.stats[name] for o in outs]).mean() for name in outs[0].stats}
        for g, o in enumerate(outs):
            stats[f"usage_g{g}"] = o.stats["usage"]
            stats[f"perplexity_g{g}"] = o.stats["perplexity"]
        z_q = torch.cat([o.z_q for o in outs], dim=-1)          # [B, *grid, D]
        codes = torch.stack([o.codes for o in outs], dim=-1)    # [B, *grid, G]
        return Quantized(z_q, codes, losses, stats)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid, G] -> [B, *grid, D]."""
        G = self.config.groups
        if codes.shape[-1] != G:
            raise ValueError(f"grouped VQ decodes all groups={G} together (each is a slice of the vector, not a "
                             f"refinement, so no prefix decodes): expected codes [B, *grid, {G}], "
                             f"got shape {list(codes.shape)}")
        return torch.cat([self.codebooks[0 if self.config.shared_codebook else g].lookup(codes[..., g])
                          for g in range(G)], dim=-1)
