"""P23 FIT check at toy scale: interleaved local/global layers with a few latents per group.

(a) Cost vs length: forward+backward seconds and peak tensor bytes (`latentforge.eval.cost`) of a
    backbone on [1, L, 64] at L = 256, 1024, 4096 (and forward only at 16384): full attention
    `Transformer` (4 layers) vs FIT "(1)2(1)" (2 local + 2 global layers; groups of n = 16 tokens with
    m = 4 latents of width 128) vs `Transformer(attention="hashed")` (P30); log-log slopes.
(b) Long-grid task with a known answer: a 16 x 32 grid (512 tokens, 3 channels) whose left half is a
    smooth random field (cosines of 4 frequencies per axis) and whose right half mirrors it; the right
    half is masked and must be predicted (loss: MSE / variance of the target, 0 = perfect, 1 = predict
    zero). Groups are 4 x 4 sub-images, so a right-half group needs a group up to 7 group-columns away.
    Full attention vs FIT vs local-only (FIT without global layers: cannot see the left half) vs hashed
    attention, equal steps, same optimiser (AdamW 1e-3, 100 warm-up steps), fixed 2D sin-cos positions.

    python benchmarks/fit.py [--steps 200] [--threads 1] [--out benchmarks/results/fit.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.eval.cost import CostRow, inference_cost, parameter_count, peak_bytes
from latentforge.eval.speed import median_time
from latentforge.nn.fit import FIT, FITConfig, sub_image_order
from latentforge.nn.transformer import Transformer

WIDTH, HEADS, DEPTH = 64, 4, 4
GROUP_SIDE, LATENTS, LATENT_DIM, SPEC = 4, 4, 128, "(1)2(1)"


def make_backbone(kind: str, tokens: int) -> nn.Module:
    """full / hashed: a 4-layer Transformer; fit / local: FIT on groups of 16 tokens."""
    if kind in ("full", "hashed"):
        return Transformer(WIDTH, DEPTH, HEADS, attention="softmax" if kind == "full" else "hashed")
    n = GROUP_SIDE * GROUP_SIDE
    spec = SPEC if kind == "fit" else "(1)(1)"  # local-only: the same local layers, no global ones
    return FIT(FITConfig(dim=WIDTH, heads=HEADS, groups=tokens // n, group_size=n, latents=LATENTS,
                         latent_dim=LATENT_DIM, layers=spec))


# ---------------------------------------------------------------------------------------------
# (a) cost vs length
# ---------------------------------------------------------------------------------------------

def _pass(model: nn.Module, x: Tensor, backward: bool):  # noqa: ANN202
    """One forward (+ backward) of `model` on x, as a call."""
    def call() -> None:
        if backward:
            model(x).square().mean().backward()
        else:
            with torch.no_grad():
                model(x)
    return call


def cost_vs_length(lengths: tuple[int, ...], forward_only: tuple[int, ...]) -> list[dict]:
    rows = []
    for n in lengths + forward_only:
        backward = n not in forward_only
        row = {"tokens": n, "pass": "forward+backward" if backward else "forward"}
        for kind in ("full", "fit", "hashed"):
            torch.manual_seed(0)
            model = make_backbone(kind, n)
            call = _pass(model, torch.randn(1, n, WIDTH), backward)
            row[f"{kind}_s"] = median_time(call, warmup=1, repeats=3 if n <= 4096 else 1)["median_s"]
            row[f"{kind}_peak_mib"] = peak_bytes(call) / 2**20
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def slope(rows: list[dict], key: str, a: int, b: int) -> float:
    by_n = {r["tokens"]: r for r in rows}
    return math.log(by_n[b][key] / by_n[a][key]) / math.log(b / a)


# ---------------------------------------------------------------------------------------------
# (b) long-grid mirror task
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class GridTask:
    height: int = 16
    width: int = 32
    channels: int = 3
    frequencies: int = 4
    batch: int = 8
    steps: int = 200
    lr: float = 1e-3
    warmup: int = 100
    eval_batch: int = 32


def mirror_fields(task: GridTask, batch: int, gen: torch.Generator) -> Tensor:
    """[B, H, W, C]: a zero-mean, unit-std smooth field on the left half, mirrored on the right."""
    k = torch.arange(task.frequencies)
    ys = (torch.arange(task.height) + 0.5) / task.height
    xs = (torch.arange(task.width // 2) + 0.5) / (task.width // 2)
    basis_y = torch.cos(math.pi * k[:, None] * ys)                              # [K, H]
    basis_x = torch.cos(math.pi * k[:, None] * xs)                              # [K, W/2]
    scale = 1.0 / (1 + k[:, None] + k[None, :]).float()                         # [K, K] smoother wins
    coef = torch.randn(batch, task.channels, task.frequencies, task.frequencies, generator=gen) * scale
    left = torch.einsum("bcij,ih,jw->bhwc", coef, basis_y, basis_x)              # [B, H, W/2, C]
    left = left - left.mean((1, 2), keepdim=True)
    left = left / left.flatten(1).std(1).view(batch, 1, 1, 1)
    return torch.cat([left, left.flip(2)], dim=2)                                # [B, H, W, C]


def sincos_2d(height: int, width: int, dim: int) -> Tensor:
    """[H*W, D] fixed sin-cos positions (a mirror x -> W-1-x is a linear map of each sin-cos pair)."""
    q = dim // 4
    freqs = 1.0 / (100 ** (torch.arange(q) / q))
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    parts = [f(a[..., None] * freqs) for a in (yy, xx) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, -1).reshape(height * width, dim)


class MirrorModel(nn.Module):
    """[value * visible, masked flag] -> width + positions -> backbone -> value, on a grid."""

    def __init__(self, task: GridTask, kind: str) -> None:
        super().__init__()
        self.task = task
        self.embed = nn.Linear(task.channels + 1, WIDTH)
        self.register_buffer("positions", sincos_2d(task.height, task.width, WIDTH), persistent=False)
        self.body = make_backbone(kind, task.height * task.width)
        self.head = nn.Linear(WIDTH, task.channels)
        # FIT groups are sub-images: reorder raster tokens into groups and back
        order = sub_image_order((task.height, task.width), (GROUP_SIDE, GROUP_SIDE)) if isinstance(self.body, FIT) else None
        self.register_buffer("order", order, persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        t = self.task
        B = image.shape[0]
        masked = torch.zeros(t.height, t.width, 1, device=image.device)
        masked[:, t.width // 2:] = 1
        tokens = torch.cat([image * (1 - masked), masked.expand(B, -1, -1, -1)], -1)  # [B, H, W, C+1]
        h = self.embed(tokens.reshape(B, t.height * t.width, -1)) + self.positions   # [B, L, D]
        if self.order is not None:
            h = self.body(h[:, self.order])[:, self.order.argsort()]
        else:
            h = self.body(h)
        return self.head(h).view(B, t.height, t.width, t.channels)


def masked_loss(model: nn.Module, image: Tensor) -> Tensor:
    half = image.shape[2] // 2
    target = image[:, :, half:]
    return F.mse_loss(model(image)[:, :, half:], target) / target.var()


def train_variant(task: GridTask, kind: str) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = MirrorModel(task, kind)
    opt = torch.optim.AdamW(model.parameters(), lr=task.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / task.warmup))
    times = []
    for _ in range(task.steps):
        start = time.perf_counter()
        loss = masked_loss(model, mirror_fields(task, task.batch, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter() - start)
    model.eval()
    test = mirror_fields(task, task.eval_batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        quality = masked_loss(model, test).item()
        cost = inference_cost(lambda: model(test[:8]))
    result = dict(kind=kind, loss=quality, step_s=statistics.median(times), params=parameter_count(model),
                  **cost, model_ref=model)
    print(json.dumps({k: v for k, v in result.items() if k != "model_ref"}), flush=True)
    return result


def long_grid(task: GridTask) -> dict[str, dict]:
    return {kind: train_variant(task, kind) for kind in ("full", "fit", "local", "hashed")}


NOTES = {"full": "full softmax attention, 4 layers", "fit": f"FIT {SPEC}: 4x4 sub-image groups, 4 latents each",
         "local": "FIT without global layers (local only)", "hashed": "P30 binary-hash linear attention, 4 layers"}
PAPERS = {"full": "-", "fit": "P23", "local": "P23", "hashed": "P30"}


def efficiency_rows(quick: bool = False) -> list[CostRow]:
    """The long-grid mirror task: plain = full attention; FIT, local-only and hashed beside it."""
    task = GridTask(height=8, width=16, steps=40, warmup=10) if quick else GridTask()
    results = long_grid(task)
    plain = results["full"]["loss"]
    rows = []
    for kind, r in results.items():
        rows.append(CostRow(task=f"mirror grid {task.height}x{task.width}", technique="plain" if kind == "full" else kind,
                            paper=PAPERS[kind], params=r["params"], flops=r["flops"], peak_bytes=r["peak_bytes"],
                            train_step_s=r["step_s"], infer_s=r["infer_s"], infer_what="forward of 8 grids",
                            metric="masked-half MSE / variance", quality=r["loss"], plain_quality=plain,
                            higher_is_better=False, note=NOTES[kind]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per variant on the grid task")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/fit.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    curve = cost_vs_length((256, 1024, 4096), (16384,))
    slopes = {k: slope(curve, f"{k}_s", 1024, 4096) for k in ("full", "fit", "hashed")}
    peak_slopes = {k: slope(curve, f"{k}_peak_mib", 1024, 4096) for k in ("full", "fit", "hashed")}
    task = GridTask(steps=args.steps)
    grid = {k: {kk: vv for kk, vv in v.items() if kk != "model_ref"} for k, v in long_grid(task).items()}
    full, fit = grid["full"]["loss"], grid["fit"]["loss"]
    claims = {
        "fit_time_slope_1024_4096_at_most_1.3": slopes["fit"] <= 1.3,
        "full_time_slope_1024_4096_near_2": slopes["full"] >= 1.7,
        "local_only_fails (loss > 0.9)": grid["local"]["loss"] > 0.9,
        "fit_within_5pct_of_full_loss": fit <= 1.05 * full,
        "fit_step_cheaper_than_full": grid["fit"]["step_s"] < grid["full"]["step_s"],
    }
    result = dict(args=vars(args), machine=platform.processor() or platform.machine(), torch=torch.__version__,
                  cost_vs_length=curve, time_slopes_1024_4096=slopes, peak_slopes_1024_4096=peak_slopes,
                  task=dataclasses.asdict(task), long_grid=grid, claims=claims,
                  seconds=time.perf_counter() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(dict(slopes=slopes, peak_slopes=peak_slopes, claims=claims, seconds=result["seconds"]), indent=2))


if __name__ == "__main__":
    main()
