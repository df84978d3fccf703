"""P10 ECO-M2F check at toy scale: early exits with a shared head and a learned gate, counting Shapes.

Task: Shapes images (32 x 32, 1-6 objects; `latentforge.data.shapes`) -> the object count (6 classes).
Model: a small ViT, patch 4 (64 tokens) -> `EarlyExitEncoder` (width 64, 6 layers, 4 heads, exits after
layers 1..6) with one shared head (mean-pool -> Linear -> 6 logits) at every exit.

The paper's three steps (`latentforge/nn/early_exit.py`):
1. train the parent with the mean of the six exits' cross-entropies;
2. per training image, quality q_k = the probability exit k gives the true count; targets over exits
   = softmax((q_k - beta k) / tau) (tau = 0.02 by default, `--tau 0` for one-hot argmax);
3. train the gate (Linear on the average of the input tokens) on those targets, for every beta in the
   sweep; the parent is trained once.

Reported per beta, on a validation split: mean depth (layers run), count accuracy (and as % of the full
depth's), FLOPs and median wall-clock of gated inference vs full depth, Spearman / Pearson correlation
between chosen depth and object count. Controls beside the gate: each fixed exit's accuracy (a static
shallower model at the same mean depth) and an oracle that picks each validation image's best exit by
the same rule from its own (unknowable at inference) quality.

Claims checked: (1) gated keeps >= 95 % of full-depth accuracy with fewer layers on average (at some
beta > 0); (2) mean depth falls monotonically (non-increasing) as beta grows; (3) chosen depth
correlates with object count (Spearman rho > 0, p < 0.01, at every beta where the depth varies).

    python benchmarks/early_exit.py [--steps 650] [--train 6000] [--val 1000] [--threads 1]
                                    [--out benchmarks/results/early_exit.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentforge.atomic import write_json  # noqa: E402
from latentforge.data.shapes import ShapesConfig, sample_and_render  # noqa: E402
from latentforge.eval.cost import CostRow, inference_cost, parameter_count  # noqa: E402
from latentforge.nn.early_exit import EarlyExitConfig, EarlyExitEncoder, exit_loss, exit_targets, fit_gate  # noqa: E402
from latentforge.nn.patches import PatchEmbedding  # noqa: E402

BETAS = (0.0, 0.005, 0.01, 0.02, 0.05)  # compute penalty, in probability-of-the-true-count per layer
CLASSES = 6  # counts 1..6


@dataclass
class BenchConfig:
    train: int = 6000  # training images (the parent's and the gate's)
    val: int = 1000  # validation images (every number reported)
    steps: int = 650  # parent training steps
    batch: int = 64
    lr: float = 2e-3
    dim: int = 64
    depth: int = 6
    heads: int = 4
    tau: float | None = 0.02  # target temperature; None: one-hot argmax
    gate_steps: int = 400
    betas: tuple[float, ...] = BETAS
    timing_batch: int = 500  # validation images per timed inference call
    seed: int = 0


# --- model -------------------------------------------------------------------------------------


class CountHead(nn.Module):
    """The shared exit head: mean over tokens -> logits. features [B, T, D] -> [B, classes]."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h.mean(dim=1))


class CountingViT(nn.Module):
    """Patch embedding + learned positions -> `EarlyExitEncoder` with a `CountHead`."""

    def __init__(self, cfg: EarlyExitConfig, image: int = 32, patch: int = 4) -> None:
        super().__init__()
        self.embed = PatchEmbedding(3, cfg.dim, patch)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2, cfg.dim))
        self.encoder = EarlyExitEncoder(cfg, CountHead(cfg.dim, CLASSES))

    def tokens(self, images: Tensor) -> Tensor:
        """images float [B, 3, H, W] in [-1, 1] -> the encoder's input tokens [B, T, D]."""
        return self.embed(images) + self.pos


