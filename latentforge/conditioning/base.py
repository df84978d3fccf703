"""The conditioning contract: `Context` (tokens + mask) and the `Conditioner` base class.

Every conditioner also owns a learned *null* context, the "no condition" input that
classifier-free guidance trains (by dropping conditions) and contrasts against at sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ModelConfig


@dataclass
class Context:
    tokens: Tensor  # [B, L, D]
    mask: Tensor    # [B, L] bool, True where a token is real

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def pad_to(self, length: int) -> "Context":
        extra = length - self.tokens.shape[1]
        if extra <= 0:
            return self
        return Context(F.pad(self.tokens, (0, 0, 0, extra)), F.pad(self.mask, (0, extra), value=False))

    def where(self, keep: Tensor, other: "Context") -> "Context":
        """Per example: self where keep [B] is True, else other (e.g. the null context)."""
        L = max(self.tokens.shape[1], other.tokens.shape[1])
        a, b = self.pad_to(L), other.pad_to(L)
        return Context(torch.where(keep[:, None, None], a.tokens, b.tokens),
                       torch.where(keep[:, None], a.mask, b.mask))

    @staticmethod
    def cat(first: "Context", second: "Context") -> "Context":
        """Concatenate along the batch (padding the shorter one)."""
        L = max(first.tokens.shape[1], second.tokens.shape[1])
        a, b = first.pad_to(L), second.pad_to(L)
        return Context(torch.cat([a.tokens, b.tokens]), torch.cat([a.mask, b.mask]))


@dataclass
class ConditionerConfig(ModelConfig):
    kind = "conditioner"
    dim: int = 128


class Conditioner(nn.Module):
    """Subclasses implement `forward(cond) -> Context`; `keys` names the batch entries they read."""

    config: ConditionerConfig
    keys: tuple[str, ...] = ()

    def __init__(self, config: ConditionerConfig) -> None:
        super().__init__()
        self.config = config
        self.null_token = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)

    @property
    def dim(self) -> int:
        return self.config.dim

    def null(self, batch: int) -> Context:
        tokens = self.null_token.expand(batch, 1, -1)
        return Context(tokens, torch.ones(batch, 1, dtype=torch.bool, device=tokens.device))

    def select(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        missing = [k for k in self.keys if k not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch keys {list(self.keys)}; missing {missing}")
        return {k: batch[k] for k in self.keys}

    def forward(self, cond: dict[str, Tensor]) -> Context:
        raise NotImplementedError
