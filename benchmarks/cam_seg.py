"""P33 CAM-Seg on Shapes-Seg 32 px: masks through continuous (KL) vs discrete (VQ) latents, and
image -> mask generation with MAR's diffusion head.

    .venv/bin/python benchmarks/cam_seg.py            # default run, ~8 min on one shared CPU thread
    .venv/bin/python benchmarks/cam_seg.py --mse-ablation   # + MAR with an MSE regression head

Writes benchmarks/results/cam_seg.json. What it measures (classes: background, circle, square,
triangle; masks drawn with `shapes_seg.PALETTE` and read back by palette argmax):

1. Autoencoder claim. A KL (Gaussian) conv tokenizer and a VQ conv tokenizer with the same latent
   size (8 x 8 grid, 4 channels; the VQ code is one of 512 4-vectors: 9 bits a position), the same
   encoder/decoder and steps, trained on colour masks from 2 seeds each; pixel accuracy and mIoU
   of their reconstructions of held-out masks (mean over seeds).
2. Image -> mask. CamSeg (generators/cam_seg.py): MAR over the KL mask latents, conditioned on a KL
   image tokenizer's latents (aligned spatial map + the `latents` conditioner), one backbone pass and
   the diffusion head's DDIM draw. Against a directly supervised conv segmenter and the
   all-background map, on clean validation images and under Gaussian noise (sigma 0.1 of the range)
   and Gaussian blur (sigma 1 px); robustness = corrupted mIoU / clean mIoU.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from latentforge.atomic import write_json
from latentforge.data.shapes import ShapesConfig
from latentforge.data.shapes_seg import CLASSES, colorize, palette_argmax, sample_segmentation, to_model_input
from latentforge.eval.cost import count_flops, parameter_count
from latentforge.eval.degrade import gaussian_blur, gaussian_noise
from latentforge.eval.seg_baseline import ConvSegmenter
from latentforge.eval.segmentation import segmentation_scores
from latentforge.generators.cam_seg import CamSeg, train_steps
from latentforge.generators.mar import MARConfig
from latentforge.quantize import GaussianConfig, VQConfig
from latentforge.quantize.base import QuantizerConfig
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

K = len(CLASSES)


@dataclass
class CamSegBenchConfig:
    train: int = 2000            # training scenes
    val: int = 200               # held-out scenes (the "val" split)
    batch: int = 32
    lr: float = 1e-3             # Adam, every model
    tokenizer_steps: int = 300   # each of: KL mask, VQ mask (per seed), KL image tokenizer
    autoencoder_seeds: int = 2   # KL and VQ mask tokenizers are each trained from this many seeds
    segmenter_steps: int = 400
    mar_steps: int = 400
    latent_channels: int = 4     # KL latent channels = VQ code dimension
    codebook_size: int = 512
    tokenizer_widths: tuple[int, ...] = (32, 64)   # patch 2 + one downsampling: f = 4, an 8 x 8 grid
    mar_dim: int = 128
    mar_depth: int = 4
    head_width: int = 128
    head_depth: int = 3
    diffusion_batch_mul: int = 2
    head_steps: int = 20
    low_temperature: float = 0.25  # also scored on clean images: a segmentation wants the mode, not a draw
    noise_sigma: float = 0.1     # of the [0, 1] range (25.5 grey levels)
    blur_sigma: float = 1.0      # pixels
    mse_ablation: bool = False
    seed: int = 0


def tokenizer_config(cfg: CamSegBenchConfig, quantizer: QuantizerConfig) -> ConvConfig:
    return ConvConfig(image_size=32, patch=2, channels=cfg.tokenizer_widths, quantizer=quantizer)


def train_tokenizer(cfg: CamSegBenchConfig, quantizer: QuantizerConfig, x: torch.Tensor,
                    generator: torch.Generator) -> tuple[ConvTokenizer, list[float]]:
    """A conv tokenizer fitted to images x [N, 3, 32, 32] in [-1, 1] (eval mode on return)."""
    tok = ConvTokenizer(tokenizer_config(cfg, quantizer))
    losses = train_steps(list(tok.parameters()), lambda i: tok.loss({"image": x[i]})["loss"], len(x),
                         cfg.tokenizer_steps, cfg.batch, cfg.lr, generator)
    return tok.eval(), losses


@torch.no_grad()
def encode(tok: ConvTokenizer, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    return torch.cat([tok.encode(x[i:i + chunk]) for i in range(0, len(x), chunk)])


@torch.no_grad()
def reconstruct_classes(tok: ConvTokenizer, masks: torch.Tensor) -> torch.Tensor:
    """Colour masks [N, 3, H, W] -> the class maps [N, H, W] their autoencoding reads back as."""
    return palette_argmax(tok.decode(encode(tok, masks)))


def corruptions(cfg: CamSegBenchConfig, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [N, H, W, 3] validation images: clean, noised, blurred."""
    return {"clean": images, "noise": gaussian_noise(images, cfg.noise_sigma * 255, seed=cfg.seed + 1),
            "blur": gaussian_blur(images, cfg.blur_sigma)}


