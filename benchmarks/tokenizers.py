"""Tokenizer zoo benchmark: every discrete bottleneck inside one autoencoder, beside vector-quantize-pytorch.

For each data set (Shapes 32 px, scikit-learn digits upsampled to 16 px, 32 px crops of the
scikit-image photographs with held-out photos for evaluation) and each bottleneck at about 10 bits
per latent position (VQ 1024, FSQ [8,5,5,5] = 1000, LFQ 10 bits, RVQ 2 x 32), the same
convolutional autoencoder is trained for the same steps with the same optimizer, data order and
seed, once with our bottleneck and once with the peer's (`vector-quantize-pytorch`, same
settings). Reported: val PSNR, SSIM, codebook usage and perplexity over the val codes, and the
median training-step time, ours and the peer's measured in the same process.

    pip install -e ".[bench]"
    python benchmarks/tokenizers.py [--steps 300] [--datasets shapes,digits,photos] [--out results.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latentforge.atomic import write_json
from latentforge.modalities.image_metrics import psnr, ssim, to_unit
from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, code_histogram, codebook_stats
from latentforge.registry import register
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer
from latentforge.tokenizers.losses import band_psnr
from latentforge.train.trainer import TrainConfig, build_optimizer, lr_at

# --- the peer's bottlenecks behind our interface ------------------------------------------


@dataclass
class PeerConfig(QuantizerConfig):
    """One vector-quantize-pytorch module; `kind_` picks it, the rest mirror our settings."""

    name: str = "peer"
    kind_: str = "vq"            # vq | rvq | fsq | lfq
    codebook_size: int = 1024
    levels: tuple[int, ...] = (8, 5, 5, 5)
    depth: int = 2
    commitment: float = 0.25


@register("quantizer", "peer", PeerConfig)
class PeerQuantizer(Quantizer):
    def __init__(self, config: PeerConfig) -> None:
        super().__init__()
        import vector_quantize_pytorch as vqp

        self.config = config
        c = config
        vq_settings = dict(kmeans_init=True, use_cosine_sim=True, threshold_ema_dead_code=2,
                           commitment_weight=c.commitment)
        if c.kind_ == "vq":
            self.module = vqp.VectorQuantize(dim=c.dim, codebook_size=c.codebook_size, **vq_settings)
        elif c.kind_ == "rvq":
            self.module = vqp.ResidualVQ(dim=c.dim, num_quantizers=c.depth, codebook_size=c.codebook_size,
                                         kmeans_init=True, threshold_ema_dead_code=2, commitment_weight=c.commitment)
        elif c.kind_ == "fsq":
            self.module = vqp.FSQ(levels=list(c.levels), dim=c.dim)
        elif c.kind_ == "lfq":
            self.module = vqp.LFQ(dim=c.dim, codebook_size=c.codebook_size, entropy_loss_weight=0.1,
                                  diversity_gamma=1.0, commitment_loss_weight=c.commitment)
        else:
            raise ValueError(f"kind_: {c.kind_!r} is not one of vq, rvq, fsq, lfq")

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.config.levels)) if self.config.kind_ == "fsq" else self.config.codebook_size

    @property
    def depth(self) -> int:
        return self.config.depth if self.config.kind_ == "rvq" else 1

    def forward(self, z: Tensor) -> Quantized:
        shape = z.shape
        flat = z.reshape(shape[0], -1, shape[-1])  # [B, N, C]
        out = self.module(flat)
        if self.config.kind_ == "fsq":
            z_q, codes, loss = out[0], out[1], z.new_zeros(())
        else:
            z_q, codes, loss = out[0], out[1], out[2].sum()
        codes = codes.reshape(*shape[:-1], -1) if self.depth > 1 else codes.reshape(shape[:-1])
        return Quantized(z_q.reshape(shape), codes, {"peer": loss}, {})

    def lookup(self, codes: Tensor) -> Tensor:
        raise NotImplementedError("the benchmark decodes through forward; peer codes are not decoded")


# --- the comparison -----------------------------------------------------------------------

# Ours and the peer's, at about 10 bits per latent position, with matched settings.
# The peer's VQ and RVQ run EMA codebooks with decay 0.8 and replace a code whose EMA cluster size
# falls below 2 (threshold_ema_dead_code=2); ours get the same decay and threshold.
PEER_EMA = {"codebook_update": "ema", "ema_decay": 0.8, "usage_decay": 0.8, "dead_threshold": 2.0}
BOTTLENECKS: dict[str, tuple[dict, dict]] = {
    "VQ 1024": ({"name": "vq", "codebook_size": 1024, "dim": 8, **PEER_EMA},
                {"name": "peer", "kind_": "vq", "codebook_size": 1024, "dim": 8}),
    "RVQ 2x32": ({"name": "rvq", "depth": 2, "codebook_size": 32, "dim": 8, "quantizer_dropout": False, **PEER_EMA},
                 {"name": "peer", "kind_": "rvq", "depth": 2, "codebook_size": 32, "dim": 8}),
    "FSQ 8-5-5-5": ({"name": "fsq", "levels": (8, 5, 5, 5), "dim": 4},
                    {"name": "peer", "kind_": "fsq", "levels": (8, 5, 5, 5), "dim": 4}),
    "LFQ 10 bits": ({"name": "lfq", "bits": 10, "dim": 10},
                    {"name": "peer", "kind_": "lfq", "codebook_size": 1024, "dim": 10}),
}


def load_data(name: str, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, S, S, 3] train and evaluation images of one data set."""
    if name == "shapes":
        from latentforge.data.shapes import ShapesConfig, render_batch

        cfg = ShapesConfig()
        return render_batch(cfg, "train", range(n_train)), render_batch(cfg, "val", range(n_val))
    if name == "digits":
        from latentforge.data.digits import DigitsConfig, digits_images

        cfg = DigitsConfig(size=16)
        return digits_images(cfg, "train")[0], digits_images(cfg, "val")[0]
    if name == "photos":
        from latentforge.data.photos import PhotosConfig, photo_crops

        cfg = PhotosConfig(size=32)
        return photo_crops(cfg, "train", n_train), photo_crops(cfg, "test", n_val)  # held-out photos
    raise ValueError(f"data set {name!r} is not one of shapes, digits, photos")


