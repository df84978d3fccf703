"""P29 check at toy scale: does a variational TopK SAE leave more dead features than a plain one?

Data (toy superposition, known answer): G unit ground-truth directions in d dimensions (G > d, so
they cannot be orthogonal). Each example switches each feature on with probability p (about
`active` features per example), gives the active ones magnitudes U(0, 1), sums the scaled
directions and adds a little isotropic Gaussian noise:

    x = sum_g  [u_g < p] * a_g * f_g + noise        f_g unit [d],  a_g ~ U(0, 1)

Model: `TopKBottleneck` (latentforge/quantize/topk.py) used directly as a sparse autoencoder on
these vectors: the vectors are the "encoder outputs" (positions [B, d]), its decoder output is the
reconstruction. Loss = squared error per vector (summed over d, averaged over the batch) + the
bottleneck's own terms (the KL for the vSAE, already scaled by `kl_weight`). The KL term ramps in
linearly over the first `kl_warmup` of the steps, as in the vSAE code. Every variant sees the same
seed, the same initial weights (the bottleneck's encoder/decoder are built before the vSAE's
log-variance head), the same data stream and the same optimizer (Adam).

Reported per variant, in eval mode (no sampling noise), over `--eval` fresh examples:
- dead: fraction of the F dictionary features never in the (positive) top-k of any example;
- fvu: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
- recovery: mean over ground-truth directions of the max cosine with a living decoder column
  (dead columns never reconstruct anything, so they do not count), and `recovered`: the fraction of
  directions matched above cosine 0.9;
- kl: the KL in nats per example, summed over kept features (vSAE only).

P29's claims checked: at equal k and F, the vSAE has more dead features and a higher MSE than the
TopK SAE, both growing with kl_weight, and lower recovery.

    python benchmarks/sparse.py [--steps 2500] [--seeds 0,1,2] [--kl-weights 1e-3,1e-2,1e-1,1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from latentforge.quantize.topk import TopKBottleneck, TopKConfig

# --- toy superposition data ---------------------------------------------------------------------


@dataclass
class ToyConfig:
    features: int = 128     # G ground-truth directions
    dim: int = 32           # d
    active: float = 5.0     # expected active features per example (p = active / G)
    noise: float = 0.01     # std of the isotropic noise per dimension


def ground_truth(cfg: ToyConfig, generator: torch.Generator) -> Tensor:
    """G random unit directions [G, d]."""
    return F.normalize(torch.randn(cfg.features, cfg.dim, generator=generator), dim=-1)


def toy_batch(cfg: ToyConfig, directions: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n examples [n, d]: sparse non-negative combinations of the directions plus noise."""
    on = torch.rand(n, cfg.features, generator=generator) < cfg.active / cfg.features  # [n, G]
    coef = torch.rand(n, cfg.features, generator=generator) * on                        # [n, G]
    noise = cfg.noise * torch.randn(n, cfg.dim, generator=generator)
    return coef @ directions + noise                                                     # [n, d]


# --- training and evaluation --------------------------------------------------------------------


