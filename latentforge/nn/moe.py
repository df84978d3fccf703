"""Mixture-of-experts MLP with expert-choice routing (Zhou et al. 2022), as MicroDiT (P20) uses it.

Legend: B batch, T tokens per example, D width, H hidden width per expert, E experts,
C = capacity: tokens each expert takes per example.

A router scores every token against every expert, softmax over experts -> s [B, T, E]. Instead of
each token picking experts (token choice, which needs a load-balancing loss and drops tokens when
an expert overflows), each *expert* picks its C best-scoring tokens, C = round(T * k / E) with k
the average number of experts per token (`top_k`). Every expert then processes exactly C tokens:
the load is balanced by construction and no auxiliary loss is needed. A token's output is the
sum over the experts that picked it of s[token, e] * MLP_e(token); a token no expert picked
gets 0 from this layer and passes through on the residual stream.

Routing runs within each example, never across the batch, so a sample does not depend on what
else is in its batch (sampling with n = 1 or n = 64 gives the same result per example).
The experts run as one batched matmul over [E, B * C, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ExpertChoiceMLP(nn.Module):
    """x [B, T, D] -> [B, T, D]: E GELU MLPs of hidden width H, C tokens each per example."""

    def __init__(self, dim: int, hidden: int, experts: int = 4, top_k: float = 1.0) -> None:
        super().__init__()
        if experts < 1 or not 0 < top_k <= experts:
            raise ValueError(f"need experts >= 1 and 0 < top_k <= experts, got experts={experts}, top_k={top_k}")
        self.experts, self.top_k = experts, top_k
        self.router = nn.Linear(dim, experts, bias=False)
        # the names end like MLP's (fc, proj), so the GPT-2 init scales `proj` the same way
        self.fc = nn.Parameter(torch.empty(experts, dim, hidden))
        self.fc_bias = nn.Parameter(torch.zeros(experts, 1, hidden))
        self.proj = nn.Parameter(torch.empty(experts, hidden, dim))
        self.proj_bias = nn.Parameter(torch.zeros(experts, 1, dim))
        for w in (self.fc, self.proj):
            nn.init.normal_(w, std=0.02)
        self.act = nn.GELU(approximate="tanh")

    def capacity(self, tokens: int) -> int:
        return max(1, min(tokens, round(tokens * self.top_k / self.experts)))

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        E, C = self.experts, self.capacity(T)
        # routing in fp32: the choice must not flip with the autocast dtype
        scores = F.softmax(self.router(x).float(), dim=-1)               # [B, T, E]
        weight, index = scores.transpose(1, 2).topk(C, dim=-1)           # [B, E, C] each expert's tokens
        slots = index.reshape(B, E * C, 1).expand(-1, -1, D)             # [B, E * C, D]
        picked = x.gather(1, slots).view(B, E, C, D).transpose(0, 1).reshape(E, B * C, D)
        h = self.act(torch.baddbmm(self.fc_bias, picked, self.fc))      # [E, B * C, H]
        out = torch.baddbmm(self.proj_bias, h, self.proj)                # [E, B * C, D]
        out = out.view(E, B, C, D).transpose(0, 1).reshape(B, E * C, D)
        out = out * weight.reshape(B, E * C, 1).to(out.dtype)
        return torch.zeros(B, T, D, dtype=out.dtype, device=x.device).scatter_add(1, slots, out)
