"""Gumbel-softmax bottleneck of the discrete VAE (DALL-E: Ramesh et al. 2021; Gumbel-softmax:
Jang et al. 2017, Maddison et al. 2017).

The encoder output is mapped to logits over K codes per position; in training a relaxed sample
y = softmax((logits + g) / tau), g ~ Gumbel(0, 1), weights the code embeddings, so gradients
reach the encoder without straight-through tricks. As tau falls the samples approach one-hot
codes; `hard` makes the forward pass exactly one-hot while the gradient stays the relaxed one.
In eval the code is the argmax of the logits (no noise), the same vector `lookup` returns.

The temperature follows an exponential schedule from tau_start to tau_end over anneal_steps
training forwards (DALL-E anneals 1 -> 1/16). The step counter is a buffer, so it is saved with
the weights and a resumed run continues the schedule where it stopped.

The prior term is KL(q || uniform) = log K - H(q) per position, q = softmax(logits), averaged.

Shapes: B batch, grid the latent grid (any rank), D = dim, K = codebook_size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, code_histogram, usage_stats
from latentforge.registry import register


@dataclass
class GumbelConfig(QuantizerConfig):
    name: str = "gumbel"
    dim: int = 32                  # encoder output width, and width of the code embeddings
    codebook_size: int = 512
    tau_start: float = 1.0
    tau_end: float = 1 / 16
    anneal_steps: int = 10_000     # training forwards from tau_start to tau_end
    hard: bool = False             # one-hot forward, relaxed gradient
    # Per-position mean KL, so the weight is small (taming-transformers' GumbelQuantize: 5e-4).
    kl_weight: float = 5e-4

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.tau_start <= 0 or self.tau_end <= 0:
            raise ValueError(f"tau_start and tau_end must be > 0, got {self.tau_start} and {self.tau_end}")
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {self.anneal_steps}")

    @classmethod
    def tiny(cls) -> "GumbelConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=4, codebook_size=16, anneal_steps=10)


@register("quantizer", "gumbel", GumbelConfig)
class GumbelQuantizer(Quantizer):
    def __init__(self, config: GumbelConfig) -> None:
        super().__init__()
        self.config = config
        self.to_logits = nn.Linear(config.dim, config.codebook_size)
        self.codebook = nn.Parameter(torch.randn(config.codebook_size, config.dim))  # [K, D]
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def temperature(self, step: int | Tensor | None = None) -> Tensor:
        """tau at `step` (default: the current training step), geometric from tau_start to tau_end.

        A tensor computed on the counter's device, so reading it costs no host sync.
        """
        cfg = self.config
        step = self.step if step is None else torch.as_tensor(step, device=self.step.device)
        if cfg.anneal_steps == 0:
            frac = torch.ones((), device=step.device)
        else:
            frac = (step.float() / cfg.anneal_steps).clamp(max=1.0)
        return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac

    def kl_to_uniform(self, logits: Tensor) -> Tensor:
        """Mean over positions of KL(softmax(logits) || uniform) = log K - H; logits [..., K]."""
        logq = F.log_softmax(logits.float(), dim=-1)
        return (logq.exp() * logq).sum(-1).mean() + math.log(self.config.codebook_size)

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, D] -> Quantized with codes [B, *grid]."""
        cfg = self.config
        with torch.autocast(z.device.type, enabled=False):
            dtype = z.dtype
            w, b = self.to_logits.weight.float(), self.to_logits.bias.float()
            logits = F.linear(z.float(), w, b)  # [B, *grid, K]
            tau = self.temperature()
            if self.training:
                self.step += 1
                # Gumbel(0, 1) noise: -log(E) with E ~ Exp(1).
                gumbels = -torch.empty_like(logits).exponential_().log()
                y = F.softmax((logits + gumbels) / tau, dim=-1)  # [B, *grid, K]
                codes = y.argmax(-1)
                if cfg.hard:
                    one_hot = F.one_hot(codes, cfg.codebook_size).to(y.dtype)
                    y = one_hot + y - y.detach()  # value one-hot, gradient of the relaxed sample
                z_q = y @ self.codebook.float()  # [B, *grid, D]
            else:
                codes = logits.argmax(-1)
                z_q = self.lookup(codes)
            losses = {"kl": cfg.kl_weight * self.kl_to_uniform(logits)}
            stats = usage_stats(code_histogram(codes, cfg.codebook_size))
            stats["tau"] = tau.detach()
        return Quantized(z_q.to(dtype), codes, losses, stats)

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid] -> code embeddings [B, *grid, D]."""
        return F.embedding(codes, self.codebook.float())
