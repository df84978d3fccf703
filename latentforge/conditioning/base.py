"""The conditioning contract: `Context` (tokens + mask) and the `Conditioner` base class.

Every conditioner also owns a learned *null* context, the "no condition" input that
classifier-free guidance trains (by dropping conditions) and contrasts against at sampling.

A context is a set of tokens that generators read by cross-attention (or as a prefix or through
adaLN) and, optionally, a *spatial map* aligned with the latent grid that they add to their token
inputs (P1's scene layout). A conditioner with a training objective of its own (P1's layout
predictor) hands its loss terms to the generator in `losses`, which adds them to its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ModelConfig


@dataclass
class Context:
    tokens: Tensor                   # [B, L, D]
    mask: Tensor                     # [B, L] bool, True where a token is real
    spatial: Tensor | None = None    # [B, N, D] on the latent grid (raster order), or None
    losses: dict[str, Tensor] = field(default_factory=dict)  # conditioner training terms

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def pad_to(self, length: int) -> "Context":
        extra = length - self.tokens.shape[1]
        if extra <= 0:
            return self
        return Context(F.pad(self.tokens, (0, 0, 0, extra)), F.pad(self.mask, (0, extra), value=False),
                       self.spatial, self.losses)

    @staticmethod
    def _spatial_maps(a: "Context", b: "Context") -> tuple[Tensor, Tensor] | None:
        """Both contexts' maps, a missing one as zeros ("no layout"); None if neither has one."""
        like = a.spatial if a.spatial is not None else b.spatial
        if like is None:
            return None
        return tuple(c.spatial if c.spatial is not None else like.new_zeros(len(c), *like.shape[1:])
                     for c in (a, b))

    def where(self, keep: Tensor, other: "Context") -> "Context":
        """Per example: self where keep [B] is True, else other (e.g. the null context).

        The result keeps self's losses: dropping a condition does not drop its training terms.
        """
        L = max(self.tokens.shape[1], other.tokens.shape[1])
        a, b = self.pad_to(L), other.pad_to(L)
        maps = Context._spatial_maps(a, b)
        spatial = None if maps is None else torch.where(keep[:, None, None], *maps)
        return Context(torch.where(keep[:, None, None], a.tokens, b.tokens),
                       torch.where(keep[:, None], a.mask, b.mask), spatial, self.losses)

    @staticmethod
    def cat(first: "Context", second: "Context") -> "Context":
        """Concatenate along the batch (padding the shorter one)."""
        L = max(first.tokens.shape[1], second.tokens.shape[1])
        a, b = first.pad_to(L), second.pad_to(L)
        maps = Context._spatial_maps(a, b)
        spatial = None if maps is None else torch.cat(maps)
        return Context(torch.cat([a.tokens, b.tokens]), torch.cat([a.mask, b.mask]), spatial)


@dataclass
class ConditionerConfig(ModelConfig):
    kind = "conditioner"
    dim: int = 128


class Conditioner(nn.Module):
    """Subclasses implement `forward(cond, generator=None) -> Context`.

    `keys` names the batch entries they need, `optional_keys` those they read when present. The
    random generator serves conditioners that sample part of the condition (P1's layout).
    """

    config: ConditionerConfig
    keys: tuple[str, ...] = ()
    optional_keys: tuple[str, ...] = ()

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
        return {k: batch[k] for k in self.keys + self.optional_keys if k in batch}

    def attributes(self) -> dict[str, tuple[str, int]]:
        """The categorical parts of the condition: name -> (batch key, number of values). What
        `eval.sensitivity` shifts to see whether a generator reads each part; none by default."""
        return {}

    def forward(self, cond: dict[str, Tensor], generator: torch.Generator | None = None) -> Context:
        raise NotImplementedError
