"""Every number of a run's `metrics.json`, computed from the run folder.

    {"tokenizer":    {psnr, ssim, ms_ssim, psnr_low, psnr_high_1, rfid, codebook_usage, ...},
     "generator":    {val_loss, bits_per_token, <the data set's adherence>, diversity,
                      images_per_s, ms_per_step, ...},                 (absent for tokenizer-only runs)
     "distribution": {"features": {name, source, hash, ...}, "n", "seed",
                      "model": {fid, kid, kid_std, precision, recall, density, coverage,
                                nearest_train_ratio},
                      "baselines": {"real (test split)": {...}, "pixel gaussian": {...},
                                    "train copies": {...}}},
     "eval": {"metrics": [...], "n": ..., "seed": ...}}
Fractions are in [0, 1], PSNR in dB. Which groups are computed is `eval.metrics`
(recon, val, adherence, diversity, speed, fid, kid, pr); a group that does not apply to the
run (adherence of unconditional samples, FID without a feature network) is left out and
`eval.skipped` says why. The same n and seed give the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latentforge.eval import baselines
from latentforge.eval.distribution import density_coverage, fid, kid, precision_recall
from latentforge.eval.diversity import diversity
from latentforge.eval.image_metrics import ms_ssim, ms_ssim_scales, psnr, ssim, to_unit
from latentforge.pipeline import Pipeline, to_float, to_uint8
from latentforge.quantize.base import code_histogram, codebook_stats
from latentforge.serialization import from_pretrained
from latentforge.tokenizers.losses import band_psnr

if TYPE_CHECKING:
    from latentforge.eval.features import FeatureExtractor
    from latentforge.recipes import EvalConfig, Run

DISTRIBUTION = ("fid", "kid", "pr")


def _say(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def _finite_mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.inf


@torch.no_grad()
def tokenizer_metrics(tokenizer, images: np.ndarray, device: torch.device, batch: int = 500) -> tuple[dict, np.ndarray]:
    """Val PSNR, SSIM, MS-SSIM (as many scales as the size allows) and per-Haar-band PSNR of
    reconstructions; for discrete latents, codebook usage over the val codes (per level for
    residual codes, the headline numbers averaged over levels)."""
    spec = tokenizer.spec
    recons, counts = [], None
    for i in range(0, len(images), batch):
        q = tokenizer.quantize(to_float(images[i:i + batch]).to(device))
        recons.append(to_uint8(tokenizer.decode_latents(q.z_q)))
        if spec.kind == "discrete":
            levels = q.codes.cpu().reshape(-1, spec.depth)  # [N, depth]
            h = torch.stack([code_histogram(levels[:, d], spec.vocab_size) for d in range(spec.depth)])
            counts = h if counts is None else counts + h
    recon = np.concatenate(recons)
    x, y = to_unit(images), to_unit(recon)
    out = {"psnr": float(psnr(x, y).clamp_max(100).mean()), "ssim": float(ssim(x, y).mean())}
    scales = ms_ssim_scales(min(x.shape[-2:]))
    if scales >= 2:
        out["ms_ssim"] = float(ms_ssim(x, y).mean())
        out["ms_ssim_scales"] = scales
    if x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
        bands = band_psnr(2 * y - 1, 2 * x - 1)  # one Haar level: low band and finest details
        out["psnr_low"] = _finite_mean(bands["low"])
        out["psnr_high_1"] = _finite_mean(bands["high_1"])
    if counts is not None:
        per_level = [codebook_stats(c) for c in counts]
        out.update({
            "codebook_usage": float(np.mean([s["codebook_usage"] for s in per_level])),
            "perplexity": float(np.mean([s["perplexity"] for s in per_level])),
            "dead_codes": int(sum(s["dead_codes"] for s in per_level)),
            "codebook_size": spec.vocab_size,
        })
        if spec.depth > 1:
            out["per_level"] = per_level
    out["n_images"] = len(images)
    return out, recon


@torch.no_grad()
def validation_terms(generator, latents: torch.Tensor, cond: dict[str, torch.Tensor], device: torch.device,
                     batch: int = 500, seed: int = 0) -> dict[str, float]:
    """The generator's training terms on held-out latents, averaged per example: `val_loss`, and
    `bits_per_token` for generators of discrete codes. Seeded, since diffusion losses draw noise."""
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    for i in range(0, len(latents), batch):
        part = {k: v[i:i + batch].to(device) for k, v in cond.items()}
        z = latents[i:i + batch].to(device)
        out = generator.loss(z, generator.encode_condition(part) if generator.conditioner is not None else None)
        for key, value in out.items():
            if value.dim() == 0:
                sums[key] = sums.get(key, 0.0) + float(value) * len(z)
    means = {k: v / len(latents) for k, v in sums.items()}
    out = {"val_loss": means.pop("loss")}
    if "bits_per_token" in means:
        out["bits_per_token"] = means["bits_per_token"]
    return out


def set_metrics(features: FeatureExtractor, a: torch.Tensor, fake: np.ndarray, groups: set[str],
                seed: int) -> dict[str, float]:
    """The distribution metrics in `groups` (fid, kid, pr) of `fake` images against real features `a`."""
    b = features(fake)
    out: dict[str, float] = {}
    if "fid" in groups:
        out["fid"] = fid(a, b)
    if "kid" in groups:
        # subsets of half the set, so their spread (kid_std) says something; at most 1,000 (the paper's)
        out.update(kid(a, b, subset_size=max(2, min(1000, min(len(a), len(b)) // 2)), seed=seed))
    if "pr" in groups:
        out.update(precision_recall(a, b))
        out.update(density_coverage(a, b))
    return out


def real_split(run: Run, split: str, n: int) -> dict[str, np.ndarray]:
    """The first n rows of a split: from the run folder when it holds enough, else drawn from
    the data set with a larger split (row i of a split does not depend on the split's size)."""
    if split == "val":
        stored = run.load_split("val")
        if len(stored["images"]) >= n or not hasattr(run.cfg.data, "val_size"):
            return {k: v[:n] for k, v in stored.items()}
    cfg = run.cfg.data
    if hasattr(cfg, "val_size"):
        cfg = dataclasses.replace(cfg, val_size=max(n, cfg.val_size))
    from latentforge.data.base import build_dataset

    return {k: v[:n] for k, v in build_dataset(cfg).split(split).items()}


def distribution_metrics(run: Run, features: FeatureExtractor, groups: set[str], n: int, seed: int,
                         with_baselines: bool, pipe: Pipeline | None) -> dict[str, Any]:
    """FID/KID/PR of n fresh samples (one per val condition, seeded) against the first n val
    images, with the baselines beside them."""
    val = real_split(run, "val", n)
    real = val["images"]
    n = len(real)
    train = run.load_split("train")["images"]
    _say(f"distribution metrics on {n} images a set ({features.name} features)")
    a = features(real)
    out: dict[str, Any] = {"features": features.describe(), "n": n, "seed": seed, "reference": "val split"}
    if pipe is not None:
        rows = {k: v for k, v in val.items() if k != "images"}
        samples, _ = run.draw_samples(rows, n, seed, pipe)
        model = set_metrics(features, a, samples, groups, seed)
        model.update(baselines.nearest_train_ratio(samples, real, train))
        out["model"] = model
    if with_baselines:
        out["baselines"] = {}
        try:
            test = real_split(run, "test", n)["images"]
            out["baselines"]["real (test split)"] = set_metrics(features, a, test, groups, seed)
        except ValueError as err:  # a data set without a test split (a user's folder)
            out["no_floor"] = str(err)
        out["baselines"] |= {
            "pixel gaussian": set_metrics(features, a, baselines.pixel_gaussian(train, n, seed), groups, seed),
            "train copies": set_metrics(features, a, baselines.train_copies(train, n, seed), groups, seed),
        }
    return out


def evaluate_run(run: Run, config: EvalConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Compute the groups of `config.metrics` (default: the run's `eval` section)."""
    from latentforge.eval.features import pick_features
    from latentforge.report.grids import save_image_rows

    cfg, device = run.cfg, run.device
    ecfg = config or cfg.eval
    wanted = set(ecfg.metrics)
    skipped: dict[str, str] = {}
    out: dict[str, Any] = {}
    val = run.load_split("val")
    need_features = bool(wanted & set(DISTRIBUTION))
    features = pick_features(cfg.data, ecfg.inception_weights or None, device, progress) if need_features else None
    if need_features and features is None:
        for g in sorted(wanted & set(DISTRIBUTION)):
            skipped[g] = (f"data {cfg.data.name!r} has no probe network; give Inception weights "
                          f"(--inception-weights PATH)")

    if "recon" in wanted:
        images = val["images"][: ecfg.recon_images]
        tok = from_pretrained(run.dir / "tokenizer", device)
        tok_metrics, recon = tokenizer_metrics(tok, images, device)
        if features is not None:
            tok_metrics["rfid"] = fid(features(images), features(recon))
        out["tokenizer"] = tok_metrics
        k = min(ecfg.show, len(images))
        save_image_rows([images[:k], recon[:k]], ["data", "reconstruction"], run.dir / "reconstructions.png",
                        title=f"tokenizer reconstructions (val PSNR {tok_metrics['psnr']:.2f} dB)")

    pipe = Pipeline.from_run(run.dir, str(device)) if cfg.generator is not None else None
    if pipe is not None:
        gen_metrics: dict[str, Any] = {}
        if "val" in wanted:
            gen_metrics.update(validation_terms(pipe.generator, run.load_latents("val"),
                                                run.condition("val", val), device))
        with np.load(run.dir / "samples.npz") as f:
            saved = {k: f[k] for k in f.files}
        samples, groups = saved.pop("images"), saved.pop("groups")
        if "adherence" in wanted:
            if saved:  # conditional: how well the samples follow their conditions
                gen_metrics.update(run.dataset.adherence(samples, saved, real=val["images"][groups]))
            else:
                skipped["adherence"] = "unconditional samples"
        if "diversity" in wanted:
            if len(groups) > len(np.unique(groups)):
                gen_metrics.update(diversity(samples, groups))
            else:
                skipped["diversity"] = "one sample per condition (sample.per_graph: 1)"
        if "speed" in wanted:
            gen_metrics.update(_speed(run, pipe, val))
        gen_metrics["n_samples"] = len(samples)
        gen_metrics["n_conditions"] = len(np.unique(groups))
        out["generator"] = gen_metrics
    else:
        for g in sorted(wanted & {"val", "adherence", "diversity", "speed"}):
            skipped[g] = "a tokenizer-only run"

    if features is not None:
        out["distribution"] = distribution_metrics(run, features, wanted & set(DISTRIBUTION), ecfg.n, ecfg.seed,
                                                   ecfg.baselines, pipe)
    out["eval"] = {"metrics": [m for m in ecfg.metrics], "n": ecfg.n, "seed": ecfg.seed,
                   "skipped": skipped}
    return out


def _speed(run: Run, pipe: Pipeline, val: dict[str, np.ndarray]) -> dict[str, float]:
    """Sampling speed at `eval.speed_batch` images a call, median of 3 after a warm-up call."""
    from latentforge.eval.speed import sampling_speed

    n = min(run.cfg.eval.speed_batch, len(val["images"]))
    rows = {k: v[:n] for k, v in val.items() if k != "images"}
    return sampling_speed(lambda: run.draw_samples(rows, n, 0, pipe), pipe.generator, n)
