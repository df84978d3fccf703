"""P8 (DDMI) on Shapes: does an implicit decoder with hierarchical basis fields (tokenizers/implicit.py)
(1) reconstruct better than the same INR on fixed Fourier features + a global latent modulation, at
equal parameters; (2) decode above its training resolution better than upsampling a fixed-resolution
reconstruction; (3) keep its fine detail in the fine level?

    python benchmarks/implicit.py [--steps 1500] [--batch 32] [--threads 1] [--out-dir benchmarks/results]

Data: procedural Shapes (data/shapes.py), 4,096 training scenes rendered at 32 px and 128 held-out
scenes rendered at 32, 64 and 128 px: the renderer draws the same scene at any size (box-filtered
coverage), so true high-resolution images exist; the script checks that the 128 px render,
area-downsampled to 32, matches the 32 px one.

Models, trained the same steps, batch, optimizer, schedule and data order, all with an 8 x 8 x 4
Gaussian (KL) latent and an L1 + L2 loss:

    hdbf      ImplicitTokenizer, basis planes at 8, 16, 32 px, INR of 3 blocks of width 64,
              random output sides 16..32 (half the steps at 32), 256 random pixels per image
    fourier   the same INR and training on fixed Fourier features of the coordinate, the latent
              flattened into a global modulation vector (parameters within 10 % of hdbf)
    conv      ConvTokenizer (tokenizers/conv.py, fixed 32 px output) of about the same size

Reported on the held-out scenes: (1) MSE and PSNR at 32 px; (2) PSNR against the true 64 and
128 px renders of: hdbf decoded at that side (scale style held at 1, the default, and fed the
true scale 2 / 4), and bilinear / bicubic upsampling of hdbf's own 32 px reconstruction, of conv's,
and of the true 32 px render (what any upsampler of a perfect reconstruction reaches); (3) hdbf at
32 px with the finest one or two levels dropped (their embedding replaced by its mean): error
energy by radial FFT band, low < 4 < mid < 8 <= high cycles per image (the Nyquist rates of the
8 and 16 px planes). Writes implicit_<steps>steps.json and a PNG of, per row, the true 128 px
render, bicubic of hdbf's 32 px reconstruction, and hdbf decoded at 128 px.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from points import train  # the tokenizer trainer of the P7 benchmark (same directory)
from torch import Tensor

from latentforge.atomic import write_json
from latentforge.data.shapes import ShapesConfig, render_batch
from latentforge.modalities.image import ImageModality
from latentforge.modalities.image_metrics import psnr, to_unit
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.report.grids import save_image_grid
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer
from latentforge.tokenizers.implicit import ImplicitConfig, ImplicitTokenizer
from latentforge.train.precision import cpu_model

LATENT = GaussianConfig(dim=32, latent_channels=4)
MODELS = {
    "hdbf": lambda: ImplicitTokenizer(ImplicitConfig(quantizer=LATENT)),
    "fourier": lambda: ImplicitTokenizer(ImplicitConfig(positional="fourier", quantizer=LATENT)),
    "conv": lambda: ConvTokenizer(ConvConfig(channels=(32, 64), recon_loss="l1+l2", quantizer=LATENT)),
}
SIDES = (64, 128)
BANDS = {"low": (0.0, 4.0), "mid": (4.0, 8.0), "high": (8.0, math.inf)}  # cycles per image


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- data

def shapes(split: str, n: int, size: int) -> Tensor:
    """n Shapes scenes of a split rendered at `size` px, as model tensors [n, 3, size, size] in [-1, 1]."""
    return ImageModality(size).to_model(render_batch(ShapesConfig(size=size), split, range(n), workers=1))


# ------------------------------------------------------------------------------- training

# ------------------------------------------------------------------------------- metrics

def scores(x_hat: Tensor, x: Tensor) -> dict:
    """Mean per-image MSE and PSNR in [0, 1] units of images [N, 3, H, W] in [-1, 1]."""
    a, b = to_unit(x_hat), to_unit(x)
    return {"mse": float((a - b).pow(2).flatten(1).mean(1).mean()), "psnr": float(psnr(a, b).mean())}


def band_errors(x_hat: Tensor, x: Tensor) -> dict:
    """Error energy of x_hat - x by radial frequency band, in [0, 1] units: by Parseval the bands'
    shares add up to the pixel MSE."""
    err = (to_unit(x_hat) - to_unit(x)).double()                                   # [N, 3, H, W]
    H, W = err.shape[-2:]
    spectrum = torch.fft.fft2(err).abs().pow(2) / (H * W) ** 2                      # sums to the mean square
    fy, fx = torch.fft.fftfreq(H, 1 / H).double(), torch.fft.fftfreq(W, 1 / W).double()  # cycles per image
    radius = (fy[:, None].square() + fx[None, :].square()).sqrt()
    per_image = spectrum.sum(1) / err.shape[1]                                      # [N, H, W] channel mean
    return {band: float(per_image[:, (radius >= lo) & (radius < hi)].sum(-1).mean())
            for band, (lo, hi) in BANDS.items()}


@torch.no_grad()
def in_chunks(fn, x: Tensor, chunk: int = 16, **kwargs) -> Tensor:
    """fn(x, **kwargs) over chunks of the batch: a 128 px field of many images is large."""
    return torch.cat([fn(x[i: i + chunk], **kwargs) for i in range(0, len(x), chunk)])


def upsample(x: Tensor, size: int, mode: str) -> Tensor:
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False).clamp(-1, 1)


# ------------------------------------------------------------------------------- the three checks

@torch.no_grad()
def evaluate(models: dict, val: dict[int, Tensor]) -> dict:
    x32 = val[32]
    z = {name: in_chunks(m.encode, x32) for name, m in models.items()}
    recon = {name: in_chunks(m.decode, z[name]) for name, m in models.items()}
    out: dict = {"recon_32": {name: scores(r.clamp(-1, 1), x32) for name, r in recon.items()}}

    hdbf = models["hdbf"]
    super_res: dict = {}
    for side in SIDES:
        truth = val[side]
        row = {"hdbf": scores(in_chunks(hdbf.decode_at, z["hdbf"], size=side).clamp(-1, 1), truth),
               f"hdbf, style of scale {side // 32}": scores(
                   in_chunks(hdbf.decode_at, z["hdbf"], size=side, scale=side / 32).clamp(-1, 1), truth)}
        for source, images in (("hdbf 32 px", recon["hdbf"]), ("conv 32 px", recon["conv"]), ("true 32 px", x32)):
            for mode in ("bilinear", "bicubic"):
                row[f"{mode} of {source}"] = scores(upsample(images.clamp(-1, 1), side, mode), truth)
        super_res[str(side)] = row
    out["super_resolution"] = super_res

    levels: dict = {}
    for drop in range(hdbf.config.levels):
        x_hat = in_chunks(hdbf.decode_at, z["hdbf"], size=32, drop_levels=drop).clamp(-1, 1)
        levels[f"drop {drop}"] = {**scores(x_hat, x32), "band_mse": band_errors(x_hat, x32)}
    # the data's own energy per band (its error against a flat image of its mean colour)
    levels["signal"] = {"band_energy": band_errors(x32.mean((2, 3), keepdim=True).expand_as(x32), x32)}
    out["drop_levels"] = levels
    return out


def verdicts(r: dict) -> dict:
    """Whether each claim held, by the rule stated in the module docstring."""
    rec, sr, lv = r["recon_32"], r["super_resolution"], r["drop_levels"]
    beats = {}
    for side, row in sr.items():
        rivals = {k: v["psnr"] for k, v in row.items() if k.startswith(("bilinear of hdbf", "bicubic of hdbf",
                                                                           "bilinear of conv", "bicubic of conv"))}
        beats[side] = {"hdbf_psnr": row["hdbf"]["psnr"], "best_rival": max(rivals, key=rivals.get),
                       "best_rival_psnr": max(rivals.values()), "held": row["hdbf"]["psnr"] > max(rivals.values())}
    full, fine = lv["drop 0"]["band_mse"], lv["drop 1"]["band_mse"]
    ratio = {band: fine[band] / full[band] for band in BANDS}
    return {
        "1_hdbf_beats_fourier_at_32": {"delta_psnr": rec["hdbf"]["psnr"] - rec["fourier"]["psnr"],
                                       "held": rec["hdbf"]["psnr"] > rec["fourier"]["psnr"]},
        "2_decoding_above_training_resolution_beats_upsampling": beats,
        "3_fine_level_holds_high_frequencies": {"error_ratio_drop_fine_over_full": ratio,
                                                "held": ratio["high"] > ratio["low"]},
    }


def save_row_png(models: dict, val: dict[int, Tensor], path: Path, n: int = 6) -> None:
    """Per example (one row): true 128 px, bicubic of hdbf's 32 px reconstruction, hdbf at 128 px."""
    hdbf, x = models["hdbf"], val[32][:n]
    with torch.no_grad():
        z = hdbf.encode(x)
        cols = [val[128][:n], upsample(hdbf.decode(z).clamp(-1, 1), 128, "bicubic"), hdbf.decode_at(z, 128)]
    tiles = torch.stack(cols, 1).flatten(0, 1)                                       # [n * 3, 3, 128, 128]
    save_image_grid(ImageModality(128).from_model(tiles.clamp(-1, 1)), path, ncols=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-size", type=int, default=4096)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # 1 by default: the machine is shared, and small ops gain little
    began = time.perf_counter()

    train_images = shapes("train", args.train_size, 32)
    val = {side: shapes("val", args.val_size, side) for side in (32, *SIDES)}
    same_scene = float((F.interpolate(val[128], size=(32, 32), mode="area") - val[32]).abs().mean() / 2)
    print(f"data: {time.perf_counter() - began:.0f} s; |area(128 px) - 32 px| = {same_scene:.4f} (mean, [0, 1])",
          flush=True)

    models, info = {}, {}
    for name, build in MODELS.items():
        torch.manual_seed(args.seed)
        models[name] = build()
        info[name] = {"params": params(models[name]),
                      **train(models[name], {"image": train_images}, args.steps, args.batch, args.lr, args.seed,
                              keys=("image",))}
        print(f"{name}: {info[name]}", flush=True)
    gap = info["fourier"]["params"] / info["hdbf"]["params"] - 1
    if abs(gap) > 0.10:
        raise SystemExit(f"fourier has {gap:+.1%} the parameters of hdbf: not a fair comparison")

    results = evaluate(models, val)
    claims = verdicts(results)
    out_dir = Path(args.out_dir)
    png = out_dir / f"implicit_{args.steps}steps.png"
    save_row_png(models, val, png)
    meta = {"args": vars(args), "torch": torch.__version__, "cpu": cpu_model(), "threads": torch.get_num_threads(),
            "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.perf_counter() - began, 1),
            "same_scene_check_mean_abs_diff": same_scene, "png": str(png)}
    path = out_dir / f"implicit_{args.steps}steps.json"
    write_json(path, {"meta": meta, "models": info, "results": results, "claims": claims})
    for key, value in results["recon_32"].items():
        print(f"32 px {key}: PSNR {value['psnr']:.2f} dB, MSE {value['mse']:.5f}")
    for side, row in results["super_resolution"].items():
        print(f"{side} px: " + ", ".join(f"{k} {v['psnr']:.2f}" for k, v in row.items()))
    for key, value in results["drop_levels"].items():
        print(f"{key}: {value}")
    print({k: v.get("held", v) for k, v in claims.items()})
    print(f"wrote {path} and {png} in {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
