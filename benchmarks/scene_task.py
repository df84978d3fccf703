"""The efficiency table's Shapes scene-graph task, small enough to train many variants in minutes.

Data: Shapes scenes (32 px, 1-3 objects) pooled to 8 x 8 and colour-quantised to 4 levels per
channel: 64 codes, 64 tokens a sample (the stand-in for a small VQ tokenizer's codes, as in
benchmarks/speculative.py), each with its scene graph. Train and validation scenes come from their
own splits.
Model: the library's `ARGenerator` conditioned on the graph by the scene-graph conditioner
(cross-attention; P1's layout predictor off, so the codes' NLL is the only loss).
Quality: validation bits per token given the graph (lower is better); the floor is what the plain
model reaches, the ceiling a uniform guess (log2 64 = 6 bits).

Used by benchmarks/efficiency.py and the per-technique benchmarks, so every row of the table sees
the same data, model family and training loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_and_render
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.heads import code_nll

GRID, LEVELS, MAX_OBJECTS = 8, 4, 3
VOCAB = LEVELS ** 3


@dataclass
class SceneTask:
    """Codes [n, 8, 8] and their encoded graphs (dict of [n, ...] tensors), per split."""

    codes: dict[str, Tensor]
    graphs: dict[str, dict[str, Tensor]]

    def batch(self, split: str, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.codes[split][index], {k: v[index] for k, v in self.graphs[split].items()}


def shapes_pooled_and_graphs(n: int, split: str) -> tuple[Tensor, dict[str, Tensor]]:
    """n scenes of a split: colours pooled to [n, GRID, GRID, 3] in [0, 1] and encode_graphs' tensors
    (the continuous version of the task, for the flow DiT)."""
    scenes, images = sample_and_render(ShapesConfig(max_objects=MAX_OBJECTS), split, range(n), workers=1)
    x = torch.as_tensor(images).float().div(255)                             # [n, 32, 32, 3] in [0, 1]
    side = x.shape[1] // GRID
    return x.view(n, GRID, side, GRID, side, 3).mean((2, 4)), encode_graphs(scenes, MAX_OBJECTS)


def shapes_codes_and_graphs(n: int, split: str) -> tuple[Tensor, dict[str, Tensor]]:
    """n scenes of a split: codes [n, GRID, GRID] in [0, VOCAB) (each pooled colour channel in LEVELS
    levels) and encode_graphs' tensors."""
    pooled, graphs = shapes_pooled_and_graphs(n, split)
    index = (pooled * LEVELS).long().clamp(0, LEVELS - 1)                  # [n, GRID, GRID, 3]
    return (index * torch.tensor([LEVELS * LEVELS, LEVELS, 1])).sum(-1), graphs


def load_task(train: int = 2000, val: int = 500) -> SceneTask:
    tr, va = shapes_codes_and_graphs(train, "train"), shapes_codes_and_graphs(val, "val")
    return SceneTask({"train": tr[0], "val": va[0]}, {"train": tr[1], "val": va[1]})


def build_generator(dim: int = 128, depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, seed: int = 0,
                    **options) -> ARGenerator:
    """The task's AR generator; `options` are further ARConfig fields (position, nested_widths ...)."""
    torch.manual_seed(seed)
    cond = SceneGraphConfig(dim=64, depth=1, heads=4, max_objects=MAX_OBJECTS, layout=False)
    return ARGenerator(ARConfig(grid=(GRID, GRID), vocab_size=VOCAB, dim=dim, depth=depth, heads=heads,
                                mlp_ratio=mlp_ratio, conditioner=cond, **options))


def train_generator(model: ARGenerator, task: SceneTask, steps: int, batch: int = 32, lr: float = 2e-3,
                    seed: int = 1, loss_fn=None) -> float:
    """AdamW at a constant rate on a fixed-seed stream of batches; returns seconds per step.
    `loss_fn(model, codes, cond)` replaces the generator's own loss (distillation, masks ...)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        codes, cond = task.batch("train", torch.randint(len(task.codes["train"]), (batch,), generator=g))
        if loss_fn is None:
            loss = model.loss(codes, model.encode_condition(cond))["loss"]
        else:
            loss = loss_fn(model, codes, cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return (time.perf_counter() - start) / max(steps, 1)


@torch.no_grad()
def teacher_logits(model: ARGenerator, codes: Tensor, cond: dict[str, Tensor]) -> Tensor:
    """Teacher-forced logits [B, N, V] of codes [B, GRID, GRID] given their graphs."""
    return model.logits(model.flat_codes(codes), model.encode_condition(cond))


@torch.no_grad()
def val_bits(model: ARGenerator, task: SceneTask, limit: int | None = None) -> float:
    """Validation bits per token given the graph (teacher forcing)."""
    model.eval()
    n = len(task.codes["val"]) if limit is None else min(limit, len(task.codes["val"]))
    total = 0.0
    for start in range(0, n, 250):
        idx = torch.arange(start, min(n, start + 250))
        codes, cond = task.batch("val", idx)
        flat = model.flat_codes(codes)
        total += code_nll(model.logits(flat, model.encode_condition(cond)), flat).item() * len(idx)
    return total / n / math.log(2)


def sampler(model: ARGenerator, task: SceneTask, n: int = 16, **options):
    """A zero-argument call drawing n samples for the first n validation graphs (for timing)."""
    cond = {k: v[:n] for k, v in task.graphs["val"].items()}

    @torch.no_grad()
    def draw() -> Tensor:
        return model.sample(n, model.encode_condition(cond), generator=torch.Generator().manual_seed(0), **options)

    return draw
