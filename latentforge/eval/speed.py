"""Sampling speed: samples per second and milliseconds per network step, as medians after warm-up.

The first call of a model pays for memory allocation, kernel selection and caches; one or more
untimed warm-up calls come first, then the median of several timed ones (a median, because a
shared machine's slow outliers are one-sided).

A "step" is one pass through the generator's backbone: one token for an autoregressive model
with a KV cache, one denoising step for diffusion, one round for masked models. It is counted
by a hook on the backbone's first block, so it is the same for every family.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from latentforge.nn.adaln import AdaLNBlock
from latentforge.nn.axial import AxialBlock
from latentforge.nn.transformer import TransformerBlock

BACKBONE_BLOCKS = (TransformerBlock, AdaLNBlock, AxialBlock)


def median_time(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Seconds per call of fn: median (and min, max) of `repeats` timed calls after `warmup`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": repeats, "warmup": warmup}


def backbone_block(generator: nn.Module) -> nn.Module:
    """The first backbone block of a generator (its conditioner's blocks are not steps)."""
    for name, module in generator.named_modules():
        if isinstance(module, BACKBONE_BLOCKS) and not name.startswith("conditioner"):
            return module
    raise ValueError(f"{type(generator).__name__} has no transformer block to count steps with")


def sampling_speed(generate: Callable[[], Any], generator: nn.Module, samples: int, warmup: int = 1,
                   repeats: int = 3) -> dict[str, float]:
    """Time `generate()` (which draws `samples` examples with `generator`) and count its steps."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    handle = backbone_block(generator).register_forward_hook(count)
    try:
        with torch.no_grad():
            generate()  # counts the steps of one call, and warms up
            steps = calls[0]
            timing = median_time(generate, warmup=max(0, warmup - 1), repeats=repeats)
    finally:
        handle.remove()
    seconds = timing["median_s"]
    return {"samples_per_s": samples / seconds, "ms_per_step": 1000 * seconds / max(steps, 1),
            "steps_per_batch": steps, "speed_batch": samples, "speed_repeats": repeats}
