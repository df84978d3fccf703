"""P17 (Point-MAE) on the procedural primitives: does masked-patch pretraining give features a
linear probe reads the primitive's class and size from, better than a randomly initialised encoder
of the same architecture, with few labels and with many? And does the decoder-only placement of the
mask tokens (Point-MAE's design) match the encoder-side placement at lower cost?

    python benchmarks/point_mae.py [--steps 1000] [--threads 1] [--out benchmarks/results/point_mae.json]

Data: data/primitives.py, 512 surface points a shape, each turned by a random rotation (the axis-aligned
set is too easy: a random-init encoder's probe reads its class 0.99 right); 2,048 unlabelled training shapes for
pretraining, 1,024 of them labelled for the probes (subsets of 24 / 96 / 1,024 labels), 512 held-out
shapes to score. Encoder: 32 groups of 16 points (FPS + kNN), width 128, 4 blocks, 4 heads, decoder
2 blocks, 60 % masked (AdamW 1e-3, weight decay 0.05, cosine, batch 32).

Rows: Point-MAE pretrained; the same pretrained with the mask tokens in the encoder; the same
architecture at random init; the raw 8^3 occupancy histogram of the points (no network). Columns:
probe accuracy for class (6) and size (2) per label count (each subset drawn 3 times, mean),
held-out masked-group Chamfer-L2 against the predict-the-mean-group baseline, seconds a training step.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from latentforge.atomic import write_json
from latentforge.data.primitives import PrimitivesConfig, PrimitivesData
from latentforge.eval.linear_probe import linear_probe_accuracy
from latentforge.pretraining.point_mae import PointMAE, PointMAEConfig, pretrain

LABELS = (24, 96, 1024)
CONFIG = dict(groups=32, group_size=16, dim=128, depth=4, decoder_depth=2, heads=4)


@torch.no_grad()
def held_out_chamfer(model: PointMAE, shapes: torch.Tensor) -> dict:
    model.eval()
    out = model.loss({"points": shapes}, generator=torch.Generator().manual_seed(1))
    return {"masked_chamfer": float(out["chamfer"]), "mean_group_chamfer": float(out["mean_group_chamfer"])}


def voxel_histogram(points: np.ndarray, side: int = 8) -> np.ndarray:
    """[N, P, 3] in [-1, 1] -> [N, side^3]: the fraction of points in each cell."""
    cells = np.clip(((points + 1) / 2 * side).astype(int), 0, side - 1)
    flat = (cells[..., 0] * side + cells[..., 1]) * side + cells[..., 2]
    return np.stack([np.bincount(f, minlength=side ** 3) for f in flat]).astype(np.float64) / points.shape[1]


def probe_scores(train_x, train, test_x, test, rng_seed: int = 0) -> dict:
    """Class and size accuracy per label count (mean of 3 random label subsets)."""
    out = {}
    for target, classes in (("label", 6), ("size", 2)):
        for n in LABELS:
            accs = []
            for draw in range(3 if n < len(train_x) else 1):
                pick = np.random.default_rng(rng_seed + draw).permutation(len(train_x))[:n]
                accs.append(linear_probe_accuracy(train_x[pick], train[target][pick], test_x, test[target], classes))
            out[f"{target}_acc@{n}"] = float(np.mean(accs))
    return out


def random_rotations(n: int, seed: int) -> np.ndarray:
    """[n, 3, 3] rotations uniform on SO(3): QR of Gaussian matrices with the signs fixed."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def rotated(points: np.ndarray, seed: int) -> torch.Tensor:
    """Each shape turned by its own random rotation, so the class is not readable off the axes."""
    return torch.from_numpy(np.einsum("npj,nij->npi", points, random_rotations(len(points), seed)).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = PrimitivesData(PrimitivesConfig(points=512, queries=2, train_size=2048, val_size=512))
    train, test = data.split("train"), data.split("val")
    shapes, held_out = rotated(train["points"], 0), rotated(test["points"], 1)
    labelled = {k: np.asarray(train[k][:max(LABELS)]) for k in ("label", "size")}
    scored = {k: np.asarray(test[k]) for k in ("label", "size")}
    results = {"steps": args.steps, "threads": args.threads, "train_shapes": len(shapes), "test_shapes": len(held_out),
               "labels": list(LABELS), "models": {}}

    def features(model):
        return model.features(shapes[:max(LABELS)]).numpy(), model.features(held_out).numpy()

    for name, changes, steps in (("point-mae", {}, args.steps),
                                 ("point-mae, mask tokens in encoder", {"mask_tokens_in_encoder": True}, args.steps),
                                 ("random init", {}, 0)):
        torch.manual_seed(0)
        model = PointMAE(PointMAEConfig(**CONFIG, **changes))
        row = {"seconds_per_step": pretrain(model, shapes, steps)["seconds_per_step"]} if steps else {}
        row.update(held_out_chamfer(model, held_out))
        row.update(probe_scores(*(lambda a, b: (a, labelled, b, scored))(*features(model))))
        results["models"][name] = row
        print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
    row = probe_scores(voxel_histogram(shapes[:max(LABELS)].numpy()), labelled, voxel_histogram(held_out.numpy()), scored)
    results["models"]["8^3 occupancy histogram"] = row
    print("8^3 occupancy histogram", {k: round(v, 4) for k, v in row.items()}, flush=True)
    results["seconds"] = time.perf_counter() - start
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"point_mae_{args.steps}steps.json")
    write_json(out, results)
    print(f"wrote {out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
