"""Lookup-Free Quantization (MAGVIT-v2: Yu et al. 2023, "Language Model Beats Diffusion --
Tokenizer is Key to Visual Generation").

The codebook is the set of corners {-1, +1}^bits: each channel is quantized by its sign, and a
code's index is the binary number of its channels (channel i has weight 2^i, +1 is a one bit).
No nearest-neighbour search, so vocabularies of 2^16 cost nothing to quantize.

Without a learned codebook, what keeps codes used is an entropy penalty (paper eq. 5):

    L_entropy = E_n[ H(p(. | z_n)) ] - gamma * H( E_n[ p(. | z_n) ] )

p(c | z) = softmax over all 2^bits codes c of -||z - c||^2 / temperature. The first term makes
each position commit to one code; the second spreads the batch over the whole codebook. The
batch-mean distribution does not factorise over bits, so the softmax runs over all 2^bits
codes: N x 2^bits floats, which is why it runs in training only and bits is capped at 16 while
the penalty is on.

When the encoder width `dim` differs from `bits`, linear layers project in and out.

Shapes: B batch, grid the latent grid (any rank), D = dim, N = B * prod(grid), K = 2^bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.quantize.base import (
    Quantized,
    Quantizer,
    QuantizerConfig,
    assignment_entropies,
    code_histogram,
    usage_stats,
)
from latentforge.registry import register

_MAX_ENTROPY_BITS = 16  # the entropy softmax holds N x 2^bits floats


@dataclass
class LFQConfig(QuantizerConfig):
    name: str = "lfq"
    dim: int = 32
    bits: int = 10                 # codebook size 2^bits
    entropy_weight: float = 0.1
    diversity: float = 1.0         # gamma: weight of the batch (codebook) entropy
    temperature: float = 0.01      # of the soft code assignment in the entropy term
    commitment: float = 0.25       # beta * ||z - sg(q)||^2

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 62:
            raise ValueError(f"bits must be in [1, 62] (int64 indices), got {self.bits}")
        if self.entropy_weight > 0 and self.bits > _MAX_ENTROPY_BITS:
            raise ValueError(f"bits={self.bits} is too many for the entropy penalty, whose softmax runs over "
                             f"2^bits codes; use bits <= {_MAX_ENTROPY_BITS} or entropy_weight=0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")

    @classmethod
    def tiny(cls) -> "LFQConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=4, bits=4)


@register("quantizer", "lfq", LFQConfig)
class LFQ(Quantizer):
    def __init__(self, config: LFQConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("basis", 2 ** torch.arange(config.bits, dtype=torch.long), persistent=False)  # [bits]
        self.project_in = nn.Linear(config.dim, config.bits) if config.dim != config.bits else nn.Identity()
        self.project_out = nn.Linear(config.bits, config.dim) if config.dim != config.bits else nn.Identity()

    @property
    def vocab_size(self) -> int:
        return 2 ** self.config.bits

    def codes_to_index(self, codes: Tensor) -> Tensor:
        """±1 values [..., bits] -> int64 index [...]."""
        return ((codes > 0).long() * self.basis).sum(-1)

    def index_to_codes(self, index: Tensor) -> Tensor:
        """int64 index [...] -> ±1 values [..., bits] (float32)."""
        bits = (index[..., None] // self.basis) % 2  # [..., bits] in {0, 1}
        return bits.float() * 2 - 1

    def entropy_terms(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean per-position entropy and entropy of the batch-mean code distribution (fp32).

        h [N, bits] pre-quantization values. -||h - c||^2 = 2 h.c - ||h||^2 - bits, and the last
        two terms are the same for every code c, so softmax(-dist / T) = softmax(2 h.c / T).
        """
        corners = self.index_to_codes(torch.arange(self.vocab_size, device=h.device))  # [K, bits]
        return assignment_entropies(2 * h @ corners.t() / self.config.temperature)    # logits [N, K]

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, D] -> Quantized with codes [B, *grid]."""
        cfg = self.config
        h = self.project_in(z)  # [B, *grid, bits]
        dtype = h.dtype
        with torch.autocast(z.device.type, enabled=False):
            h = h.float()
            # sign(0) would be 0, which is no corner: ties go to +1.
            q = torch.where(h >= 0, 1.0, -1.0)        # [B, *grid, bits]
            index = self.codes_to_index(q)            # [B, *grid]
            losses = {"commitment": cfg.commitment * F.mse_loss(h, q)}
            stats = usage_stats(code_histogram(index, self.vocab_size))
            if self.training and cfg.entropy_weight > 0:
                per_position, codebook = self.entropy_terms(h.reshape(-1, cfg.bits))
                losses["entropy"] = cfg.entropy_weight * (per_position - cfg.diversity * codebook)
                stats |= {"entropy_position": per_position.detach(), "entropy_codebook": codebook.detach()}
            q = h + (q - h).detach()                  # straight-through
        z_q = self.project_out(q.to(dtype))  # [B, *grid, D]
        return Quantized(z_q, index, losses, stats)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid] -> latents the decoder reads [B, *grid, D]."""
        return self.project_out(self.index_to_codes(codes))