def robustness(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    clean = scores["clean"]["miou"]
    return {k: v["miou"] / clean for k, v in scores.items() if k != "clean"}


def evaluate_cam_seg(cfg: CamSegBenchConfig, model: CamSeg, image_tok: ConvTokenizer, mask_tok: ConvTokenizer,
                     views: dict[str, np.ndarray], target: torch.Tensor,
                     temperature: float = 1.0) -> dict[str, dict[str, float]]:
    model.eval()
    out = {}
    for name, images in views.items():
        z_image = encode(image_tok, to_model_input(images))
        z_mask = model.sample(z_image, generator=torch.Generator().manual_seed(cfg.seed), head_steps=cfg.head_steps,
                              temperature=temperature)
        with torch.no_grad():
            pred = palette_argmax(mask_tok.decode(z_mask))
        out[name] = segmentation_scores(pred, target, K)
    return out


def pipeline_flops(cfg: CamSegBenchConfig, model: CamSeg, image_tok: ConvTokenizer, mask_tok: ConvTokenizer,
                   image: torch.Tensor) -> int:
    """FLOPs of segmenting one image: image encoder, one MAR pass + the head's draw, mask decoder."""
    return count_flops(lambda: mask_tok.decode(model.sample(encode(image_tok, image), head_steps=cfg.head_steps)))


def train_cam_seg(cfg: CamSegBenchConfig, z_image: torch.Tensor, z_mask: torch.Tensor, objective: str,
                  generator: torch.Generator) -> tuple[CamSeg, list[float], float]:
    grid = tuple(z_mask.shape[1:3])
    mar = MARConfig(grid=grid, channels=z_mask.shape[-1], dim=cfg.mar_dim, depth=cfg.mar_depth, heads=4,
                    head_width=cfg.head_width, head_depth=cfg.head_depth, head_objective=objective,
                    diffusion_batch_mul=cfg.diffusion_batch_mul)
    model = CamSeg(mar, z_image.shape[-1])
    model.fit_norms(z_image, z_mask)
    start = time.perf_counter()
    losses = train_steps(list(model.parameters()), lambda i: model.loss(z_mask[i], z_image[i]), len(z_mask),
                         cfg.mar_steps, cfg.batch, cfg.lr, generator)
    return model, losses, (time.perf_counter() - start) / cfg.mar_steps


def run(cfg: CamSegBenchConfig) -> dict:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    shapes = ShapesConfig(size=32)
    train_images, train_classes = sample_segmentation(shapes, "train", range(cfg.train), workers=1)
    val_images, val_classes = sample_segmentation(shapes, "val", range(cfg.val), workers=1)
    x_train, m_train = to_model_input(train_images), to_model_input(colorize(train_classes))
    m_val = to_model_input(colorize(val_classes))
    target = torch.from_numpy(val_classes).long()
    result: dict = {"config": asdict(cfg), "classes": list(CLASSES),
                    "val_class_fraction": [float((val_classes == k).mean()) for k in range(K)]}

    # 1. autoencoder claim: KL vs VQ at equal latent size ------------------------------------------------
    c = cfg.latent_channels
    quantizers = {"kl": GaussianConfig(dim=c, latent_channels=c),
                  "vq": VQConfig(codebook_size=cfg.codebook_size, dim=c)}
    mask_toks, ae = {}, {}
    for name, q in quantizers.items():
        runs = []
        for seed in range(cfg.autoencoder_seeds):
            torch.manual_seed(cfg.seed + seed)
            tok, losses = train_tokenizer(cfg, q, m_train, torch.Generator().manual_seed(cfg.seed + seed))
            mask_toks.setdefault(name, tok)  # the first seed's tokenizer is the one CamSeg uses
            runs.append({**segmentation_scores(reconstruct_classes(tok, m_val), target, K),
                         "final_loss": float(np.mean(losses[-20:]))})
        ae[name] = {"runs": runs, "params": parameter_count(tok),
                    **{k: float(np.mean([r[k] for r in runs])) for k in ("pixel_acc", "miou", "boundary_miou")}}
    ae["latent"] = {"grid": list(mask_toks["kl"].spec.grid), "channels": c,
                    "vq_bits_per_position": float(np.log2(cfg.codebook_size)), "kl_floats_per_position": c}
    ae["kl_minus_vq"] = {k: ae["kl"][k] - ae["vq"][k] for k in ("pixel_acc", "miou", "boundary_miou")}
    ae["kl_over_vq_miou"] = ae["kl"]["miou"] / ae["vq"]["miou"] - 1
    result["autoencoder"] = ae
    print("autoencoders", json.dumps(ae), f"{time.perf_counter() - t0:.0f}s", flush=True)

    # 2. image -> mask ----------------------------------------------------------------------------------
    image_tok, image_losses = train_tokenizer(cfg, GaussianConfig(dim=c, latent_channels=c), x_train, g)
    mask_tok = mask_toks["kl"]
    z_image, z_mask = encode(image_tok, x_train), encode(mask_tok, m_train)
    views = corruptions(cfg, val_images)
    seg: dict = {"all_background": segmentation_scores(torch.zeros_like(target), target, K)}
    objectives = ["ddpm"] + (["mse"] if cfg.mse_ablation else [])
    for objective in objectives:
        model, losses, step_s = train_cam_seg(cfg, z_image, z_mask, objective, g)
        scores = evaluate_cam_seg(cfg, model, image_tok, mask_tok, views, target)
        low = evaluate_cam_seg(cfg, model, image_tok, mask_tok, {"clean": views["clean"]}, target, cfg.low_temperature)
        flops = pipeline_flops(cfg, model, image_tok, mask_tok, to_model_input(val_images[:1]))
        seg[f"cam_seg_{objective}"] = {"scores": scores, "robustness": robustness(scores),
                                       f"clean_temperature_{cfg.low_temperature}": low["clean"],
                                       "final_loss": float(np.mean(losses[-20:])), "train_step_s": step_s,
                                       "params": parameter_count(model) + parameter_count(image_tok)
                                       + parameter_count(mask_tok.decoder) + parameter_count(mask_tok.quantizer),
                                       "flops_per_image": flops}
        print(objective, json.dumps(seg[f"cam_seg_{objective}"]), f"{time.perf_counter() - t0:.0f}s", flush=True)

    segmenter = ConvSegmenter(K)
    start = time.perf_counter()
    y_train = torch.from_numpy(train_classes).long()
    losses = train_steps(list(segmenter.parameters()), lambda i: segmenter.loss(x_train[i], y_train[i]),
                         len(x_train), cfg.segmenter_steps, cfg.batch, cfg.lr, g)
    step_s = (time.perf_counter() - start) / cfg.segmenter_steps
    segmenter.eval()
    with torch.no_grad():
        scores = {k: segmentation_scores(segmenter(to_model_input(v)).argmax(1), target, K) for k, v in views.items()}
    seg["conv_segmenter"] = {"scores": scores, "robustness": robustness(scores), "final_loss": float(np.mean(losses[-20:])),
                             "train_step_s": step_s, "params": parameter_count(segmenter),
                             "flops_per_image": count_flops(lambda: segmenter(to_model_input(val_images[:1])))}
    seg["oracle_kl_mask_autoencoder"] = {"miou": ae["kl"]["miou"], "note": "CamSeg's ceiling: its masks decode "
                                         "through this autoencoder"}
    result["segmentation"] = seg
    result["image_tokenizer_final_loss"] = float(np.mean(image_losses[-20:]))
    result["seconds"] = time.perf_counter() - t0
    print("segmenter", json.dumps(seg["conv_segmenter"]), f"{result['seconds']:.0f}s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mse-ablation", action="store_true")
    parser.add_argument("--mar-steps", type=int, default=CamSegBenchConfig.mar_steps)
    parser.add_argument("--autoencoder-seeds", type=int, default=CamSegBenchConfig.autoencoder_seeds)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every step count (e.g. 0.05 smoke)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cam_seg.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = CamSegBenchConfig(mse_ablation=args.mse_ablation, mar_steps=args.mar_steps,
                            autoencoder_seeds=args.autoencoder_seeds)
    if args.scale != 1.0:
        for f in ("tokenizer_steps", "segmenter_steps", "mar_steps", "train", "val"):
            setattr(cfg, f, max(2, int(getattr(cfg, f) * args.scale)))
    result = run(cfg)
    write_json(args.out, result)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