def load_split(split: str, n: int) -> tuple[Tensor, Tensor]:
    """Images float [n, 3, 32, 32] in [-1, 1] and counts - 1, int64 [n]."""
    scenes, images = sample_and_render(ShapesConfig(min_objects=1, max_objects=6), split, range(n), workers=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, torch.tensor([len(s.objects) - 1 for s in scenes])


# --- step 1: the parent ------------------------------------------------------------------------


def train_parent(model: CountingViT, x: Tensor, y: Tensor, cfg: BenchConfig) -> list[float]:
    """Mean of the exits' cross-entropies; horizontal flips (they keep the count). Returns step seconds."""
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    warmup = max(1, cfg.steps // 20)  # linear warm-up, then cosine to zero
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(i / cfg.steps, 1.0)))))
    model.train()
    seconds = []
    for _ in range(cfg.steps):
        t = time.perf_counter()
        idx = torch.randint(0, len(x), (cfg.batch,), generator=g)
        flip = torch.rand(cfg.batch, 1, 1, 1, generator=g) < 0.5
        xb = torch.where(flip, x[idx].flip(3), x[idx])  # [b, 3, H, W]
        loss = exit_loss(model.encoder.forward_exits(model.tokens(xb)), y[idx], F.cross_entropy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seconds.append(time.perf_counter() - t)
    model.eval()
    return seconds


@torch.no_grad()
def exit_probabilities(model: CountingViT, x: Tensor, y: Tensor, chunk: int = 500) -> tuple[Tensor, Tensor]:
    """Per example and exit: the probability of the true count [N, E] and whether the argmax is right [N, E]."""
    p_true, correct = [], []
    for i in range(0, len(x), chunk):
        outs = model.encoder.forward_exits(model.tokens(x[i:i + chunk]))  # E x [b, classes]
        yb = y[i:i + chunk, None]  # [b, 1]
        p_true.append(torch.stack([o.softmax(-1) for o in outs], 1).gather(2, yb[..., None].expand(-1, len(outs), 1))
                      .squeeze(2))
        correct.append(torch.stack([o.argmax(-1) for o in outs], 1) == yb)
    return torch.cat(p_true), torch.cat(correct)


@torch.no_grad()
def pooled_tokens(model: CountingViT, x: Tensor, chunk: int = 1000) -> Tensor:
    """The gate's input: the average input token of each image, [N, 1, D]."""
    return torch.cat([model.tokens(x[i:i + chunk]).mean(1, keepdim=True) for i in range(0, len(x), chunk)])


# --- steps 2-3 per beta, and the evaluation ------------------------------------------------------


def correlation(depths: Tensor, counts: Tensor) -> dict[str, float | None]:
    """Spearman and Pearson correlation (with p-values) of chosen depth and object count; None if the
    depth is the same for every image (no correlation is defined)."""
    if depths.unique().numel() < 2:
        return {"spearman": None, "spearman_p": None, "pearson": None, "pearson_p": None}
    d, c = depths.double().numpy(), counts.double().numpy()
    rho, rho_p = stats.spearmanr(d, c)
    r, r_p = stats.pearsonr(d, c)
    return {"spearman": float(rho), "spearman_p": float(rho_p), "pearson": float(r), "pearson_p": float(r_p)}


def gate_for_beta(model: CountingViT, pooled: Tensor, quality: Tensor, beta: float, cfg: BenchConfig) -> None:
    """Steps 2-3: targets from training quality at this beta, then a freshly initialised gate fitted to them."""
    torch.manual_seed(cfg.seed)
    model.encoder.gate.proj.reset_parameters()
    fit_gate(model.encoder.gate, pooled, exit_targets(quality, beta, cfg.tau), cfg.gate_steps)


def evaluate_gate(model: CountingViT, x: Tensor, y: Tensor, val_quality: Tensor, beta: float,
                  cfg: BenchConfig) -> dict:
    """Gated inference on the validation split: depth, accuracy, correlation with count, oracle."""
    enc = model.encoder
    with torch.no_grad():
        logits, depths = enc.gated_forward(model.tokens(x))
    accuracy = (logits.argmax(-1) == y).float().mean().item()
    oracle_choice = exit_targets(val_quality, beta, None).argmax(-1)  # the best exit of each image, known only
    oracle_depth = torch.tensor(enc.exits)[oracle_choice]  # after the fact
    hist = torch.bincount(depths, minlength=cfg.depth + 1)[1:]
    by_count = [depths[y == c].double().mean().item() if (y == c).any() else None for c in range(CLASSES)]
    return {"beta": beta, "mean_depth": depths.double().mean().item(), "accuracy": accuracy,
            "depth_histogram": hist.tolist(), "mean_depth_by_count": by_count,
            **correlation(depths, y + 1),
            "oracle_mean_depth": oracle_depth.double().mean().item(),
            "oracle_spearman": correlation(oracle_depth, y + 1)["spearman"]}


def inference_costs(model: CountingViT, x: Tensor, gated: bool) -> dict:
    """FLOPs, peak bytes and median seconds of gated inference (or of the full depth) on images x."""
    enc = model.encoder
    with torch.no_grad():
        if gated:
            return inference_cost(lambda: enc.gated_forward(model.tokens(x)), repeats=3)
        return inference_cost(lambda: enc(model.tokens(x)), repeats=3)


def run(cfg: BenchConfig, log: bool = True) -> dict:
    """Train the parent once, then the gate per beta; everything the report and the efficiency rows need."""
    say = print if log else (lambda *a, **k: None)
    t0 = time.perf_counter()
    x_train, y_train = load_split("train", cfg.train)
    x_val, y_val = load_split("val", cfg.val)
    say(f"data: {cfg.train} train, {cfg.val} val images ({time.perf_counter() - t0:.0f} s)", flush=True)

    torch.manual_seed(cfg.seed)
    enc_cfg = EarlyExitConfig(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, min_exit=1)
    model = CountingViT(enc_cfg)
    step_s = train_parent(model, x_train, y_train, cfg)
    say(f"parent: {cfg.steps} steps, median {statistics.median(step_s):.3f} s/step", flush=True)

    q_train, correct_train = exit_probabilities(model, x_train, y_train)
    q_val, correct_val = exit_probabilities(model, x_val, y_val)
    exits = list(model.encoder.exits)
    per_exit = {"exits": exits,
                "val_accuracy": correct_val.float().mean(0).tolist(),
                "train_accuracy": correct_train.float().mean(0).tolist(),
                "val_p_true": q_val.mean(0).tolist(),
                "val_accuracy_by_count": {c + 1: correct_val[y_val == c].float().mean(0).tolist()
                                          for c in range(CLASSES)}}
    full_acc = per_exit["val_accuracy"][-1]
    say("per-exit val accuracy: " + ", ".join(f"{k}:{a:.3f}" for k, a in zip(exits, per_exit["val_accuracy"])))

    pooled = pooled_tokens(model, x_train)
    timing_x = x_val[:cfg.timing_batch]
    full_cost = inference_costs(model, timing_x, gated=False)
    gated_rows = []
    for beta in cfg.betas:
        gate_for_beta(model, pooled, q_train, beta, cfg)
        row = evaluate_gate(model, x_val, y_val, q_val, beta, cfg)
        gated_cost = inference_costs(model, timing_x, gated=True)
        # a static model of the same mean depth: the fixed exit at the rounded-up mean depth
        static_depth = min(cfg.depth, max(exits[0], int(-(-row["mean_depth"] // 1))))
        row.update(accuracy_pct_of_full=100 * row["accuracy"] / full_acc, flops=gated_cost["flops"],
                   flops_full=full_cost["flops"], infer_s=gated_cost["infer_s"], infer_s_full=full_cost["infer_s"],
                   peak_bytes=gated_cost["peak_bytes"], peak_bytes_full=full_cost["peak_bytes"],
                   static_exit_depth=static_depth,
                   static_exit_accuracy=per_exit["val_accuracy"][exits.index(static_depth)])
        gated_rows.append(row)
        rho = "n/a" if row["spearman"] is None else f"{row['spearman']:+.3f}"
        say(f"beta {beta:<6} depth {row['mean_depth']:.2f} (oracle {row['oracle_mean_depth']:.2f}) "
            f"acc {row['accuracy']:.3f} ({row['accuracy_pct_of_full']:.1f} % of full) "
            f"flops {row['flops'] / row['flops_full']:.2f}x time {row['infer_s'] / row['infer_s_full']:.2f}x "
            f"spearman(depth, count) {rho}", flush=True)

    return {"config": dataclasses.asdict(cfg), "params": parameter_count(model),
            "gate_params": parameter_count(model.encoder.gate),
            "train_step_s": statistics.median(step_s), "full_accuracy": full_acc, "per_exit": per_exit,
            "full_cost": full_cost, "gated": gated_rows, "claims": claims(gated_rows, cfg.depth),
            "seconds": time.perf_counter() - t0}


def claims(rows: list[dict], depth: int) -> dict:
    keeps = [r for r in rows if r["beta"] > 0 and r["mean_depth"] < depth and r["accuracy_pct_of_full"] >= 95]
    depths = [r["mean_depth"] for r in rows]
    varying = [r for r in rows if r["spearman"] is not None]
    return {
        "1_keeps_95pct_with_fewer_layers": {
            "held": bool(keeps), "betas": [r["beta"] for r in keeps],
            "lowest_depth_kept": min((r["mean_depth"] for r in keeps), default=None)},
        "2_depth_falls_with_beta": {
            "held": all(b <= a + 1e-9 for a, b in zip(depths, depths[1:])), "mean_depths": depths},
        "3_depth_correlates_with_count": {
            "held": bool(varying) and all(r["spearman"] > 0 and r["spearman_p"] < 0.01 for r in varying),
            "spearman": {r["beta"]: r["spearman"] for r in rows}},
    }


# --- the efficiency table -------------------------------------------------------------------------


def efficiency_rows(quick: bool = False) -> list[CostRow]:
    """Plain = the parent at full depth; rows: gated at beta = 0.01 and 0.02 (same parent, same run)."""
    torch.set_num_threads(1)
    cfg = (BenchConfig(train=300, val=100, steps=10, gate_steps=50, betas=(0.01, 0.02), timing_batch=50)
           if quick else BenchConfig(train=4000, val=1000, steps=300, betas=(0.01, 0.02), timing_batch=500))
    res = run(cfg, log=False)
    what = f"count {cfg.timing_batch} val images (patch embedding + encoder + head)"
    common = dict(task="shapes object count (1-6), ViT 6x64", paper="P10 ECO-M2F", params=res["params"],
                  train_step_s=res["train_step_s"], infer_what=what, metric="count accuracy",
                  plain_quality=res["full_accuracy"], higher_is_better=True)
    full = res["full_cost"]
    rows = [CostRow(technique="plain", flops=full["flops"], peak_bytes=full["peak_bytes"], infer_s=full["infer_s"],
                    quality=res["full_accuracy"], note="the early-exit parent run to full depth (6 layers)", **common)]
    for r in res["gated"]:
        rows.append(CostRow(technique=f"early exit + gate (beta={r['beta']})", flops=r["flops"],
                            peak_bytes=r["peak_bytes"], infer_s=r["infer_s"], quality=r["accuracy"],
                            note=f"mean depth {r['mean_depth']:.2f} of {cfg.depth}; params incl. "
                                 f"{res['gate_params']}-param gate; train step = the parent's", **common))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    ap.add_argument("--steps", type=int, default=defaults.steps)
    ap.add_argument("--train", type=int, default=defaults.train)
    ap.add_argument("--val", type=int, default=defaults.val)
    ap.add_argument("--tau", type=float, default=defaults.tau, help="target temperature; 0: one-hot argmax")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/early_exit.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = BenchConfig(train=args.train, val=args.val, steps=args.steps, tau=args.tau or None, seed=args.seed)
    result = run(cfg)
    result.update(date=time.strftime("%Y-%m-%d"), machine=f"{platform.processor() or platform.machine()}, "
                  f"{args.threads} thread(s)", command=" ".join(sys.argv))
    for name, claim in result["claims"].items():
        print(f"claim {name}: {'HELD' if claim['held'] else 'NOT HELD'}")
    write_json(args.out, result)
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
