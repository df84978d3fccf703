"""Exponential moving average of a model's weights, the weights a run samples with.

    ema = EMA(model, decay=0.999)
    ... optimizer.step(); ema.update(model, step)
    ema.copy_to(model)        # the averaged weights, e.g. before saving for sampling

Early in training the average would be dominated by the random initial weights, so the decay
warms up as min(decay, (1 + t) / (10 + t)) (t = optimizer steps taken): the average covers
about the last tenth of training at first and settles at 1 / (1 - decay) steps. Buffers
(batch-norm statistics, fitted normalisations) are copied, not averaged. The average is kept in
fp32 whatever precision the forward pass runs in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ema_decay_at(step: int, decay: float) -> float:
    """The decay applied at optimizer step `step` (0-based)."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {k: v.detach().float().clone() for k, v in _params(model).items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay)
        current = _params(model)
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in names], [current[k].detach().float() for k in names], 1 - d)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (buffers are left as they are)."""
        current = _params(model)
        for k, v in self.shadow.items():
            current[k].copy_(v)

    def state_dict(self) -> dict[str, Tensor]:
        return {f"ema.{k}": v for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = [k for k in self.shadow if f"ema.{k}" not in state]
        if missing:
            raise KeyError(f"EMA state misses {missing[:3]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[f"ema.{k}"])


def _params(model: nn.Module) -> dict[str, Tensor]:
    # the module under a DDP wrapper or torch.compile: names as the bare model has them
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: p for k, p in inner.named_parameters() if p.requires_grad}
