"""P27 (NViST, small): novel views of held-out objects from a single image, against copying the input
view and the data set's mean image, and without the camera's adaLN conditioning.

    python benchmarks/novel_view.py [--steps 1200] [--out benchmarks/results/novel_view_<steps>steps.json]

Data (data/multiview.py): 600 training and 60 held-out objects, half procedural primitives and half
pybullet blobs (held-out blobs are meshes never trained on), 6 views each at 32 x 32, cameras at
random azimuth, elevation and distance (2.4 .. 4.0, so the object's size in the image varies
1.7-fold with the camera alone). Models (views/nvist.py, `MODEL` below, the same seed and batches):

    nvist             the input camera's focal lengths and distance modulate the decoder (adaLN)
    nvist, no camera  the ablation: adaLN reads a learned constant, the network otherwise the same

Evaluation: every held-out object's view 0 is the input and its other 5 views the targets; the
score is the mean per-image PSNR (dB, colours in [0, 1]) of the rendered target views, against
(a) the input view itself as the guess and (b) the mean image of the training views. Claims:
nvist beats both baselines by >= 2 dB; the camera ablation scores lower than nvist.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from latentforge.atomic import write_json
from latentforge.data.multiview import MultiViewConfig, load_multiview, view_pairs
from latentforge.modalities.image_metrics import psnr
from latentforge.views import NViST, NViSTConfig, to_batch

MODEL = dict(encoder_dim=96, encoder_depth=2, dim=96, depth=3, heads=4, plane=16, plane_channels=16, plane_patch=4,
             samples=16, rays=256, mlp_hidden=32)
MARGIN_DB = 2.0


def train(model: NViST, split: dict, steps: int, batch: int, lr: float, seed: int) -> dict:
    """AdamW with a linear warm-up and a cosine decay to 10 %; the batches are a function of seed."""
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    model.train()
    start, curve = time.perf_counter(), []
    for step in range(steps):
        out = model.loss(to_batch(view_pairs(split, rng, batch)), gen)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        curve.append(out["loss"].item())
        if step % 250 == 0 or step == steps - 1:
            print(f"  step {step:5d}  ray MSE {np.mean(curve[-50:]):.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return {"train_seconds": time.perf_counter() - start, "final_ray_mse": float(np.mean(curve[-100:]))}


def targets_of(split: dict) -> tuple[torch.Tensor, dict]:
    """Every object's views 1..V-1 as targets of its view 0: truth [N (V-1), 3, S, S] and the pairs."""
    N, V = split["images"].shape[:2]
    rows, dst = np.repeat(np.arange(N), V - 1), np.tile(np.arange(1, V), N)
    src = np.zeros_like(dst)
    pairs = {"image": split["images"][rows, src], "target": split["images"][rows, dst],
             "input_c2w": split["c2w"][rows, src], "target_c2w": split["c2w"][rows, dst],
             "input_K": split["intrinsics"][rows, src], "target_K": split["intrinsics"][rows, dst]}
    return to_batch(pairs)["target"], pairs


@torch.no_grad()
def render_all(model: NViST, pairs: dict, chunk: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(pairs["image"]), chunk):
        b = to_batch({k: v[i:i + chunk] for k, v in pairs.items()})
        out.append(model(b["image"], b["input_camera"], b["target_camera"]).clamp(0, 1))
    return torch.cat(out)                                                       # [M, 3, S, S]


