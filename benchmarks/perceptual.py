"""Perceptual and adversarial terms for an image tokenizer on photographs, at equal steps.

One convolutional VQ tokenizer (32 px crops of the scikit-image photographs, 32-64 channels, VQ
1024 x 8 with the house's EMA codebook: benchmarks/tokenizers.py's "VQ 1024") is trained from the
same initial weights, data order and seed with each objective:

  (i)   L2 only;
  (ii)  L2 + the probe perceptual distance (tokenizers/perceptual.py, kind "probe": the Shapes probe
        network's five conv stages, unit-normalised channels, equal layer weights; the offline
        default, no download);
  (iii) L2 + the patch-GAN hinge term with a fixed weight (the house default 0.1);
  (iv)  L2 + the probe distance + the patch-GAN term with VQGAN's adaptive weight
        (||grad_last L_rec|| / (||grad_last L_GAN|| + 1e-4), clamped to [0, 1e4], x 0.8: taming's
        disc_weight).
The GAN starts after `--gan-start` steps in (iii) and (iv). Measured on crops of photographs held
out from training (the photos data set's test split):
  * PSNR, and PSNR of the Haar low band and of the finest high band (`band_psnr`: sharpness);
  * rFID: the Fréchet distance between test crops and their reconstructions in the Shapes probe's
    256-d penultimate features (the house's FD where no Inception weights are given; photos have no
    probe of their own). Caveat: rows (ii) and (iv) optimise distances on that same network's conv
    stages, so on this FD they are judged by a relative of their own loss;
  * the probe distance itself (same caveat);
  * a no-training anchor: the test crops blurred (2x2 average pool, bilinear back up), to show how
    each number moves under pure blur.
One seed per row by default (`--seeds` for more). Writes benchmarks/results/perceptual.{json,md,png}.

    python benchmarks/perceptual.py [--steps 300] [--batch 32] [--gan-start 150] [--n-train 4000]
        [--n-test 500] [--perceptual-weight 0.1] [--probe FILE] [--rows i,ii,iii,iv] [--seeds 0]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizer_fit import fit  # noqa: E402

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.config import from_dict  # noqa: E402
from latentforge.eval.distribution import fid  # noqa: E402
from latentforge.modalities.image_metrics import psnr, ssim, to_unit  # noqa: E402
from latentforge.nn.wavelet import haar_dwt  # noqa: E402
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer  # noqa: E402
from latentforge.tokenizers.losses import band_psnr  # noqa: E402
from latentforge.tokenizers.perceptual import PerceptualConfig, PerceptualLoss  # noqa: E402
from latentforge.train.precision import cpu_model  # noqa: E402

# benchmarks/tokenizers.py's "VQ 1024" (ours), so rows compare with its photos numbers
VQ = {"name": "vq", "codebook_size": 1024, "dim": 8, "codebook_update": "ema", "ema_decay": 0.8,
      "usage_decay": 0.8, "dead_threshold": 2.0, "kmeans_usage": True}
GAN = {"channels": 32, "layers": 2}  # 32 px -> 6 x 6 patch logits


def rows(probe: str, weight: float, gan_start: int) -> dict[str, tuple[str, dict]]:
    perceptual = {"kind": "probe", "weight": weight, "backbone_weights": probe}
    return {
        "i": ("L2", {}),
        "ii": ("L2 + probe perceptual", {"perceptual": perceptual}),
        "iii": ("L2 + GAN (fixed 0.1)", {"discriminator": {**GAN, "start_step": gan_start, "weight": 0.1}}),
        "iv": ("L2 + probe perceptual + GAN (adaptive x 0.8)",
               {"perceptual": perceptual,
                "discriminator": {**GAN, "start_step": gan_start, "weight": 0.8, "adaptive": True}}),
    }


def photos(n_train: int, n_test: int) -> tuple[np.ndarray, np.ndarray]:
    from latentforge.data.photos import PhotosConfig, photo_crops

    cfg = PhotosConfig(size=32)
    return photo_crops(cfg, "train", n_train), photo_crops(cfg, "test", n_test)  # test: held-out photos


def as_input(images: np.ndarray) -> Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, S, S] in [-1, 1]


def as_uint8(x: Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # [N, S, S, 3]


def train(extra: dict, data: Tensor, steps: int, batch: int, seed: int) -> tuple[ConvTokenizer, dict]:
    torch.manual_seed(seed)
    cfg = from_dict(ConvConfig, {"image_size": 32, "patch": 2, "channels": (32, 64), "quantizer": VQ, **extra})
    model = ConvTokenizer(cfg).train()  # encoder, bottleneck, decoder, discriminator: the same draws in every row
    model.before_training()             # the perceptual network's weights
    # The discriminator and the perceptual network draw from the global RNG too; re-seed so that every
    # row trains on the same random stream (k-means samples, dead-code revival): rows i and iii are
    # then identical until the GAN starts.
    torch.manual_seed(seed)
    lambdas, log = [], []

    def on_step(step: int, out: dict[str, Tensor]) -> None:
        if "adaptive_weight" in out:
            lambdas.append(float(out["adaptive_weight"]))
        if step % 50 == 0 or step == steps - 1:
            entry = {k: round(float(v.detach()), 5) for k, v in out.items() if v.dim() == 0}
            log.append({"step": step, **entry})
            print(f"  step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in entry.items()), flush=True)

    times = fit(model, data, steps, batch, seed, on_step)
    info = {"step_ms": 1000 * statistics.median(times[5:] or times), "log": log}
    if lambdas:
        info["adaptive_weight"] = {"mean": statistics.mean(lambdas), "min": min(lambdas), "max": max(lambdas),
                                   "last": lambdas[-1]}
    return model.eval(), info


@torch.no_grad()
def reconstruct(model: ConvTokenizer, x: Tensor) -> Tensor:
    return torch.cat([model(x[i:i + 250]).clamp(-1, 1) for i in range(0, len(x), 250)])


@torch.no_grad()
def measure(recon: Tensor, test: Tensor, test_features: Tensor, features, distance: PerceptualLoss) -> dict:
    bands = band_psnr(recon, test, levels=1)
    x, y = to_unit(test), to_unit(recon)
    return {
        "psnr": float(psnr(x, y).mean()),
        "psnr_low_band": float(bands["low"].clamp_max(100).mean()),
        "psnr_high_band": float(bands["high_1"].clamp_max(100).mean()),
        "ssim": float(ssim(x, y).mean()),
        "high_band_energy": high_band_energy(recon, test),
        "rfid_probe": fid(test_features, features(as_uint8(recon))),
        "probe_distance": float(distance(recon, test).mean()),
    }


def high_band_energy(recon: Tensor, test: Tensor) -> float:
    """Energy of the reconstructions' finest Haar detail band over the test crops' (1: as much detail as
    the photos; < 1: blur). Unlike high-band PSNR it does not ask the detail to be the right one."""
    detail = [haar_dwt(x.float(), 1)[1][0].pow(2).sum() for x in (recon, test)]
    return float(detail[0] / detail[1])


def blur(x: Tensor) -> Tensor:
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)


def picture(test: Tensor, recons: dict[str, Tensor], path: Path, n: int = 8, zoom: int = 3) -> None:
    """Rows: the held-out crops, then each objective's reconstructions; labelled on the left."""
    from PIL import Image, ImageDraw

    label_w, side = 300, 32 * zoom
    grid = [("test crops", test[:n])] + [(name, r[:n]) for name, r in recons.items()]
    canvas = Image.new("RGB", (label_w + n * (side + 2), len(grid) * (side + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, images) in enumerate(grid):
        draw.text((4, r * (side + 2) + side // 2 - 6), name, fill="black")
        for c, img in enumerate(as_uint8(images)):
            tile = Image.fromarray(img).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (side + 2), r * (side + 2)))
    canvas.save(path)


def table(results: list[dict]) -> str:
    lines = ["| objective | seed | PSNR | low-band PSNR | high-band PSNR | high-band energy | SSIM | rFID (probe) | "
             "probe distance | step ms |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r["metrics"]
        ms = f"{r['step_ms']:.0f}" if "step_ms" in r else "-"
        lines.append(f"| {r['objective']} | {r.get('seed', '-')} | {m['psnr']:.2f} | {m['psnr_low_band']:.2f} | "
                     f"{m['psnr_high_band']:.2f} | {m['high_band_energy']:.3f} | {m['ssim']:.3f} | "
                     f"{m['rfid_probe']:.2f} | {m['probe_distance']:.4f} | {ms} |")
    return "\n".join(lines)


def means(results: list[dict]) -> list[dict]:
    """Per objective, each metric's mean over seeds (rows with more than one seed)."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if "seed" in r:
            groups.setdefault(r["objective"], []).append(r)
    return [{"objective": f"{name} (mean)", "seed": ",".join(str(r["seed"]) for r in rs),
             "metrics": {k: statistics.mean(r["metrics"][k] for r in rs) for k in rs[0]["metrics"]},
             "step_ms": statistics.mean(r["step_ms"] for r in rs)}
            for name, rs in groups.items() if len(rs) > 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gan-start", type=int, default=150, help="steps before the GAN term starts (rows iii, iv)")
    ap.add_argument("--perceptual-weight", type=float, default=0.1)
    ap.add_argument("--n-train", type=int, default=4000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seeds", default="0", help="comma-separated; one full training per seed and row")
    ap.add_argument("--rows", default="i,ii,iii,iv")
    ap.add_argument("--probe", default="", help="a probe's model.safetensors (default: the cached Shapes probe, "
                                               "trained once if missing)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/perceptual.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from latentforge.data.sets import ShapesDataConfig
    from latentforge.eval.features import probe_features
    from latentforge.eval.probe import file_hash, probe_dir
    from latentforge.serialization import WEIGHTS_NAME

    features = probe_features(ShapesDataConfig(), progress=True)  # trains and caches the probe the first time
    probe = args.probe or str(probe_dir(ShapesDataConfig()) / WEIGHTS_NAME)
    distance = PerceptualLoss(PerceptualConfig(kind="probe", backbone_weights=probe))
    distance.load_weights()

    train_u8, test_u8 = photos(args.n_train, args.n_test)
    data, test = as_input(train_u8), as_input(test_u8)
    test_features = features(test_u8)
    table_rows = rows(probe, args.perceptual_weight, args.gan_start)
    results = [{"objective": "anchor: test crops 2x2-blurred (no training)",
                "metrics": measure(blur(test).clamp(-1, 1), test, test_features, features, distance)}]
    recons = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        for key in args.rows.split(","):
            name, extra = table_rows[key]
            print(f"({key}) {name}, seed {seed}", flush=True)
            t = time.perf_counter()
            model, info = train(extra, data, args.steps, args.batch, seed)
            recon = reconstruct(model, test)
            if seed == seeds[0]:
                recons[f"({key}) {name}"] = recon
            metrics = measure(recon, test, test_features, features, distance)
            results.append({"row": key, "objective": name, "seed": seed, "config": extra, "metrics": metrics,
                            "train_s": time.perf_counter() - t, **info})
            print(f"({key}) {name}, seed {seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
                  flush=True)
    summary = means(results)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture(test, recons, out.with_suffix(".png"))
    meta = {"args": vars(args), "torch": torch.__version__, "machine": cpu_model(), "threads": args.threads,
            "date": time.strftime("%Y-%m-%d"), "seeds": seeds,
            "rfid_features": features.describe(), "probe_weights": probe, "probe_hash": file_hash(probe)}
    write_json(out, {"meta": meta, "results": results, "means": summary})
    md = (f"# Perceptual and adversarial terms on photos (`benchmarks/perceptual.py`)\n\n"
          f"Conv VQ tokenizer (32 px photo crops, VQ 1024 x 8), {args.steps} steps x batch {args.batch}, "
          f"seeds {args.seeds} (one training per seed and row), GAN from step {args.gan_start}, probe perceptual weight "
          f"{args.perceptual_weight}; {args.n_test} crops of held-out photographs. rFID: Fréchet distance in "
          f"the Shapes probe's 256-d features ({features.hash}); rows with the probe perceptual term are "
          f"judged by a relative of their own loss there. High-band energy: the reconstructions' finest Haar "
          f"detail energy over the photos' (< 1: blur). Picture: seed {seeds[0]}.\n\n{table(results + summary)}\n")
    lam = [r for r in results if "adaptive_weight" in r]
    for r in lam:
        a = r["adaptive_weight"]
        md += (f"\nAdaptive weight lambda in ({r['row']}, seed {r['seed']}): mean {a['mean']:.3g}, min {a['min']:.3g}, "
               f"max {a['max']:.3g}, last {a['last']:.3g} (g_adv = 0.8 x lambda x hinge).\n")
    write_text(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
