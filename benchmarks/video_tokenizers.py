"""Video tokenizer benchmark: causal 3D autoencoders on Moving Shapes (P16 Step-Video, P19 VideoVAE+, P22 MotionAura).

    python benchmarks/video_tokenizers.py [--budget 45] [--clock wall|cpu] [--threads 2]
        [--only compression,design,shortcut,masking] [--data moving_shapes|moving_mnist] [--seeds 0]
        [--train-size 2048] [--val-size 128] [--out benchmarks/results/video_tokenizers_default.json]

Every model is a `causal3d` tokenizer (tokenizers/causal3d.py) trained on the same clips with the
same seed and batch order for the same budget of seconds (`--budget`, per model) in fp32 with
AdamW, then scored on the same held-out val clips with `VideoModality.recon_metrics`.

Time: ten models x 45 s of training, plus the clips (~10 s) and evaluation (~15-30 s a model, most
of it recon_metrics' float64 SSIM): about 10 minutes on an idle 2-core CPU, 13 on this shared one.
The training time is fixed; a loaded or slower machine gives fewer steps and a longer evaluation.
On a shared machine pass `--threads 1`: two threads wait on each other at every op when other
jobs hold the cores (measured 2.5-4 s/step instead of 0.5-0.7 s), and `--clock cpu`, which counts
this process's CPU seconds, so that another job's burst does not take steps from one model only.

Fixed choices (the same for every model):
* data: Moving Shapes, 32 x 32, 17 frames, object speeds drawn in [0.02, 0.1] frame sides per frame
  (0.6-3.2 px/frame: P19's "large-motion variant"; the data set's default tops out at 0.05);
  2,048 training clips, 128 val clips. `--data moving_mnist`: two digits at 32 px, 2 px/frame.
* bottleneck: Gaussian (KL-VAE) with C = 4 latent channels, kl_weight 1e-5 (per position, against
  a per-element MSE: nearly a plain autoencoder, as the KL-VAEs of P16 and P19 are in practice).
* family: 3 resolution levels, channels (8, 16, 32), one residual block per level; x4 in space is
  patch 1, x8 is patch 2; `time_down` flags give x1 / x2 / x4 in time (the first frame is encoded
  alone: t = 1 + (T-1)/f_t, so 17 frames -> 17 / 9 / 5 latent frames).
* training: batch 8, AdamW lr 2e-3 (20 warm-up steps, then cosine to 0.1x over the budget),
  grad clip 1, L2 reconstruction. All models train interleaved, round robin in slices of `--slice`
  wall-clock seconds, so slow changes in the machine's load hit every model alike; each one's
  random state (init, batch order, masks, posterior noise) is its own, from the seed.

Experiments (`--only` runs some; models they share are trained once):
1. compression: PSNR against the compression ratio (input values 17 * 32 * 32 * 3 over latent
   values t * h * w * C) for x4 space with x1 / x2 / x4 time and x8 space with x2 / x4 time.
2. design (P19): "factorised" (2D encoder per frame, then a motion compressor of temporal convs)
   against "joint" ((2+1)D blocks, time halved with space at each level transition) at x4 / x4
   and equal latent size; the factorised widths are searched so that its parameter count is within
   5 % of the joint one. P19's claim: factorised >= 0.5 dB better, more on the fast third.
   The library's "joint" is (2+1)D, not P19's baseline of full 3x3x3 convs.
3. shortcut (P16): spatial_down "unshuffle" (pixel-unshuffle + channel-average shortcut) against
   "strided" at equal compression, plus a strided model widened to the unshuffle one's parameters.
   P16's claim: lower reconstruction MSE.
4. masking (P22): frame_mask_p 0.25 and token_mask_p 0.25 against none. P22's claim: lower
   temporal error at <= 0.3 dB PSNR cost.

Reported per model: parameters (`param_counts`), latent grid, compression ratio, steps done,
sec/step, val PSNR / SSIM / MSE / temporal error, and PSNR and temporal error on the
high-velocity subset (the third of val clips whose fastest object moves fastest). "first frame
held" is a reference row: the clip's first frame repeated (no motion at all).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from latentforge.atomic import write_json
from latentforge.modalities.image_metrics import psnr, to_unit
from latentforge.modalities.video import VideoModality, temporal_error
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.tokenizers.causal3d import Causal3dConfig, Causal3dTokenizer, param_counts
from latentforge.train.precision import cpu_model
from latentforge.train.trainer import TrainConfig, build_optimizer

# ---------------------------------------------------------------------------------- the models

LATENT_CHANNELS = 4     # C, the same for every model
BASE_CHANNELS = (8, 16, 32)
BASE = "joint s4 t4"    # shared by every experiment: x4 space, x4 time, joint, strided, no masking

# name -> (field changes from the base config, the model whose parameter count to match or None)
MODELS: dict[str, tuple[dict, str | None]] = {
    "joint s4 t1": ({"time_down": (False, False)}, None),
    "joint s4 t2": ({"time_down": (True, False)}, None),
    BASE: ({}, None),
    "joint s8 t2": ({"patch": 2, "time_down": (True, False)}, None),
    "joint s8 t4": ({"patch": 2}, None),
    "factorised s4 t4": ({"design": "factorised"}, BASE),
    "unshuffle s4 t4": ({"spatial_down": "unshuffle"}, None),
    "strided s4 t4 wide": ({}, "unshuffle s4 t4"),
    "frame mask 0.25": ({"frame_mask_p": 0.25}, None),
    "token mask 0.25": ({"token_mask_p": 0.25}, None),
}
EXPERIMENTS: dict[str, list[str]] = {
    "compression": ["joint s4 t1", "joint s4 t2", BASE, "joint s8 t2", "joint s8 t4"],
    "design": [BASE, "factorised s4 t4"],
    "shortcut": [BASE, "unshuffle s4 t4", "strided s4 t4 wide"],
    "masking": [BASE, "frame mask 0.25", "token mask 0.25"],
}


def base_config(frames: int, size: int) -> Causal3dConfig:
    quantizer = GaussianConfig(dim=16, latent_channels=LATENT_CHANNELS, kl_weight=1e-5)
    return Causal3dConfig(frames=frames, image_size=size, patch=1, channels=BASE_CHANNELS, blocks_per_level=1,
                          time_down=(True, True), recon_loss="l2", quantizer=quantizer)


def count(cfg: Causal3dConfig) -> int:
    with torch.device("meta"):  # counts without allocating or drawing weights
        return Causal3dTokenizer(cfg).param_counts()["total"]


def match_width(cfg: Causal3dConfig, target: int, tolerance: float = 0.05) -> Causal3dConfig:
    """`cfg` with channel widths (multiples of 4, non-decreasing) whose parameter count is within
    `tolerance` of `target`, keeping the widths' proportions as far as it can: uniform scalings of
    the widths first, then +-4 on each level around the best. The closest count if none is within."""
    base = cfg.channels

    def shape_cost(ch: tuple[int, ...]) -> float:
        logs = [math.log(c / b) for c, b in zip(ch, base)]
        mean = sum(logs) / len(logs)
        return sum((v - mean) ** 2 for v in logs)

    seen: dict[tuple[int, ...], int] = {}

    def consider(ch: tuple[int, ...]) -> None:
        if ch not in seen and all(c >= 4 for c in ch) and list(ch) == sorted(ch):
            seen[ch] = count(dataclasses.replace(cfg, channels=ch))

    for s in np.arange(0.5, 2.0, 0.02):
        consider(tuple(max(4, 4 * round(b * s / 4)) for b in base))
    best = min(seen, key=lambda ch: abs(seen[ch] - target))
    for delta in np.ndindex(*(3,) * len(base)):
        consider(tuple(c + 4 * (d - 1) for c, d in zip(best, delta)))
    within = [ch for ch in seen if abs(seen[ch] / target - 1) <= tolerance]
    pick = min(within, key=lambda ch: (shape_cost(ch), abs(seen[ch] - target))) if within else \
        min(seen, key=lambda ch: abs(seen[ch] - target))
    return dataclasses.replace(cfg, channels=pick)


def model_configs(names: list[str], frames: int, size: int) -> dict[str, Causal3dConfig]:
    """The configs of `names` (and of the models their widths are matched to)."""
    out: dict[str, Causal3dConfig] = {}

    def build(name: str) -> Causal3dConfig:
        if name not in out:
            changes, match = MODELS[name]
            cfg = dataclasses.replace(base_config(frames, size), **copy.deepcopy(changes))
            out[name] = match_width(cfg, count(build(match))) if match else cfg
        return out[name]

    for name in names:
        build(name)
    return {name: out[name] for name in names}


# ---------------------------------------------------------------------------------- data

def load_data(args) -> tuple[VideoModality, np.ndarray, np.ndarray, np.ndarray]:
    """Train clips, val clips (uint8 [N, T, S, S, 3]) and each val clip's speed: its fastest object's
    pixels per frame."""
    if args.data == "moving_shapes":
        from latentforge.data.moving_shapes import MovingShapesConfig, moving_shapes_rows

        cfg = MovingShapesConfig(size=args.size, frames=args.frames, min_speed=args.min_speed,
                                 max_speed=args.max_speed, train_size=args.train_size, val_size=args.val_size,
                                 seed=args.data_seed)
        train = moving_shapes_rows(cfg, "train", range(args.train_size))["video"]
        val = moving_shapes_rows(cfg, "val", range(args.val_size))
        speed = np.nanmax(val["speeds"], axis=1) * args.size  # frame sides per frame -> pixels
    elif args.data == "moving_mnist":
        from latentforge.data.moving_mnist import MovingMnistConfig, moving_mnist_rows

        cfg = MovingMnistConfig(size=args.size, frames=args.frames, train_size=args.train_size,
                                val_size=args.val_size, seed=args.data_seed)
        train = moving_mnist_rows(cfg, "train", range(args.train_size))["video"]
        val = moving_mnist_rows(cfg, "val", range(args.val_size))
        # one speed per axis for every digit: a diagonal digit moves sqrt(2) faster
        step = np.abs(np.diff(val["tracks"], axis=1))  # [N, T-1, D, 2]
        speed = np.linalg.norm(step, axis=-1).mean(axis=1).max(axis=1)
    else:
        raise ValueError(f"--data {args.data!r} is not one of moving_shapes, moving_mnist")
    return VideoModality(args.frames, args.size), train, val["video"], speed


def fast_third(speed: np.ndarray) -> np.ndarray:
    """Indices of the third of clips with the highest speed (ties by index)."""
    order = np.argsort(-speed, kind="stable")
    return np.sort(order[: math.ceil(len(speed) / 3)])


# ---------------------------------------------------------------------------------- training

@dataclass
class Budget:
    """What each model gets: `seconds` of training on `clock` ("wall", or "cpu": this process's CPU
    seconds, which a shared machine's load does not eat into when --threads is 1), or `steps` when > 0."""

    seconds: float
    steps: int = 0
    clock: str = "wall"

    def spent(self, run: Run) -> float:
        """Progress in [0, 1] (the cosine schedule's clock)."""
        if self.steps:
            return run.steps / self.steps
        return (run.cpu_seconds if self.clock == "cpu" else run.seconds) / self.seconds

    def done(self, run: Run) -> bool:
        return self.spent(run) >= 1.0


@dataclass
class Run:
    """One model in training: its own optimizer, batch order and random state."""

    name: str
    seed: int
    config: Causal3dConfig
    model: Causal3dTokenizer
    opt: torch.optim.Optimizer
    order: torch.Generator
    rng: Tensor
    steps: int = 0
    seconds: float = 0.0          # wall-clock seconds in training steps
    cpu_seconds: float = 0.0      # this process's CPU seconds in training steps
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)