def mean_psnr(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float(psnr(pred.double(), truth.double()).mean())


def save_grid(path: Path, columns: list[torch.Tensor], rows: int, scale: int = 4) -> None:
    """A PNG: one row per object, the columns side by side (each [M, 3, S, S] in [0, 1])."""
    from PIL import Image

    picked = torch.stack([c[:rows] for c in columns], 1)                       # [rows, cols, 3, S, S]
    R, Cn, _, S, _ = picked.shape
    grid = picked.permute(0, 3, 1, 4, 2).reshape(R * S, Cn * S, 3)
    image = Image.fromarray((grid.numpy() * 255).round().astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((Cn * S * scale, R * S * scale), Image.NEAREST).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--objects", type=int, default=600)
    ap.add_argument("--held-out", type=int, default=60)
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ablation", action="store_true", help="skip the model without camera adaLN")
    ap.add_argument("--out", default=None, help="default benchmarks/results/novel_view_<steps>steps.json")
    args = ap.parse_args()
    torch.set_num_threads(1)     # the benchmark machine has 2 cores and shares them
    begin = time.perf_counter()
    out = Path(args.out or f"benchmarks/results/novel_view_{args.steps}steps.json")

    data_cfg = MultiViewConfig(objects=args.objects, held_out=args.held_out, views=args.views, seed=args.seed)
    t0 = time.perf_counter()
    train_split, test_split = load_multiview(data_cfg, "train"), load_multiview(data_cfg, "test")
    data_seconds = time.perf_counter() - t0
    print(f"data: {len(train_split['images'])} train / {len(test_split['images'])} held-out objects x "
          f"{data_cfg.views} views in {data_seconds:.1f}s (cached after the first run)", flush=True)

    truth, pairs = targets_of(test_split)
    inputs = to_batch(pairs)["image"]
    mean_image = torch.from_numpy(train_split["images"].reshape(-1, *train_split["images"].shape[2:])
                                  .astype(np.float64).mean(0) / 255).permute(2, 0, 1)  # [3, S, S]
    results = {"copy input view": {"psnr": mean_psnr(inputs, truth)},
               "mean training image": {"psnr": mean_psnr(mean_image.expand_as(truth), truth)}}
    for name, r in results.items():
        print(f"{name}: PSNR {r['psnr']:.2f} dB", flush=True)

    renders = {}
    variants = {"nvist": True} if args.no_ablation else {"nvist": True, "nvist, no camera": False}
    for name, camera in variants.items():
        torch.manual_seed(args.seed)
        model = NViST(NViSTConfig(**MODEL, camera_adaln=camera))
        print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
        info = train(model, train_split, args.steps, args.batch, args.lr, args.seed)
        renders[name] = render_all(model, pairs)
        results[name] = {**info, "psnr": mean_psnr(renders[name], truth)}
        print(f"{name}: held-out novel-view PSNR {results[name]['psnr']:.2f} dB", flush=True)

    best_baseline = max(results["copy input view"]["psnr"], results["mean training image"]["psnr"])
    claims = {"nvist beats both baselines by >= 2 dB": results["nvist"]["psnr"] >= best_baseline + MARGIN_DB}
    if "nvist, no camera" in results:
        claims["camera adaLN helps (nvist > no camera)"] = results["nvist"]["psnr"] > results["nvist, no camera"]["psnr"]
    for claim, held in claims.items():
        print(f"claim {'HELD' if held else 'FAILED'}: {claim}", flush=True)

    V = data_cfg.views
    columns = [inputs, truth, renders["nvist"]] + ([renders["nvist, no camera"]] if "nvist, no camera" in renders
                                                    else []) + [inputs]
    picked = [c[::V - 1][:8] for c in columns]               # each object's first target view
    png = out.with_suffix(".png")
    save_grid(png, picked, rows=8)
    meta = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed, "model": MODEL,
            "data": {"objects": args.objects, "held_out": args.held_out, "views": V, "size": data_cfg.size,
                     "distance": data_cfg.distance, "elevation": data_cfg.elevation, "fov": data_cfg.fov},
            "data_seconds": data_seconds, "total_seconds": time.perf_counter() - begin, "threads": 1,
            "png_columns": "input | true novel view | nvist | " + ("nvist, no camera | " if len(columns) == 5 else "")
                           + "copy baseline (= input)"}
    write_json(out, {"meta": meta, "results": results, "claims": claims})
    print(f"wrote {out} and {png} in {meta['total_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
