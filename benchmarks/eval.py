"""The evaluation suite's own checks at full size (issue 5):

1. the probe networks, trained from scratch with their defaults: test accuracy (targets: >= 99 %
   on every Shapes head, >= 97 % on digits) and training time;
2. agreement of FID / KID / precision-recall / density-coverage with independent NumPy/SciPy
   computations and torchmetrics, on probe features of real images (largest relative gap);
3. the scale of each metric per data set: the floor (real val vs real test) and two baselines
   (per-pixel Gaussians, copies of training images), at N = 1,000 (Shapes) and all 179 digits;
4. FID against degradation strength on Shapes (noise, blur, mode dropping): monotonic?

    python benchmarks/eval.py [--n 1000] [--out benchmarks/results/eval.json]

Probes are trained into a temporary cache (so their time is measured) unless --cache is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from latentforge.data.base import build_dataset
from latentforge.data.sets import DigitsDataConfig, ShapesDataConfig
from latentforge.data.shapes import COLORS
from latentforge.eval import baselines
from latentforge.eval.degrade import gaussian_blur, gaussian_noise
from latentforge.eval.distribution import density_coverage, fid, kid, precision_recall
from latentforge.eval.probe import probe_dir, probe_info, train_probe
from latentforge.eval.run_metrics import set_metrics
from latentforge.train.precision import resolve_precision

GROUPS = {"fid", "kid", "pr"}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Largest relative gap of ours vs NumPy/SciPy (and torchmetrics for FID, KID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = a.shape[1]

        def forward(self, x):
            return x

    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref_fid = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real))
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kaa, kbb = k(a, a), k(b, b)
    m, n = len(a), len(b)
    ref_kid = float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                    - 2 * k(a, b).mean())
    ra, rb = np.sort(cdist(a, a), 1)[:, 3], np.sort(cdist(b, b), 1)[:, 3]
    dist = cdist(b, a)
    ref_p, ref_r = (dist <= ra[None]).any(1).mean(), (dist.T <= rb[None]).any(1).mean()
    r5 = np.sort(cdist(a, a), 1)[:, 5]
    inside = dist <= r5[None]
    ref_d, ref_c = inside.sum() / (5 * n), inside.any(0).mean()
    pr, dc = precision_recall(a, b), density_coverage(a, b)
    out = {"fid_vs_scipy": rel(fid(a, b), ref_fid), "kid_vs_numpy": rel(kid(a, b, subset_size=len(a))["kid"], ref_kid),
           "precision_vs_numpy": rel(pr["precision"], ref_p), "recall_vs_numpy": rel(pr["recall"], ref_r),
           "density_vs_numpy": rel(dc["density"], ref_d), "coverage_vs_numpy": rel(dc["coverage"], ref_c)}
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    tm_fid = FrechetInceptionDistance(feature=Identity(), normalize=True)
    tm_fid.update(a32, real=True)
    tm_fid.update(b32, real=False)
    out["fid_vs_torchmetrics"] = rel(fid(a32, b32), float(tm_fid.compute()))
    tm_kid = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=len(a), normalize=True)
    tm_kid.update(a32, real=True)
    tm_kid.update(b32, real=False)
    out["kid_vs_torchmetrics"] = rel(kid(a32, b32, subset_size=len(a))["kid"], float(tm_kid.compute()[0]))
    out["values"] = {"fid": fid(a, b), "kid": kid(a, b, subset_size=len(a))["kid"], **pr, **dc}
    return out


def degradation(probe, n: int) -> dict[str, list]:
    data = build_dataset(ShapesDataConfig(val_size=5 * n))
    real = data.split("val")["images"][:n]
    test = data.split("test")
    clean = test["images"][:n]
    a = probe.features(real)
    out: dict[str, list] = {}
    out["noise"] = [[s, fid(a, probe.features(gaussian_noise(clean, s)))] for s in (0, 4, 8, 16, 32, 64)]
    out["blur"] = [[s, fid(a, probe.features(gaussian_blur(clean, s)))] for s in (0, 0.5, 0.75, 1.0, 1.5, 2.0)]
    scenes = [json.loads(g)["objects"] for g in test["graphs"]]
    colours = list(COLORS)
    out["mode dropping"] = []
    for k in range(0, 4):
        keep = [i for i, objs in enumerate(scenes) if not any(o["color"] in colours[:k] for o in objs)][:n]
        out["mode dropping"].append([k, fid(a, probe.features(test["images"][keep])), len(keep)])
    return out


def plot(curves: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"noise": "Gaussian noise σ (of 255)", "blur": "Gaussian blur σ (pixels)",
              "mode dropping": "palette colours dropped (of 6)"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (name, points) in zip(axes, curves.items()):
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, "o-")
        ax.set_xlabel(labels[name])
        ax.set_ylabel("Shapes-FID (probe features)")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle("Shapes-FID rises monotonically with each degradation (N = 1,000 against the val split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--cache", help="probe cache folder (default: a fresh temporary one)")
    p.add_argument("--out", default="benchmarks/results/eval.json")
    args = p.parse_args()
    os.environ["LATENTFORGE_CACHE"] = args.cache or tempfile.mkdtemp(prefix="lf-probes-")
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "precision": resolve_precision("auto", torch.device("cpu")).name,
              "date": time.strftime("%Y-%m-%d"), "n": args.n, "probes": {}, "agreement": {}, "scale": {}}
    for name, cfg in (("shapes", ShapesDataConfig()), ("digits", DigitsDataConfig())):
        t = time.perf_counter()
        probe = train_probe(cfg, progress=False)
        seconds = time.perf_counter() - t
        info = probe_info(probe_dir(cfg))
        result["probes"][name] = {"test_accuracy": info["test_accuracy"], "test_images": info["test_images"],
                                  "train_seconds": seconds, "steps": info["train"]["steps"]}
        print(name, "probe", result["probes"][name], flush=True)
        data = build_dataset(cfg if name == "digits" else ShapesDataConfig(val_size=args.n))
        val, test = data.split("val")["images"][: args.n], data.split("test")["images"][: args.n]
        train = data.split("train")["images"]
        n = min(len(val), len(test))
        val, test = val[:n], test[:n]
        a, b = probe.features(val), probe.features(test)
        result["agreement"][name] = agreement(a.numpy(), b.numpy())
        print(name, "agreement", result["agreement"][name], flush=True)
        result["scale"][name] = {"n": n}
        modality = data.modality
        for label, images in (("real (test split)", test), *modality.baselines(train, n, seed=0).items()):
            values = set_metrics(probe.features, a, images, GROUPS, seed=0)
            values.update(baselines.nearest_train_ratio(modality.flat(images), modality.flat(val), modality.flat(train)))
            result["scale"][name][label] = values
            print(name, label, {k: round(v, 4) for k, v in values.items() if isinstance(v, float)}, flush=True)
        if name == "shapes":
            result["degradation"] = degradation(probe, args.n)
            print("degradation", result["degradation"], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result["degradation"], out.with_name("eval_degradation.png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