def new_run(name: str, cfg: Causal3dConfig, seed: int, tcfg: TrainConfig) -> Run:
    torch.manual_seed(seed)  # models of one architecture start from the same weights
    model = Causal3dTokenizer(cfg).train()
    return Run(name, seed, cfg, model, build_optimizer(model, tcfg), torch.Generator().manual_seed(seed),
               torch.get_rng_state())


def lr_for(progress: float, step: int, tcfg: TrainConfig) -> float:
    """Linear warm-up over steps, then cosine to lr * min_lr_ratio over `progress` in [0, 1]."""
    if step < tcfg.warmup:
        return tcfg.lr * (step + 1) / tcfg.warmup
    floor = tcfg.lr * tcfg.min_lr_ratio
    return floor + (tcfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_slice(run: Run, train: Tensor, modality: VideoModality, tcfg: TrainConfig, budget: Budget,
                slice_s: float) -> None:
    """Train `run` for up to `slice_s` wall-clock seconds, stopping at its budget."""
    torch.set_rng_state(run.rng)
    start = time.perf_counter()
    run.loads.append(os.getloadavg()[0])
    while time.perf_counter() - start < slice_s and not budget.done(run):
        t, c = time.perf_counter(), time.process_time()
        for group in run.opt.param_groups:
            group["lr"] = lr_for(budget.spent(run), run.steps, tcfg)
        idx = torch.randint(len(train), (tcfg.batch_size,), generator=run.order)
        out = run.model.loss({"video": modality.to_model(train[idx])})
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tcfg.grad_clip)
        run.opt.step()
        run.opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        run.steps += 1
        run.seconds += dt
        run.cpu_seconds += time.process_time() - c
        run.step_times.append(dt)
        run.losses.append(out["loss"].detach().item())
    run.rng = torch.get_rng_state()


