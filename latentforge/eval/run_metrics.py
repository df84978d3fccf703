"""Every number of a run's `metrics.json`, computed from the run folder.

    {"tokenizer": {psnr, ssim, codebook_usage, perplexity, ...},
     "generator": {bits_per_token, scene_exact, count_acc, shape_acc, color_acc, size_acc,
                   relation_acc, diversity, unique_frac, images_per_s, ...}}
Fractions are in [0, 1], PSNR in dB. Everything here is the parser and plain formulas.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latentforge.data.shapes import SceneGraph
from latentforge.eval.diversity import diversity
from latentforge.eval.image_metrics import psnr, ssim, to_unit
from latentforge.eval.shapes import scene_adherence
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
def bits_per_token(generator, codes: torch.Tensor, cond: dict[str, torch.Tensor], device: torch.device,
                   batch: int = 500) -> float:
    total, n = 0.0, 0
    for i in range(0, len(codes), batch):
        part = {k: v[i:i + batch].to(device) for k, v in cond.items()}
        out = generator.loss(codes[i:i + batch].to(device), generator.encode_condition(part))
        total += float(out["loss"]) * len(codes[i:i + batch])
        n += len(codes[i:i + batch])
    return total / n / math.log(2)


def evaluate_run(run: "Run") -> dict[str, Any]:
    from latentforge.report.grids import save_image_rows

    cfg, device = run.cfg, run.device
    val = run.load_split("val")
    images = val["images"][: cfg.eval.recon_images]
    tok = from_pretrained(run.dir / "tokenizer", device)
    tok_metrics, recon = tokenizer_metrics(tok, images, device)
    k = min(cfg.eval.show, len(images))
    save_image_rows([images[:k], recon[:k]], ["data", "reconstruction"], run.dir / "reconstructions.png",
                    title=f"tokenizer reconstructions (val PSNR {tok_metrics['psnr']:.2f} dB)")

    gen = from_pretrained(run.dir / "generator", device)
    gen_metrics: dict[str, Any] = {
        "bits_per_token": bits_per_token(gen, run.load_latents("val"), run.condition("val", val), device)}
    with np.load(run.dir / "samples.npz") as f:
        samples, graphs, groups = f["images"], f["graphs"], f["groups"]
    scenes = [SceneGraph.from_json(json.loads(g)) for g in graphs]
    gen_metrics.update(scene_adherence(samples, scenes))
    gen_metrics.update(diversity(samples, groups))
    info = json.loads((run.dir / "sample_info.json").read_text())
    gen_metrics["images_per_s"] = info["images_per_s"]
    gen_metrics["n_samples"] = int(len(samples))
    gen_metrics["n_graphs"] = int(len(np.unique(groups)))
    # floor for adherence: the parser on the real val images of the same graphs
    gen_metrics["real_images_scene_exact"] = scene_adherence(
        val["images"][np.unique(groups)], [scenes[i] for i in np.unique(groups, return_index=True)[1]])["scene_exact"]
    return {"tokenizer": tok_metrics, "generator": gen_metrics}
