"""Every number of a run's `metrics.json`, computed from the run folder.

    {"tokenizer": {psnr, ssim, codebook_usage, perplexity, ...},
     "generator": {val_loss, bits_per_token, <the data set's adherence: scene_exact, count_acc, ...>,
                   diversity, unique_frac, images_per_s, ...}}      (absent for tokenizer-only runs)
Fractions are in [0, 1], PSNR in dB. Everything here is the parser and plain formulas.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latentforge.eval.diversity import diversity
from latentforge.eval.image_metrics import psnr, ssim, to_unit
from latentforge.pipeline import to_float, to_uint8
from latentforge.quantize.base import code_histogram, codebook_stats
from latentforge.serialization import from_pretrained

if TYPE_CHECKING:
    from latentforge.recipes import Run


@torch.no_grad()
def tokenizer_metrics(tokenizer, images: np.ndarray, device: torch.device, batch: int = 500) -> tuple[dict, np.ndarray]:
    """Val PSNR/SSIM of reconstructions; for discrete latents, codebook usage over the val codes
    (per level for residual codes, the headline numbers averaged over levels)."""
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


def evaluate_run(run: Run) -> dict[str, Any]:
    from latentforge.report.grids import save_image_rows

    cfg, device = run.cfg, run.device
    val = run.load_split("val")
    images = val["images"][: cfg.eval.recon_images]
    tok = from_pretrained(run.dir / "tokenizer", device)
    tok_metrics, recon = tokenizer_metrics(tok, images, device)
    k = min(cfg.eval.show, len(images))
    save_image_rows([images[:k], recon[:k]], ["data", "reconstruction"], run.dir / "reconstructions.png",
                    title=f"tokenizer reconstructions (val PSNR {tok_metrics['psnr']:.2f} dB)")
    if cfg.generator is None:
        return {"tokenizer": tok_metrics}

    gen = from_pretrained(run.dir / "generator", device)
    gen_metrics: dict[str, Any] = validation_terms(gen, run.load_latents("val"), run.condition("val", val), device)
    with np.load(run.dir / "samples.npz") as f:
        saved = {k: f[k] for k in f.files}
    samples, groups = saved.pop("images"), saved.pop("groups")
    if saved:  # conditional: how well the samples follow their conditions
        gen_metrics.update(run.dataset.adherence(samples, saved, real=val["images"][groups]))
    gen_metrics.update(diversity(samples, groups))
    info = json.loads((run.dir / "sample_info.json").read_text())
    gen_metrics["images_per_s"] = info["images_per_s"]
    gen_metrics["n_samples"] = len(samples)
    gen_metrics["n_conditions"] = len(np.unique(groups))
    return {"tokenizer": tok_metrics, "generator": gen_metrics}