def train_all(runs: list[Run], train: Tensor, modality: VideoModality, tcfg: TrainConfig, budget: Budget,
              slice_s: float) -> None:
    """Round robin in slices until every run has spent its budget."""
    rnd = 0
    while not all(budget.done(r) for r in runs):
        rnd += 1
        for run in runs:
            if not budget.done(run):
                train_slice(run, train, modality, tcfg, budget, slice_s)
        print(f"round {rnd}: " + ", ".join(f"{r.name}/{r.seed} {r.steps} st {statistics.mean(r.losses[-10:]):.4f}"
                                           for r in runs), flush=True)


# ---------------------------------------------------------------------------------- evaluation

@torch.no_grad()
def reconstruct(model: Causal3dTokenizer, val: np.ndarray, modality: VideoModality, batch: int = 32) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(val), batch):
        q = model.quantize(modality.to_model(val[i:i + batch]))
        out.append(modality.from_model(model.decode_latents(q.z_q)))
    return np.concatenate(out)


def scores(modality: VideoModality, real: np.ndarray, recon: np.ndarray, fast: np.ndarray) -> dict[str, float]:
    """`recon_metrics` on every val clip, plus the MSE (pixels in [0, 1]) and PSNR / temporal error on the
    fast third, computed as recon_metrics computes them (its SSIM, float64, is the slow part: run once)."""
    m = modality.recon_metrics(real, recon)
    diff = real.astype(np.float32) / 255 - recon.astype(np.float32) / 255
    m["mse"] = float(np.mean(diff ** 2))
    N, T = real.shape[:2]
    frame_psnr = psnr(to_unit(real.reshape(N * T, *real.shape[2:])),
                      to_unit(recon.reshape(N * T, *recon.shape[2:]))).clamp_max(100).view(N, T)
    m["psnr_fast"] = float(frame_psnr[torch.from_numpy(fast)].mean())
    m["temporal_error_fast"] = temporal_error(real[fast], recon[fast])
    return m


