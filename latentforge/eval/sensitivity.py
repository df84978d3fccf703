"""Does a generator read every part of its condition? Held-out loss with one attribute shifted.

For each categorical attribute the conditioner declares (`Conditioner.attributes`: a scene graph's
colours, shapes and sizes, a class label), every value is moved to the next one (colour c ->
c + 1 mod K, for every object at once) and the generator's held-out loss is recomputed with the same
seed, so noise, masks and diffusion times are the ones of the unshifted pass. The difference in nats:

    sensitivity[a] = val_loss(latents | condition with a shifted) - val_loss(latents | condition)

A generator that ignores attribute a scores about 0; one that learnt it pays for the wrong value.
Benchmarks found generators that learnt layout, shape and size from a scene graph but not colour
(+0.000 to +0.018 nats, against +1.6 to +2.0 for the families that drew the right colours).
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentforge.eval.run_metrics import validation_terms


def shift_attribute(cond: dict[str, Tensor], key: str, count: int) -> dict[str, Tensor]:
    """The condition with every value of `key` moved to the next of its `count` values."""
    if key not in cond:
        raise KeyError(f"the condition has no entry {key!r} (it has {sorted(cond)})")
    return {**cond, key: (cond[key] + 1) % count}


@torch.no_grad()
def condition_sensitivity(generator, latents: Tensor, cond: dict[str, Tensor], device: torch.device | str = "cpu",
                          batch: int = 500, seed: int = 0) -> dict[str, float]:
    """{attribute: loss increase in nats when it is shifted} for each attribute of the generator's
    conditioner, plus `val_loss` itself; {} for an unconditional generator."""
    if generator.conditioner is None:
        return {}
    device = torch.device(device)
    training = generator.training
    generator.eval()
    try:
        base = validation_terms(generator, latents, cond, device, batch, seed)["val_loss"]
        out = {"val_loss": base}
        for name, (key, count) in generator.conditioner.attributes().items():
            shifted = validation_terms(generator, latents, shift_attribute(cond, key, count), device, batch, seed)
            out[name] = shifted["val_loss"] - base
        return out
    finally:
        generator.train(training)
