"""P30 EcoFormer check at toy scale: binary-hash linear attention vs softmax attention.

1. Scaling: one `Attention` layer (width 64, 4 heads), batch 1, forward at N = 256 .. 16384 tokens,
   softmax (SDPA) vs hashed (b = 16 bits, m = 25 anchors), one thread: median seconds per forward and
   the peak of live tensor bytes that the layer's ops produce (counted at the dispatcher, so a
   fused kernel's private scratch, e.g. SDPA's flash blocks, is not seen).
2. Quality, task with a known answer (group-mean denoising): each token carries a group id g (of G = 8)
   and a noisy vector x = mu_g + noise (P = 4 dims, noise std 1, mu_g ~ N(0, 1) drawn per sequence);
   the target of every token is its group's mean mu_g, which only attention over the whole sequence
   can estimate. A 2-layer non-causal `Transformer` (width 64, 4 heads) is trained with softmax at
   N = 256, then its weights are loaded into `Transformer(attention="hashed")` and evaluated at
   N = 256 and 4096 with: a random hash, a hash fitted by KSH on one training batch (`fit_hashes`),
   and that fitted hash after a short fine-tune (straight-through gradients, hash kept fixed).
   Reference points: the noise floor (predict x itself: MSE = noise variance = 1) and the oracle
   (each group's sample mean of x; MSE ~ P-averaged 1 / group size).

Claims checked: time per forward grows ~linearly in N for hashed (ratio 16384 / 1024 below 16 * 1.5);
hashed is faster than softmax at the largest N; fitted hash beats a random hash; after fine-tune the
hashed model's MSE is within 2x of softmax's at 4096 tokens.

    python benchmarks/hashed_attention.py [--steps 300] [--finetune 400] [--out benchmarks/results/hashed_attention.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.eval.cost import PeakTensorBytes
from latentforge.nn.attention import Attention
from latentforge.nn.hashed_attention import fit_hashes
from latentforge.nn.transformer import Transformer

LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
GROUPS, P, WIDTH = 8, 4, 64


def scaling(reps: int) -> list[dict]:
    torch.manual_seed(0)
    layers = {"softmax": Attention(WIDTH, 4).eval(), "hashed": Attention(WIDTH, 4, hash_bits=16).eval()}
    rows = []
    for n in LENGTHS:
        x = torch.randn(1, n, WIDTH)
        row = {"tokens": n}
        for name, layer in layers.items():
            with torch.no_grad():
                layer(x)  # warm-up
                times = []
                for _ in range(reps if n <= 4096 else 2):
                    start = time.perf_counter()
                    layer(x)
                    times.append(time.perf_counter() - start)
                with PeakTensorBytes() as probe:
                    layer(x)
            row[f"{name}_seconds"] = statistics.median(times)
            row[f"{name}_peak_mib"] = probe.peak / 2**20
        rows.append(row)
        print(json.dumps(row))
    return rows


def batch(n: int, size: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Group ids [B, N], noisy x [B, N, P] and targets mu_g [B, N, P]."""
    group = torch.randint(GROUPS, (size, n), generator=gen)
    mu = torch.randn(size, GROUPS, P, generator=gen)
    target = torch.gather(mu, 1, group[..., None].expand(-1, -1, P))
    return group, target + torch.randn(size, n, P, generator=gen), target


class Denoiser(nn.Module):
    """[one-hot g, x] -> width -> Transformer (no positions: a set) -> P."""

    def __init__(self, attention: str = "softmax") -> None:
        super().__init__()
        self.embed = nn.Linear(GROUPS + P, WIDTH)
        self.body = Transformer(WIDTH, 2, 4, attention=attention, hash_bits=16)
        self.head = nn.Linear(WIDTH, P)

    def forward(self, group: Tensor, x: Tensor) -> Tensor:
        tokens = torch.cat([F.one_hot(group, GROUPS).float(), x], dim=-1)  # [B, N, G + P]
        return self.head(self.body(self.embed(tokens)))                    # [B, N, P]


def train(model: nn.Module, steps: int, gen: torch.Generator, lr: float) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        group, x, target = batch(256, 16, gen)
        loss = F.mse_loss(model(group, x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def evaluate(model: nn.Module, n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    group, x, target = batch(n, 8 if n <= 256 else 2, gen)
    return F.mse_loss(model.eval()(group, x), target).item()


@torch.no_grad()
def oracle(n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    group, x, target = batch(n, 8 if n <= 256 else 2, gen)
    onehot = F.one_hot(group, GROUPS).float()                                # [B, N, G]
    means = (onehot.transpose(1, 2) @ x) / onehot.sum(1)[..., None].clamp_min(1)  # [B, G, P]
    return F.mse_loss(onehot @ means, target).item()


def quality(steps: int, finetune: int) -> dict:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    softmax = Denoiser("softmax")
    train(softmax, steps, gen, lr=3e-3)
    lengths = (256, 4096)
    result = {"oracle": {n: oracle(n, 1) for n in lengths}, "noise_floor": 1.0,
              "softmax": {n: evaluate(softmax, n, 1) for n in lengths}}
    hashed = Denoiser("hashed")
    hashed.load_state_dict(softmax.state_dict(), strict=False)  # only the hash buffers are new
    result["hashed_random"] = {n: evaluate(hashed, n, 1) for n in lengths}
    group, x, _ = batch(256, 4, torch.Generator().manual_seed(2))
    start = time.perf_counter()
    fit_hashes(hashed, lambda: hashed(group, x))
    result["fit_seconds"] = time.perf_counter() - start
    result["hashed_fitted"] = {n: evaluate(hashed, n, 1) for n in lengths}
    train(hashed.train(), finetune, gen, lr=1e-3)
    result["hashed_fitted_finetuned"] = {n: evaluate(hashed, n, 1) for n in lengths}
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="softmax training steps")
    parser.add_argument("--finetune", type=int, default=400, help="hashed fine-tune steps")
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per point (2 past 4096 tokens)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/hashed_attention.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    curve = scaling(args.reps)
    q = quality(args.steps, args.finetune)
    by_n = {row["tokens"]: row for row in curve}
    claims = {
        "hashed_time_linear_1024_to_16384": by_n[16384]["hashed_seconds"] / by_n[1024]["hashed_seconds"] < 16 * 1.5,
        "hashed_faster_than_softmax_at_16384": by_n[16384]["hashed_seconds"] < by_n[16384]["softmax_seconds"],
        "fitted_beats_random_hash_at_4096": q["hashed_fitted"][4096] < q["hashed_random"][4096],
        "finetuned_within_2x_softmax_at_4096": q["hashed_fitted_finetuned"][4096] < 2 * q["softmax"][4096],
    }
    crossover = next((row["tokens"] for row in curve if row["hashed_seconds"] < row["softmax_seconds"]), None)
    result = dict(args=vars(args), machine=platform.processor() or platform.machine(),
                  torch=torch.__version__, scaling=curve, hashed_faster_from_tokens=crossover,
                  quality=q, claims=claims, seconds=time.perf_counter() - start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(dict(claims=claims, crossover=crossover, seconds=result["seconds"]), indent=2))


if __name__ == "__main__":
    main()