def train_sae(sae: TopKBottleneck, toy: ToyConfig, directions: Tensor, *, steps: int, batch: int, lr: float,
              seed: int, kl_warmup: float = 0.1) -> TopKBottleneck:
    """Adam on squared error + the bottleneck's losses; the KL weight ramps in over `kl_warmup` of the steps."""
    data = torch.Generator().manual_seed(seed + 1)     # identical data stream for every variant
    noise = torch.Generator().manual_seed(seed + 2)    # the vSAE's sampling noise, kept off the data stream
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    warm = max(1, int(kl_warmup * steps))
    sae.train()
    for step in range(steps):
        x = toy_batch(toy, directions, batch, data)                 # [B, d]
        q = sae(x, generator=noise)
        recon = (q.z_q - x).square().sum(-1).mean()                 # squared error per example
        ramp = min(1.0, (step + 1) / warm)
        loss = recon + ramp * sum(q.losses.values(), torch.zeros(()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sae


@torch.no_grad()
def evaluate(sae: TopKBottleneck, toy: ToyConfig, directions: Tensor, n: int, seed: int) -> dict:
    """Dead fraction, FVU, recovery and KL over n fresh examples, in eval mode."""
    sae.eval()
    x = toy_batch(toy, directions, n, torch.Generator().manual_seed(seed + 3))  # [n, d], unseen in training
    q = sae(x)
    fired = (q.codes != 0).any(0)                                                # [F]
    err = (q.z_q - x).square().sum()
    fvu = err / (x - x.mean(0)).square().sum()
    w = F.normalize(sae.decoder.weight.float(), dim=0)                           # unit columns [d, F]
    cos = directions @ w[:, fired]                                               # [G, living]
    best = cos.max(-1).values if fired.any() else torch.zeros(len(directions))   # [G]
    return {
        "dead": 1.0 - fired.float().mean().item(),
        "fvu": fvu.item(),
        "recovery": best.mean().item(),
        "recovered": (best > 0.9).float().mean().item(),
        "l0": (q.codes != 0).sum(-1).float().mean().item(),
        "kl": q.stats["kl_nats"].item() if "kl_nats" in q.stats else None,
        "dead_in_training": sae.dead_features().float().mean().item(),
    }


def run_variant(toy: ToyConfig, *, kl_weight: float | None, features: int, k: int, steps: int, batch: int,
                lr: float, seed: int, n_eval: int, kl_warmup: float = 0.1) -> dict:
    """One SAE (plain TopK when kl_weight is None) trained and evaluated; the same seed gives the same
    directions, data stream and initial encoder/decoder for every kl_weight."""
    directions = ground_truth(toy, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    cfg = TopKConfig(dim=toy.dim, features=features, k=k, variational=kl_weight is not None,
                     kl_weight=kl_weight or 0.0, dead_window=max(1, steps // 5))
    sae = train_sae(TopKBottleneck(cfg), toy, directions, steps=steps, batch=batch, lr=lr, seed=seed,
                    kl_warmup=kl_warmup)
    return evaluate(sae, toy, directions, n_eval, seed)


# --- the comparison -----------------------------------------------------------------------------


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _cell(s: dict | None, fmt: str) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:{fmt}} [{s['min']:{fmt}}, {s['max']:{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--features", type=int, default=256, help="F: SAE dictionary size")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--kl-weights", default="1e-3,1e-2,1e-1,1")
    ap.add_argument("--kl-warmup", type=float, default=0.1, help="fraction of steps over which the KL ramps in")
    ap.add_argument("--gt-features", type=int, default=128, help="G: ground-truth directions")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--active", type=float, default=5.0, help="expected active ground-truth features per example")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--eval", type=int, default=10_000, help="fresh examples for the evaluation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/sparse.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    toy = ToyConfig(features=args.gt_features, dim=args.dim, active=args.active, noise=args.noise)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants: list[tuple[str, float | None]] = [("TopK", None)]
    variants += [(f"vSAE kl={float(w):g}", float(w)) for w in args.kl_weights.split(",")]
    start = time.perf_counter()
    results = []
    print(f"| variant | dead features | FVU | recovery (max cos) | recovered > 0.9 | KL nats/pos | "
          f"(means [min, max] over seeds {args.seeds})")
    print("|---|---|---|---|---|---|")
    for label, w in variants:
        runs = [run_variant(toy, kl_weight=w, features=args.features, k=args.k, steps=args.steps,
                            batch=args.batch, lr=args.lr, seed=s, n_eval=args.eval, kl_warmup=args.kl_warmup)
                for s in seeds]
        row = {"variant": label, "kl_weight": w, "runs": runs}
        for key in ("dead", "fvu", "recovery", "recovered", "l0", "dead_in_training"):
            row[key] = _summary([r[key] for r in runs])
        row["kl"] = _summary([r["kl"] for r in runs]) if w is not None else None
        results.append(row)
        print(f"| {label} | {_cell(row['dead'], '.3f')} | {_cell(row['fvu'], '.3f')} | "
              f"{_cell(row['recovery'], '.3f')} | {_cell(row['recovered'], '.2f')} | {_cell(row['kl'], '.2f')} |",
              flush=True)
    claims = check_claims(results)
    for name, ok in claims.items():
        print(f"- {name}: {'reproduced' if ok else 'NOT reproduced'}")
    from latentforge.atomic import write_json

    meta = {"args": vars(args), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - start, 1)}
    write_json(args.out, {"meta": meta, "results": results, "claims": claims})


def check_claims(results: list[dict]) -> dict[str, bool]:
    """P29's claims on seed means: each vSAE vs TopK, and monotone growth with kl_weight."""
    plain, vsae = results[0], results[1:]
    mean = lambda row, key: row[key]["mean"]  # noqa: E731
    rising = lambda key: all(mean(a, key) <= mean(b, key) for a, b in zip(vsae, vsae[1:]))  # noqa: E731
    return {
        "vSAE more dead features than TopK (every kl_weight)": all(mean(r, "dead") > mean(plain, "dead") for r in vsae),
        "dead fraction non-decreasing in kl_weight": rising("dead"),
        "vSAE higher FVU than TopK (every kl_weight)": all(mean(r, "fvu") > mean(plain, "fvu") for r in vsae),
        "FVU non-decreasing in kl_weight": rising("fvu"),
        "vSAE lower recovery than TopK (every kl_weight)":
            all(mean(r, "recovery") < mean(plain, "recovery") for r in vsae),
    }


if __name__ == "__main__":
    main()
