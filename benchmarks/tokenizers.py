"""Tokenizer zoo benchmark: every discrete bottleneck inside one autoencoder, beside vector-quantize-pytorch.

For each data set (Shapes 32 px, scikit-learn digits upsampled to 16 px, 32 px crops of the
scikit-image photographs with held-out photos for evaluation) and each bottleneck at about 10 bits
per latent position (VQ 1024, FSQ [8,5,5,5] = 1000, LFQ 10 bits, RVQ 2 x 32), the same
convolutional autoencoder is trained for the same steps with the same optimizer, data order and
seed, once with our bottleneck and once with the peer's (`vector-quantize-pytorch`, same
settings). Both start from the same autoencoder weights, drawn from the seed alone. Reported: val
PSNR, SSIM, codebook usage and perplexity over the val codes, and the median training-step time,
ours and the peer's measured in the same process.

Beyond those four (`ZOO`), `BOTTLENECKS` holds issue 14's rows: the RVQ and VQ settings one
change at a time, and each collapse defence (SimVQ, the entropy penalty, grouped VQ) beside plain
VQ; a row without a peer counterpart trains ours only.

    pip install -e ".[bench]"
    python benchmarks/tokenizers.py [--steps 300] [--datasets shapes,digits,photos] [--seeds 0,1,2]
        [--bottlenecks "RVQ 2x32,RVQ 2x32 levels"] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from tokenizer_fit import fit
from torch import Tensor

from latentforge.atomic import write_json
from latentforge.modalities.image_metrics import psnr, ssim, to_unit
from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig, code_histogram, codebook_stats
from latentforge.registry import register
from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer, Decoder, Encoder
from latentforge.tokenizers.losses import band_psnr
from latentforge.train.precision import cpu_model

# --- the peer's bottlenecks behind our interface ------------------------------------------


@dataclass
class PeerConfig(QuantizerConfig):
    """One vector-quantize-pytorch module; `kind_` picks it, the rest mirror our settings."""

    name: str = "peer"
    kind_: str = "vq"            # vq | rvq | gvq (VectorQuantize with heads) | simvq | fsq | lfq
    codebook_size: int = 1024
    levels: tuple[int, ...] = (8, 5, 5, 5)
    depth: int = 2               # rvq: levels
    groups: int = 2              # gvq: heads, each with its own codebook on dim // groups channels
    commitment: float = 0.25
    # vq / rvq / gvq / simvq: the peer's default (1.32: on whenever dim > 1), passed explicitly so
    # that the comparison states it
    rotation_trick: bool = True


@register("quantizer", "peer", PeerConfig)
class PeerQuantizer(Quantizer):
    def __init__(self, config: PeerConfig) -> None:
        super().__init__()
        import vector_quantize_pytorch as vqp

        self.config = config
        c = config
        vq_settings = dict(kmeans_init=True, use_cosine_sim=True, threshold_ema_dead_code=2,
                           commitment_weight=c.commitment, rotation_trick=c.rotation_trick)
        if c.kind_ == "vq":
            self.module = vqp.VectorQuantize(dim=c.dim, codebook_size=c.codebook_size, **vq_settings)
        elif c.kind_ == "gvq":
            self.module = vqp.VectorQuantize(dim=c.dim, codebook_size=c.codebook_size, heads=c.groups,
                                             separate_codebook_per_head=True, codebook_dim=c.dim // c.groups,
                                             **vq_settings)
        elif c.kind_ == "simvq":
            self.module = vqp.SimVQ(dim=c.dim, codebook_size=c.codebook_size, rotation_trick=c.rotation_trick,
                                    input_to_quantize_commit_loss_weight=c.commitment)
        elif c.kind_ == "rvq":
            self.module = vqp.ResidualVQ(dim=c.dim, num_quantizers=c.depth, codebook_size=c.codebook_size,
                                         kmeans_init=True, threshold_ema_dead_code=2, commitment_weight=c.commitment,
                                         rotation_trick=c.rotation_trick)
        elif c.kind_ == "fsq":
            self.module = vqp.FSQ(levels=list(c.levels), dim=c.dim)
        elif c.kind_ == "lfq":
            self.module = vqp.LFQ(dim=c.dim, codebook_size=c.codebook_size, entropy_loss_weight=0.1,
                                  diversity_gamma=1.0, commitment_loss_weight=c.commitment)
        else:
            raise ValueError(f"kind_: {c.kind_!r} is not one of vq, rvq, gvq, simvq, fsq, lfq")

    @property
    def vocab_size(self) -> int:
        return int(np.prod(self.config.levels)) if self.config.kind_ == "fsq" else self.config.codebook_size

    @property
    def depth(self) -> int:
        return {"rvq": self.config.depth, "gvq": self.config.groups}.get(self.config.kind_, 1)

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
# The peer's VQ and RVQ run EMA codebooks with decay 0.8, start each code's EMA cluster size from
# its k-means cluster and replace a code whose EMA cluster size falls below 2
# (threshold_ema_dead_code=2); ours get the same decay, start (kmeans_usage) and threshold. The
# peer's RVQ hands the decoder's gradient to the encoder through every level (SoundStream's
# Algorithm 1); ours does with gradient="levels".
PEER_EMA = {"codebook_update": "ema", "ema_decay": 0.8, "usage_decay": 0.8, "dead_threshold": 2.0,
            "kmeans_usage": True}
RVQ = {"name": "rvq", "depth": 2, "codebook_size": 32, "dim": 8, "quantizer_dropout": False}
PEER_RVQ = {"name": "peer", "kind_": "rvq", "depth": 2, "codebook_size": 32, "dim": 8}
VQ = {"name": "vq", "codebook_size": 1024, "dim": 8}
PEER_VQ = {"name": "peer", "kind_": "vq", "codebook_size": 1024, "dim": 8}
# issue 3's settings, before kmeans_usage and gradient="levels" existed
ISSUE3_EMA = {k: v for k, v in PEER_EMA.items() if k != "kmeans_usage"}
BOTTLENECKS: dict[str, tuple[dict, dict | None]] = {
    "VQ 1024": ({**VQ, **PEER_EMA}, PEER_VQ),
    "RVQ 2x32": ({**RVQ, **PEER_EMA, "gradient": "levels"}, PEER_RVQ),
    "FSQ 8-5-5-5": ({"name": "fsq", "levels": (8, 5, 5, 5), "dim": 4},
                    {"name": "peer", "kind_": "fsq", "levels": (8, 5, 5, 5), "dim": 4}),
    "LFQ 10 bits": ({"name": "lfq", "bits": 10, "dim": 10},
                    {"name": "peer", "kind_": "lfq", "codebook_size": 1024, "dim": 10}),
    # --- issue 14: what closes the RVQ gap, one change at a time (the peer: "RVQ 2x32") ---
    "RVQ 2x32 issue-3": ({**RVQ, **ISSUE3_EMA}, None),
    "RVQ 2x32 levels": ({**RVQ, **ISSUE3_EMA, "gradient": "levels"}, None),
    # --- issue 14: VQ usage on photos (the peer: "VQ 1024") ---
    "VQ 1024 issue-3": ({**VQ, **ISSUE3_EMA}, None),
    "VQ 1024 entropy": ({**VQ, **PEER_EMA, "entropy_weight": 0.01}, None),
    "VQ 1024 entropy 0.003": ({**VQ, **PEER_EMA, "entropy_weight": 0.003}, None),
    # --- issue 14: each collapse defence alone, on a learned codebook without dead-code revival ---
    "VQ 1024 learned": ({**VQ, "dead_threshold": 0.0}, None),
    "VQ 1024 learned revival": (VQ, None),  # the library's default: revival below 0.05 uses per step
    "VQ 1024 learned entropy": ({**VQ, "dead_threshold": 0.0, "entropy_weight": 0.01}, None),
    "SimVQ 1024": ({**VQ, "dead_threshold": 0.0, "simvq": True}, None),
    "GVQ 2x32 learned": ({"name": "grouped_vq", "groups": 2, "codebook_size": 32, "dim": 8, "dead_threshold": 0.0},
                         None),
    # SimVQ's own setting (and the peer's): a random Euclidean codebook, no k-means
    "VQ 1024 random": ({**VQ, "dead_threshold": 0.0, "kmeans_init": False, "l2_normalize": False}, None),
    "SimVQ 1024 random": ({**VQ, "dead_threshold": 0.0, "kmeans_init": False, "l2_normalize": False, "simvq": True},
                          {"name": "peer", "kind_": "simvq", "codebook_size": 1024, "dim": 8}),
}
ZOO = ("VQ 1024", "RVQ 2x32", "FSQ 8-5-5-5", "LFQ 10 bits")  # the default run: four families beside the peer


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
    # The bottleneck is built between encoder and decoder and draws from the global RNG (ours a
    # random codebook, the peer's k-means init nothing), so the decoder's initial weights would
    # differ with the bottleneck. Redraw both from the seed alone: every bottleneck then starts
    # from the same autoencoder.
    torch.manual_seed(seed)
    model.encoder.load_state_dict(Encoder(cfg).state_dict())
    model.decoder.load_state_dict(Decoder(cfg).state_dict())
    times = fit(model, train, steps, batch, seed)
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


def cell(o: dict, p: dict | None, key: str, fmt: str, scale: float = 1.0) -> str:
    """'ours / peer' (or ours alone when a bottleneck has no peer counterpart)."""
    ours = format(scale * o[key], fmt)
    return ours if p is None else f"{ours} / {format(scale * p[key], fmt)}"


def summarise(results: list[dict]) -> list[dict]:
    """Per data set and bottleneck: each metric's mean over seeds, ours and the peer's."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in results:
        groups.setdefault((row["data"], row["bottleneck"]), []).append(row)
    out = []
    for (data, name), rows in groups.items():
        entry = {"data": data, "bottleneck": name, "seeds": [r["seed"] for r in rows]}
        for who in ("ours", "peer"):
            if rows[0].get(who) is not None:
                entry[who] = {k: statistics.mean(r[who][k] for r in rows) for k in rows[0][who]}
                entry[who + "_psnr_by_seed"] = [r[who]["psnr"] for r in rows]
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--datasets", default="shapes,digits,photos")
    ap.add_argument("--bottlenecks", default=",".join(ZOO),
                    help=f"comma-separated, from: {', '.join(BOTTLENECKS)}")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="", help="comma-separated seeds, each a full run (default: --seed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-peer", action="store_true", help="train ours only")
    ap.add_argument("--wavelet", action="store_true",
                    help="also P34's check: VQ 1024 on photos with L2 vs L2 + wavelet loss, band PSNRs")
    ap.add_argument("--wavelet-seeds", default="0,1,2", help="P34's check: mean over these seeds")
    ap.add_argument("--wavelet-steps", type=int, default=0, help="P34's check: training steps (0: --steps)")
    ap.add_argument("--out", default="benchmarks/results/tokenizers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    names = args.bottlenecks.split(",")
    unknown = [n for n in names if n not in BOTTLENECKS]
    if unknown:
        ap.error(f"unknown bottleneck(s) {unknown}; choose from {list(BOTTLENECKS)}")
    results = []
    for data in args.datasets.split(","):
        train_u8, val_u8 = load_data(data, args.n_train, args.n_val)
        train, val = as_input(train_u8), as_input(val_u8)
        for name in names:
            ours, peer = BOTTLENECKS[name]
            for seed in seeds:
                row = {"data": data, "bottleneck": name, "seed": seed, "config": ours}
                row["ours"] = train_and_measure(ours, train, val, args.steps, args.batch, seed)
                p = None
                if peer is not None and not args.no_peer:
                    p = row["peer"] = train_and_measure(peer, train, val, args.steps, args.batch, seed)
                    row["time_ratio"] = row["ours"]["step_ms"] / p["step_ms"]
                results.append(row)
                o = row["ours"]
                ratio = f" ({row['time_ratio']:.2f}×)" if p is not None else ""
                print(f"| {data} | {name} | {seed} | {cell(o, p, 'psnr', '.2f')} | {cell(o, p, 'ssim', '.3f')} | "
                      f"{cell(o, p, 'usage', '.1f', 100)} % | {cell(o, p, 'perplexity', '.0f')} | "
                      f"{cell(o, p, 'step_ms', '.0f')} ms{ratio} |", flush=True)
    summary = summarise(results)
    if len(seeds) > 1:
        for m in summary:
            o, p = m["ours"], m.get("peer")
            print(f"| {m['data']} | {m['bottleneck']} | mean of {len(m['seeds'])} | {cell(o, p, 'psnr', '.2f')} | "
                  f"{cell(o, p, 'ssim', '.3f')} | {cell(o, p, 'usage', '.1f', 100)} % | "
                  f"{cell(o, p, 'perplexity', '.0f')} |", flush=True)
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
            "machine": cpu_model(), "date": time.strftime("%Y-%m-%d")}
    write_json(args.out, {"meta": meta, "results": results, "summary": summary, "wavelet": wavelet})


if __name__ == "__main__":
    main()
