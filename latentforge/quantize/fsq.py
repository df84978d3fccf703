"""Finite Scalar Quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple").

No learned codebook: each of n = len(levels) channels is squashed into a bounded interval and
rounded to one of L_i integer levels. The implicit codebook is the grid of all combinations,
prod(levels) codes, and every grid point is reachable by construction, so there is nothing to
initialise, revive or regularise: no auxiliary losses. A code's index is the mixed-radix number
whose digits are the per-channel levels (channel 0 is the least significant digit).

When the encoder width `dim` differs from n, a linear layer projects in before rounding and
another projects back out, so the decoder reads `dim` channels either way.

Shapes: B batch, grid the latent grid (any rank), D = dim, n = len(levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, code_histogram, usage_stats
from latentforge.registry import register

# Widens the tanh range a hair past the outer levels: with L = 2 the half-step shift would
# otherwise need atanh(1) = inf. The extra 1e-3 * (L-1)/2 never rounds beyond an outer level.
_EPS = 1e-3


@dataclass
class FSQConfig(QuantizerConfig):
    name: str = "fsq"
    dim: int = 32
    levels: tuple[int, ...] = (8, 5, 5, 5)  # paper's recommendation for ~1k codes

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("levels must name at least one channel, got ()")
        bad = [lv for lv in self.levels if lv < 2]
        if bad:
            raise ValueError(f"levels must all be >= 2, got {self.levels} (bad: {bad})")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")

    @classmethod
    def tiny(cls) -> "FSQConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=4, levels=(5, 3, 3))


@register("quantizer", "fsq", FSQConfig)
class FSQ(Quantizer):
    def __init__(self, config: FSQConfig) -> None:
        super().__init__()
        self.config = config
        n = len(config.levels)
        levels = torch.tensor(config.levels, dtype=torch.long)                          # [n]
        basis = torch.cumprod(torch.tensor((1, *config.levels[:-1]), dtype=torch.long), 0)  # [n]
        # Derived from the config, so not saved with the weights.
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.project_in = nn.Linear(config.dim, n) if config.dim != n else nn.Identity()
        self.project_out = nn.Linear(n, config.dim) if config.dim != n else nn.Identity()

    @property
    def vocab_size(self) -> int:
        return math.prod(self.config.levels)

    # -- the scalar grid ----------------------------------------------------------------------

    def _half_width(self) -> Tensor:
        """floor(L/2) per channel [n]: integer levels run over [-floor(L/2), ceil(L/2) - 1]."""
        return (self.levels // 2).float()

    def bound(self, h: Tensor) -> Tensor:
        """h [..., n] -> values in an interval that rounds to exactly L integers per channel.

        Odd L: (L-1)/2 * tanh(h), symmetric. Even L has no integer centre, so the interval is
        shifted down by half a step, with the tanh's argument offset so that h = 0 still maps to 0.
        """
        levels = self.levels.float()
        half = (levels - 1) * (1 + _EPS) / 2                              # [n]
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)              # [n]
        shift = torch.atanh(offset / half)                                # [n]
        return torch.tanh(h + shift) * half - offset

    def codes_to_index(self, codes: Tensor) -> Tensor:
        """Normalised grid values [..., n] in [-1, 1] -> int64 index [...] (mixed radix)."""
        hw = self._half_width()
        digits = torch.round(codes.float() * hw + hw).long()  # [..., n] in [0, L-1]
        return (digits * self.basis).sum(-1)

    def index_to_codes(self, index: Tensor) -> Tensor:
        """int64 index [...] -> normalised grid values [..., n] (float32)."""
        digits = (index[..., None] // self.basis) % self.levels  # [..., n]
        hw = self._half_width()
        return (digits.float() - hw) / hw

    # -- the bottleneck -----------------------------------------------------------------------

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, D] -> Quantized with codes [B, *grid]; no losses."""
        h = self.project_in(z)  # [B, *grid, n]
        with torch.autocast(z.device.type, enabled=False):
            # Rounding decides the code: keep it in fp32 so bf16 cannot flip a level.
            b = self.bound(h.float())
            k = b + (torch.round(b) - b).detach()   # integers; straight-through to the tanh
            codes = k / self._half_width()          # [B, *grid, n] in [-1, 1]
            index = self.codes_to_index(codes.detach())  # [B, *grid]
            stats = usage_stats(code_histogram(index, self.vocab_size))
        z_q = self.project_out(codes.to(h.dtype))  # [B, *grid, D]
        return Quantized(z_q, index, {}, stats)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid] -> latents the decoder reads [B, *grid, D]."""
        return self.project_out(self.index_to_codes(codes))