def model_row(run: Run, metrics: dict[str, float], frames: int, size: int) -> dict:
    cfg = run.config
    t, h, w = cfg.latent_grid
    latent = t * h * w * LATENT_CHANNELS
    times = run.step_times[5:] or run.step_times
    return {"model": run.name, "seed": run.seed, "params": param_counts(cfg),
            "config": {k: getattr(cfg, k) for k in ("patch", "channels", "time_down", "design", "spatial_down",
                                                   "frame_mask_p", "token_mask_p")},
            "latent_grid": [t, h, w, LATENT_CHANNELS], "compression": frames * size * size * 3 / latent,
            "steps": run.steps, "train_seconds": run.seconds, "train_cpu_seconds": run.cpu_seconds,
            "sec_per_step": run.seconds / max(run.steps, 1), "cpu_sec_per_step": run.cpu_seconds / max(run.steps, 1),
            "median_step_s": statistics.median(times) if times else float("nan"),
            "final_train_loss": statistics.mean(run.losses[-20:]) if run.losses else float("nan"),
            "mean_load": statistics.mean(run.loads) if run.loads else float("nan"), **metrics}


def mean_rows(rows: list[dict]) -> dict[str, dict]:
    """Per model: every numeric metric's mean over seeds (and the first row's descriptive fields)."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == name]
        out[name] = {**group[0], "seeds": [r["seed"] for r in group]}
        for k, v in group[0].items():
            if isinstance(v, float | int) and not isinstance(v, bool) and k != "seed":
                out[name][k] = statistics.mean(r[k] for r in group)
    return out


# ---------------------------------------------------------------------------------- claims and tables

def claims(m: dict[str, dict], names: set[str]) -> dict:
    out: dict = {}
    if {BASE, "factorised s4 t4"} <= names:
        j, f = m[BASE], m["factorised s4 t4"]
        d, d_fast = f["psnr"] - j["psnr"], f["psnr_fast"] - j["psnr_fast"]
        out["design_P19"] = {"params_joint": j["params"]["total"], "params_factorised": f["params"]["total"],
                             "psnr_gain_db": d, "psnr_gain_fast_db": d_fast,
                             "temporal_error_joint": j["temporal_error"], "temporal_error_factorised": f["temporal_error"],
                             "held": bool(d >= 0.5 and d_fast > d)}
    if {BASE, "unshuffle s4 t4"} <= names:
        s, u = m[BASE], m["unshuffle s4 t4"]
        entry = {"mse_strided": s["mse"], "mse_unshuffle": u["mse"], "params_strided": s["params"]["total"],
                 "params_unshuffle": u["params"]["total"], "held_vs_strided": bool(u["mse"] < s["mse"])}
        if "strided s4 t4 wide" in names:
            w = m["strided s4 t4 wide"]
            entry.update(mse_strided_wide=w["mse"], params_strided_wide=w["params"]["total"],
                         held_vs_strided_wide=bool(u["mse"] < w["mse"]))
        out["shortcut_P16"] = entry
    for name in ("frame mask 0.25", "token mask 0.25"):
        if {BASE, name} <= names:
            b, k = m[BASE], m[name]
            cost = b["psnr"] - k["psnr"]
            out[f"masking_P22 {name}"] = {
                "temporal_error_none": b["temporal_error"], "temporal_error_masked": k["temporal_error"],
                "psnr_cost_db": cost, "held": bool(k["temporal_error"] < b["temporal_error"] and cost <= 0.3)}
    return out


HEAD = ("| model | params | latent t×h×w×C | ratio | steps | s/step | PSNR | SSIM | MSE ×1e3 | temp. err ×1e3 "
        "| PSNR fast | temp. err fast ×1e3 |")


def table_row(r: dict) -> str:
    grid = "×".join(map(str, r["latent_grid"]))
    return (f"| {r['model']} | {r['params']['total'] / 1e3:.1f}k | {grid} | {r['compression']:.1f} | {r['steps']:.0f} | "
            f"{r['sec_per_step']:.2f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {1e3 * r['mse']:.2f} | "
            f"{1e3 * r['temporal_error']:.2f} | {r['psnr_fast']:.2f} | {1e3 * r['temporal_error_fast']:.2f} |")


def print_tables(m: dict[str, dict], reference: dict, experiments: list[str]) -> None:
    for exp in experiments:
        print(f"\n### {exp}\n\n{HEAD}")
        print("|" + "---|" * (HEAD.count("|") - 1))
        rows = sorted((m[n] for n in EXPERIMENTS[exp]), key=lambda r: r["compression"]) if exp == "compression" \
            else [m[n] for n in EXPERIMENTS[exp]]
        for r in rows:
            print(table_row(r))
    print(f"\nreference, first frame held: PSNR {reference['psnr']:.2f}, temp. err ×1e3 "
          f"{1e3 * reference['temporal_error']:.2f}, PSNR fast {reference['psnr_fast']:.2f}, "
          f"temp. err fast ×1e3 {1e3 * reference['temporal_error_fast']:.2f}")


# ---------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=45.0, help="training seconds per model")
    ap.add_argument("--steps", type=int, default=0, help="train every model this many steps instead of --budget")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="what --budget counts: wall-clock seconds, or this process's CPU seconds (with --threads 1, "
                         "robust to other jobs on a shared machine)")
    ap.add_argument("--slice", type=float, default=5.0, help="seconds per turn in the round robin")
    ap.add_argument("--only", default="", help=f"one or more experiments, comma-separated: {', '.join(EXPERIMENTS)}")
    ap.add_argument("--data", default="moving_shapes", choices=("moving_shapes", "moving_mnist"))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--min-speed", type=float, default=0.02, help="moving_shapes: frame sides per frame")
    ap.add_argument("--max-speed", type=float, default=0.1, help="moving_shapes: frame sides per frame")
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--val-size", type=int, default=128)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds, each a full set of models")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/video_tokenizers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    experiments = args.only.split(",") if args.only else list(EXPERIMENTS)
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown:
        ap.error(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    if args.val_size < 128:
        ap.error("--val-size must be >= 128 (the fast third is then >= 43 clips)")
    t_all = time.perf_counter()
    load_start = os.getloadavg()

    modality, train_u8, val_u8, speed = load_data(args)
    fast = fast_third(speed)
    print(f"data: {args.data} {len(train_u8)} train / {len(val_u8)} val clips of {args.frames}x{args.size}x{args.size} "
          f"({time.perf_counter() - t_all:.0f} s); fast third: {len(fast)} clips at >= {speed[fast].min():.2f} px/frame "
          f"(all: {speed.min():.2f}-{speed.max():.2f})", flush=True)
    train = torch.from_numpy(train_u8)

    names = list(dict.fromkeys(n for e in experiments for n in EXPERIMENTS[e]))
    cfgs = model_configs(names, args.frames, args.size)
    for name, cfg in cfgs.items():
        print(f"  {name:<20} channels {tuple(cfg.channels)} params {count(cfg):,} latent {cfg.latent_grid} x "
              f"{LATENT_CHANNELS}", flush=True)
    tcfg = TrainConfig(batch_size=args.batch, lr=args.lr, warmup=20, min_lr_ratio=0.1, grad_clip=1.0, precision="fp32")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = [new_run(name, cfgs[name], seed, tcfg) for seed in seeds for name in names]
    t_train = time.perf_counter()
    train_all(runs, train, modality, tcfg, Budget(args.budget, args.steps, args.clock), args.slice)
    train_wall = time.perf_counter() - t_train

    t_eval = time.perf_counter()
    rows = [model_row(r, scores(modality, val_u8, reconstruct(r.model, val_u8, modality), fast), args.frames, args.size)
            for r in runs]
    held = np.repeat(val_u8[:, :1], val_u8.shape[1], axis=1)
    reference = scores(modality, val_u8, held, fast)
    means = mean_rows(rows)
    result_claims = claims(means, set(names))
    eval_s = time.perf_counter() - t_eval

    print_tables(means, reference, experiments)
    if len(seeds) > 1:
        print("\nPSNR by seed: " + "; ".join(f"{n} " + " / ".join(f"{r['psnr']:.2f}" for r in rows if r["model"] == n)
                                             for n in names))
    print("\nclaims:")
    for k, v in result_claims.items():
        print(f"  {k}: " + ", ".join(f"{a} {b:.4g}" if isinstance(b, float) else f"{a} {b}" for a, b in v.items()))
    seconds = time.perf_counter() - t_all
    meta = {"args": vars(args), "torch": torch.__version__, "machine": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")
                        if k in os.environ},
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": seconds,
            "train_wall_seconds": train_wall, "eval_seconds": eval_s, "load_avg_start": load_start,
            "load_avg_end": os.getloadavg(), "bottleneck": {"name": "gaussian", "latent_channels": LATENT_CHANNELS,
                                                            "kl_weight": 1e-5},
            "fast_subset": {"n": len(fast), "min_speed_px": float(speed[fast].min())}}
    write_json(args.out, {"meta": meta, "experiments": {e: EXPERIMENTS[e] for e in experiments}, "results": rows,
                          "means": means, "reference_first_frame_held": reference, "claims": result_claims})
    print(f"\n{seconds:.0f} s in all (training {train_wall:.0f} s, evaluation {eval_s:.0f} s); load average "
          f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {args.out}")


if __name__ == "__main__":
    main()