def as_input(images: np.ndarray) -> Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, S, S] in [-1, 1]


def train_and_measure(quantizer: dict, train: Tensor, val: Tensor, steps: int, batch: int, seed: int,
                      extra: dict | None = None) -> dict:
    from latentforge.config import from_dict

    torch.manual_seed(seed)
    cfg = from_dict(ConvConfig, {"image_size": train.shape[-1], "patch": 2, "channels": (32, 64),
                                 "quantizer": quantizer, **(extra or {})})
    model = ConvTokenizer(cfg).train()
    tcfg = TrainConfig(steps=steps, batch_size=batch, lr=2e-3, warmup=20)
    opt = build_optimizer(model, tcfg)
    order = torch.Generator().manual_seed(seed)
    times = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg)
        x = train[torch.randint(len(train), (batch,), generator=order)]
        t = time.perf_counter()
        out = model.loss({"image": x})
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    model.eval()
    recon, codes = [], []
    with torch.no_grad():
        for i in range(0, len(val), 256):
            q = model.quantize(val[i:i + 256])
            recon.append(model.decode_latents(q.z_q).clamp(-1, 1))
            codes.append(q.codes)
    recon, codes = torch.cat(recon), torch.cat(codes)
    x, y = to_unit(val), to_unit(recon)
    levels = codes.reshape(-1, codes.shape[-1]) if model.spec.depth > 1 else codes.reshape(-1, 1)
    stats = [codebook_stats(code_histogram(levels[:, d], model.spec.vocab_size)) for d in range(levels.shape[1])]
    bands = band_psnr(recon, val, levels=1)
    return {
        "psnr_low_band": float(bands["low"].clamp_max(100).mean()),
        "psnr_high_band": float(bands["high_1"].clamp_max(100).mean()),
        "psnr": float(psnr(x, y).mean()),
        "ssim": float(ssim(x, y).mean()),
        "usage": statistics.mean(s["codebook_usage"] for s in stats),
        "perplexity": statistics.mean(s["perplexity"] for s in stats),
        "step_ms": 1000 * statistics.median(times[10:]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--datasets", default="shapes,digits,photos")
    ap.add_argument("--bottlenecks", default=",".join(BOTTLENECKS))
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--wavelet", action="store_true",
                    help="also P34's check: VQ 1024 on photos with L2 vs L2 + wavelet loss, band PSNRs")
    ap.add_argument("--wavelet-seeds", default="0,1,2", help="P34's check: mean over these seeds")
    ap.add_argument("--wavelet-steps", type=int, default=0, help="P34's check: training steps (0: --steps)")
    ap.add_argument("--out", default="benchmarks/results/tokenizers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for data in args.datasets.split(","):
        train_u8, val_u8 = load_data(data, args.n_train, args.n_val)
        train, val = as_input(train_u8), as_input(val_u8)
        for name in args.bottlenecks.split(","):
            ours, peer = BOTTLENECKS[name]
            row = {"data": data, "bottleneck": name}
            for who, qcfg in (("ours", ours), ("peer", peer)):
                row[who] = train_and_measure(qcfg, train, val, args.steps, args.batch, args.seed)
            row["time_ratio"] = row["ours"]["step_ms"] / row["peer"]["step_ms"]
            results.append(row)
            o, p = row["ours"], row["peer"]
            print(f"| {data} | {name} | {o['psnr']:.2f} / {p['psnr']:.2f} | {o['ssim']:.3f} / {p['ssim']:.3f} | "
                  f"{100 * o['usage']:.0f} / {100 * p['usage']:.0f} % | {o['perplexity']:.0f} / {p['perplexity']:.0f} | "
                  f"{o['step_ms']:.0f} / {p['step_ms']:.0f} ms ({row['time_ratio']:.2f}×) |", flush=True)
    wavelet = []
    if args.wavelet:
        train_u8, val_u8 = load_data("photos", args.n_train, args.n_val)
        train, val = as_input(train_u8), as_input(val_u8)
        vq = BOTTLENECKS["VQ 1024"][0]
        seeds = [int(s) for s in args.wavelet_seeds.split(",")]
        for label, extra in (("L2", {}), ("L2 + wavelet (high x2)", {"wavelet": {"high_weight": 2.0}})):
            runs = [train_and_measure(vq, train, val, args.wavelet_steps or args.steps, args.batch, s, extra)
                    for s in seeds]
            m = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
            wavelet.append({"loss": label, "seeds": seeds, "runs": runs, **m})
            spread = " / ".join(f"{r['psnr_high_band']:.2f}" for r in runs)
            print(f"| photos | {label} | {m['psnr']:.2f} | {m['psnr_low_band']:.2f} | {m['psnr_high_band']:.2f} "
                  f"(seeds: {spread}) |", flush=True)
    from importlib.metadata import version

    meta = {"args": vars(args), "torch": torch.__version__, "peer_version": version("vector-quantize-pytorch"),
            "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    write_json(args.out, {"meta": meta, "results": results, "wavelet": wavelet})


if __name__ == "__main__":
    main()
