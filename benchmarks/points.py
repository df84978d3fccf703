"""P7 (VAT) on the point-set tokenizer: does occupancy improve with every scale of a multi-scale
residual quantizer, do the first scales beat a mean shape, and does the variational form (Gaussian +
KL before quantizing) keep more of the codebook in use at equal IoU?

    python benchmarks/points.py [--steps 1500] [--threads 1] [--out benchmarks/results/points.json]

Data: the procedural primitives (data/primitives.py), 512 surface points and 1,024 occupancy queries
a shape, 2,048 training and 128 held-out shapes. Models (tokenizers/pointset.py, 16 latent tokens,
width 96, 2 self-attention blocks, the same seed and batches):

    kl            a KL-Gaussian bottleneck (3DShape2VecSet's), 16 tokens x 8 channels, continuous
    msrq          multi-scale residual quantization, scales 1, 2, 4, 8, 16 tokens (31 codes of K 256)
    msrq + vvq    the same after a reparameterised Gaussian with a KL to N(0, I) (VAT's VVQ)

Per model on the held-out shapes: occupancy IoU and accuracy at the queries, and, from the decoded
surfaces (marching cubes on a 32^3 lattice, 512 points), Chamfer-L2 and F-score at 1 % / 2 % of
the box diagonal; for the quantized models the same after decoding the first k scales (k = 1..5),
the bytes a shape takes (codes x 8 bits), codebook usage and perplexity. The mean-shape baseline
predicts each query's occupancy from the training shapes' mean occupancy near it (an 8^3 grid).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from latentforge.atomic import write_json
from latentforge.data.primitives import PrimitivesConfig, PrimitivesData
from latentforge.modalities.point_metrics import chamfer_l2, f_score, tau_of_diagonal
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.quantize.multiscale import MultiScaleConfig
from latentforge.tokenizers.pointset import PointSetConfig, PointSetTokenizer

SCALES = (1, 2, 4, 8, 16)
BASE = dict(points=512, latents=16, dim=96, heads=4, depth=2, bands=6, decode_grid=32)
MODELS = {
    "kl": GaussianConfig(dim=32, latent_channels=8, kl_weight=1e-4),
    "msrq": MultiScaleConfig(dim=32, codebook_size=256, scales=SCALES, codebook_update="ema"),
    "msrq + vvq": MultiScaleConfig(dim=32, codebook_size=256, scales=SCALES, codebook_update="ema",
                                   variational=True, kl_weight=1e-4),
}
KEYS = ("points", "queries", "occupancy")


def train(model: torch.nn.Module, data: dict, steps: int, batch: int, lr: float, seed: int,
          keys: tuple[str, ...] = KEYS) -> dict:
    """A tokenizer's loss on random batches of data[keys] (benchmarks/implicit.py and mar3d.py train with
    it too): AdamW, linear warm-up then cosine to 10 %, gradient clipping; batches drawn from `seed`.
    Leaves the model in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    order = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data[keys[0]]), (batch,), generator=order)
        out = model.loss({k: data[k][idx] for k in keys})
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
    model.eval()
    return {"train_seconds": time.perf_counter() - start, "final_loss": float(out["loss"].detach())}


@torch.no_grad()
def occupancy_scores(model: PointSetTokenizer, z_q: torch.Tensor, val: dict) -> dict:
    logits = model.occupancy_logits(model.latent_field(z_q), val["queries"])
    pred, truth = logits > 0, val["occupancy"]
    iou = ((pred & truth).sum(1).float() / (pred | truth).sum(1).clamp_min(1).float()).mean()
    surface = model.decode_latents(z_q)
    tau1, tau2 = tau_of_diagonal(0.01), tau_of_diagonal(0.02)
    return {"iou": float(iou), "acc": float((pred == truth).float().mean()),
            "chamfer_l2": float(chamfer_l2(surface, val["points"]).mean()),
            "f_score_1pct": float(f_score(surface, val["points"], tau1).mean()),
            "f_score_2pct": float(f_score(surface, val["points"], tau2).mean()),
            "empty_decodes": int(model.empty_decodes)}


@torch.no_grad()
def evaluate(model: PointSetTokenizer, val: dict) -> dict:
    model.eval()
    q = model.quantize(val["points"])
    out = {"full": occupancy_scores(model, q.z_q, val)}
    if model.quantizer.discrete:
        counts = torch.bincount(q.codes.flatten(), minlength=model.quantizer.vocab_size).double()
        p = counts / counts.sum()
        out["usage"] = float((counts > 0).double().mean())
        out["perplexity"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        out["scales"] = []
        for k, bound in enumerate(model.quantizer.scale_bounds(), start=1):
            row = occupancy_scores(model, model.quantizer.lookup(q.codes[:, :bound]), val)
            out["scales"].append({"scales": k, "codes": bound, "bytes": bound, **row})
    return out


def mean_shape_iou(train: dict, val: dict, cells: int = 8) -> float:
    """IoU of 'inside where most training shapes are inside' (per cell of a cells^3 grid)."""
    def cell(q):
        c = ((q + 1) / 2 * cells).long().clamp(0, cells - 1)
        return (c[..., 0] * cells + c[..., 1]) * cells + c[..., 2]

    idx, occ = cell(train["queries"]).flatten(), train["occupancy"].flatten().double()
    inside = torch.zeros(cells ** 3, dtype=torch.float64).index_add_(0, idx, occ)
    total = torch.zeros(cells ** 3, dtype=torch.float64).index_add_(0, idx, torch.ones_like(occ))
    mean = inside / total.clamp_min(1)
    pred = mean[cell(val["queries"])] > 0.5
    truth = val["occupancy"]
    return float(((pred & truth).sum(1).float() / (pred | truth).sum(1).clamp_min(1).float()).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/points.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = PrimitivesData(PrimitivesConfig(points=512, queries=1024, train_size=args.train_size, val_size=args.val_size))
    t0 = time.perf_counter()
    train_split = {k: torch.as_tensor(np.asarray(v)) for k, v in data.split("train").items() if k in KEYS}
    val = {k: torch.as_tensor(np.asarray(v)) for k, v in data.split("val").items() if k in KEYS}
    print(f"data: {time.perf_counter() - t0:.0f} s", flush=True)
    results = {"mean shape": {"iou": mean_shape_iou(train_split, val)}}
    print(f"mean shape: IoU {results['mean shape']['iou']:.3f}", flush=True)
    for name, quantizer in MODELS.items():
        if args.only and name not in args.only.split(","):
            continue
        torch.manual_seed(args.seed)
        model = PointSetTokenizer(PointSetConfig(**BASE, quantizer=quantizer))
        info = train(model, train_split, args.steps, args.batch, args.lr, args.seed)
        results[name] = {**info, "params": sum(p.numel() for p in model.parameters()), **evaluate(model, val)}
        full = results[name]["full"]
        per_scale = ", ".join(f"{r['scales']}: {r['iou']:.3f}" for r in results[name].get("scales", []))
        print(f"{name}: IoU {full['iou']:.3f}, CD {full['chamfer_l2']:.4f}, F@1% {full['f_score_1pct']:.3f}, "
              f"usage {results[name].get('usage', float('nan')):.2f}; IoU by scales {per_scale}", flush=True)
    meta = {"args": vars(args), "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "date": time.strftime("%Y-%m-%d %H:%M"), "base": BASE}
    write_json(args.out, {"meta": meta, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
