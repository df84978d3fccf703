"""The tokenizer benchmarks' training loop (benchmarks/tokenizers.py, benchmarks/perceptual.py).

Plain on purpose, and the same in every row that compares: AdamW with the Trainer's warm-up and
cosine (`lr_at`), gradient clipping at 1, batches drawn from a generator seeded with `seed` alone,
so two tokenizers given the same seed see the same images in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from latentforge.train.trainer import TrainConfig, build_optimizer, lr_at


def fit(model: nn.Module, images: Tensor, steps: int, batch: int, seed: int,
        on_step: Callable[[int, dict[str, Tensor]], None] | None = None) -> list[float]:
    """Train `model` (its `loss({"image": x})`) on images [N, 3, S, S] in [-1, 1]; returns the
    seconds of each step. `on_step(step, loss_terms)` sees every step's terms (logging)."""
    tcfg = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, warmup=20)
    opt = build_optimizer(model, tcfg)
    order = torch.Generator().manual_seed(seed)
    times = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg)
        x = images[torch.randint(len(images), (batch,), generator=order)]
        t = time.perf_counter()
        out = model.loss({"image": x})
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        if on_step is not None:
            on_step(step, out)
    return times
