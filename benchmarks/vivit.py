"""P24 check at toy scale: does freezing ViViT's spatial transformer halve training time and memory
at equal accuracy?

    python benchmarks/vivit.py [--data squares|moving_mnist] [--steps 600] [--variants ...]
                               [--threads 2] [--device cpu] [--out benchmarks/results/vivit.json]

Prints a JSON summary (and one line per variant as it finishes); `--out` also writes everything,
the validation curves included.

Defaults take about 3 minutes on an idle 2-core CPU with `--threads 1` (each variant ~10-40 s, plus
~3 s of torch import per subprocess). The network is latentforge's video probe
(`latentforge/eval/video_probe.py`: ViViT factorised encoder, a spatial transformer per frame, a
temporal transformer over the frame tokens, a linear head per label) at the size of its tests
(width 32, 2 attention heads, spatial depth 1, temporal depth 1, 4x4 patches).

Data (default, generated here, known answer): 16x16 clips of 8 frames, a 4x4 square of one of 4
colours on black moving one pixel a frame in one of 4 directions; heads "direction" (needs time)
and "colour" (any frame shows it). 2,048 training clips, 512 validation clips. `--data
moving_mnist` builds latentforge's Moving-MNIST data set instead (`registry.lookup("dataset",
"moving_mnist")`, heads "digit" and "direction", 2 slots each) with its default frames and size.

Variants (each in its own process, so its peak RSS is its own; same seed, same data, same
batches, same optimizer (AdamW, warm-up + cosine, clip 1.0) and step budget):
  * full_scratch        everything trained from random initial weights;
  * full_pretrained     everything trained, the spatial transformer starting from stage 1 (P24's
                        baseline: ViViT fine-tuned from an image-pretrained spatial transformer);
  * frozen_spatial      stage-1 spatial transformer frozen (no_grad) + adapter (bottleneck 8,
                        zero-initialised up-projection) + temporal transformer + heads trained;
  * frozen_no_adapter   the same without the adapter (P24's "naive freezing", one of its two fixes
                        taken away);
  * frozen_labels_only  frozen, stage 1 trained on the frame labels alone (no thumbnail redraw):
                        a spatial transformer pretrained for a task that does not need what the
                        temporal one must see (where the object is).
Stage 1 (`video_probe.pretrain_spatial`, run once per kind and reused): the spatial transformer as
a per-frame model naming each frame's clip labels and redrawing its thumbnail, 300 steps of 128
frames. Its time is reported apart and added in `seconds_to_target_with_stage1`.

Measured per variant: seconds per training step (median over the steps, validation excluded),
training seconds and steps until every head's validation accuracy reaches `--target` (checked
every `--eval-every` steps), the final validation accuracy per head, peak RSS of the process and
its rise during training, the bytes of activations one step keeps for its backward pass (tensors
saved by autograd, parameters excluded, each storage once: the memory freezing saves, exact and
independent of the allocator), FLOPs of one step (torch's FlopCounterMode), trainable parameters,
and on CUDA the peak allocated memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latentforge.eval.video_probe import (
    VideoProbe,
    VideoProbeConfig,
    VideoProbeTrainConfig,
    clips_to_model,
    pretrain_spatial,
)
from latentforge.train.batches import step_seed
from latentforge.train.trainer import TrainConfig, build_optimizer, lr_at

VARIANTS = {  # name -> (mode, stage 1 kind or None, adapter on)
    "full_scratch": ("full", None, False),
    "full_pretrained": ("full", "thumbnail", False),
    "frozen_spatial": ("frozen_spatial", "thumbnail", True),
    "frozen_no_adapter": ("frozen_spatial", "thumbnail", False),
    "frozen_labels_only": ("frozen_spatial", "labels", True),
}

# ---------------------------------------------------------------------------------- data

COLOURS = np.array([[255, 40, 40], [40, 255, 40], [60, 60, 255], [255, 255, 40]], np.uint8)
MOVES = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]])  # (dy, dx): right, left, down, up


def moving_squares(n: int, seed: int, frames: int = 8, size: int = 16, side: int = 4) -> tuple[np.ndarray, dict]:
    """uint8 clips [n, T, S, S, 3] of a square moving one pixel a frame, and its targets."""
    rng = np.random.default_rng(seed)
    move, colour = rng.integers(0, 4, n), rng.integers(0, 4, n)
    clips = np.zeros((n, frames, size, size, 3), np.uint8)
    span = size - side - (frames - 1)
    if span < 0:
        raise ValueError(f"a {side}-pixel square moving {frames - 1} pixels does not fit {size} pixels")
    for i in range(n):
        dy, dx = MOVES[move[i]]
        y0 = rng.integers(0, size - side + 1) if dy == 0 else rng.integers(0, span + 1) + (frames - 1) * (dy < 0)
        x0 = rng.integers(0, size - side + 1) if dx == 0 else rng.integers(0, span + 1) + (frames - 1) * (dx < 0)
        for t in range(frames):
            clips[i, t, y0 + dy * t:y0 + dy * t + side, x0 + dx * t:x0 + dx * t + side] = COLOURS[colour[i]]
    return clips, {"direction": (move[:, None].astype(np.int64), 4), "colour": (colour[:, None].astype(np.int64), 4)}


def load_data(args: argparse.Namespace) -> tuple[np.ndarray, dict, np.ndarray, dict]:
    if args.data == "squares":
        return (*moving_squares(args.train_size, args.seed), *moving_squares(args.val_size, args.seed + 1))
    from latentforge.data.base import build_dataset
    from latentforge.registry import lookup

    config_cls = lookup("dataset", "moving_mnist")[0]
    cfg = config_cls()
    sizes = {k: v for k, v in (("train_size", args.train_size), ("val_size", args.val_size), ("seed", args.seed))
             if hasattr(cfg, k)}
    dataset = build_dataset(dataclasses.replace(cfg, **sizes))
    train, val = dataset.split("train"), dataset.split("val")
    return (np.asarray(dataset.examples(train)), dataset.probe_targets(train),
            np.asarray(dataset.examples(val)), dataset.probe_targets(val))


# ---------------------------------------------------------------------------------- measuring


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024   # bytes on macOS, KiB on Linux


def saved_activation_bytes(probe: VideoProbe, batch: dict) -> int:
    """Bytes autograd keeps for the backward pass of one loss on `batch` (each storage once,
    parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in probe.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = probe.loss(batch)["loss"]
    loss.backward()
    probe.zero_grad(set_to_none=True)
    return sum(seen.values())


def step_flops(probe: VideoProbe, batch: dict) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        probe.loss(batch)["loss"].backward()
    probe.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------- one variant


def probe_config(args: argparse.Namespace, clips: np.ndarray, targets: dict, adapter: int) -> VideoProbeConfig:
    return VideoProbeConfig(frames=clips.shape[1], size=clips.shape[2], patch=args.patch or clips.shape[2] // args.grid,
                            dim=args.dim, attn_heads=args.attn_heads, spatial_depth=args.spatial_depth,
                            temporal_depth=args.temporal_depth, adapter=adapter, heads=tuple(targets),
                            slots=tuple(t.shape[1] for t, _ in targets.values()),
                            classes=tuple(c for _, c in targets.values()))


def stage1_config(args: argparse.Namespace, kind: str) -> VideoProbeTrainConfig:
    return VideoProbeTrainConfig(mode="frozen_spatial", spatial_steps=args.spatial_steps, frame_batch=args.frame_batch,
                                 spatial_lr=args.lr, seed=args.seed, thumbnail=1.0 if kind == "thumbnail" else 0.0)


def run_variant(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Train one variant in this process and measure it."""
    mode, stage1, with_adapter = VARIANTS[name]
    device = torch.device(args.device)
    x, y, xv, yv = load_data(args)
    x_all, y_all = torch.from_numpy(x), {h: torch.from_numpy(t) for h, (t, _) in y.items()}
    torch.manual_seed(args.seed)
    probe = VideoProbe(probe_config(args, x, y, args.adapter if with_adapter else 0)).to(device)
    out: dict = {"variant": name, "mode": mode, "stage1": stage1, "adapter": probe.config.adapter}
    if stage1 is not None:
        # trained by the parent once per kind; this resumes its finished checkpoint: weights, no steps
        pretrain_spatial(probe, x_all, y_all, stage1_config(args, stage1), work / f"stage1_{stage1}", device,
                         progress=False)
    if mode == "frozen_spatial":
        probe.freeze_spatial()
    probe.train()
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       warmup=min(50, args.steps // 10 + 1), weight_decay=0.0, grad_clip=1.0)
    optimizer = build_optimizer(probe, tcfg)

    def batch(step: int) -> dict:
        torch.manual_seed(step_seed(args.seed, step))
        idx = torch.randint(len(x_all), (args.batch_size,))
        return {k: v.to(device) for k, v in {"video": clips_to_model(x_all[idx]),
                                              **{h: t[idx] for h, t in y_all.items()}}.items()}

    probe_batch = batch(-1)
    out["saved_activation_bytes"] = saved_activation_bytes(probe, probe_batch)
    out["flops_per_step"] = step_flops(probe, probe_batch)
    out["trainable_parameters"] = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    out["parameters"] = sum(p.numel() for p in probe.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_bytes()
    times, curve, reached = [], [], None
    for step in range(args.steps):
        b = batch(step)
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, tcfg)
        probe.loss(b)["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in probe.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = probe.accuracy(xv, yv)
            probe.train()
            curve.append({"step": step + 1, "seconds": sum(times), **acc})
            if reached is None and min(acc.values()) >= args.target:
                reached = curve[-1]
    out.update(sec_per_step=statistics.median(times), sec_per_step_mean=statistics.fmean(times),
               train_seconds=sum(times), final_accuracy={k: v for k, v in curve[-1].items() if k in y},
               steps_to_target=reached["step"] if reached else None,
               seconds_to_target=reached["seconds"] if reached else None, curve=curve,
               peak_rss_bytes=peak_rss_bytes(), rss_rise_bytes=max(0, peak_rss_bytes() - rss_before))
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def run_stage1(kind: str, args: argparse.Namespace, work: Path) -> dict:
    x, y, xv, yv = load_data(args)
    torch.manual_seed(args.seed)
    probe = VideoProbe(probe_config(args, x, y, 0))
    seconds = pretrain_spatial(probe, torch.from_numpy(x), {h: torch.from_numpy(t) for h, (t, _) in y.items()},
                               stage1_config(args, kind), work / f"stage1_{kind}", args.device, progress=False)
    return {"kind": kind, "seconds": seconds, "steps": args.spatial_steps, "frame_batch": args.frame_batch}


# ---------------------------------------------------------------------------------- main


def subprocess_run(what: str, args: argparse.Namespace, work: Path) -> dict:
    """`what` ("stage1:<kind>" or a variant) in a fresh process; its JSON result."""
    result = work / f"{what.replace(':', '_')}.json"
    argv = [sys.executable, __file__, "--worker", what, "--work", str(work), *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(argv, check=True, env=env)
    return json.loads(result.read_text())


def summary_line(r: dict) -> str:
    acc = ", ".join(f"{h} {v:.3f}" for h, v in r["final_accuracy"].items())
    target = (f"{r['steps_to_target']} steps / {r['seconds_to_target']:.1f} s" if r["steps_to_target"]
              else "not reached")
    return (f"{r['variant']:<19} {1000 * r['sec_per_step']:6.1f} ms/step  to target: {target:<22} "
            f"activations {r['saved_activation_bytes'] / 2**20:6.1f} MiB  peak RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB  "
            f"final: {acc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("squares", "moving_mnist"), default="squares")
    ap.add_argument("--train-size", type=int, default=2048)
    ap.add_argument("--val-size", type=int, default=512)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=600, help="training steps of each variant (stage 2)")
    ap.add_argument("--spatial-steps", type=int, default=300, help="stage 1 steps")
    ap.add_argument("--frame-batch", type=int, default=128, help="frames per stage-1 step")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--attn-heads", type=int, default=2)
    ap.add_argument("--spatial-depth", type=int, default=1)
    ap.add_argument("--temporal-depth", type=int, default=1)
    ap.add_argument("--patch", type=int, default=0, help="patch side; 0: frame side / --grid")
    ap.add_argument("--grid", type=int, default=4, help="patches per frame side when --patch is 0")
    ap.add_argument("--adapter", type=int, default=8, help="adapter bottleneck of the variants that have one")
    ap.add_argument("--target", type=float, default=0.9, help="validation accuracy every head must reach")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON with everything (curves too), e.g. benchmarks/results/vivit.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:  # a child: one stage 1 or one variant, its result as JSON beside the others
        work = Path(args.work)
        if args.worker.startswith("stage1:"):
            result = run_stage1(args.worker.split(":", 1)[1], args, work)
        else:
            result = run_variant(args.worker, args, work)
        (work / f"{args.worker.replace(':', '_')}.json").write_text(json.dumps(result))
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    t_all = time.perf_counter()
    result: dict = {"meta": {"args": vars(args), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                             "machine": platform.processor() or platform.machine(), "device": args.device}}
    with tempfile.TemporaryDirectory(prefix="vivit-bench-") as tmp:
        work = Path(tmp)
        kinds = sorted({VARIANTS[v][1] for v in variants} - {None})
        result["stage1"] = {k: subprocess_run(f"stage1:{k}", args, work) for k in kinds}
        for k, s in result["stage1"].items():
            print(f"stage 1 ({k}): {s['seconds']:.1f} s for {s['steps']} steps", flush=True)
        rows = []
        for v in variants:
            r = subprocess_run(v, args, work)
            if r["stage1"] is not None and r["seconds_to_target"] is not None:
                r["seconds_to_target_with_stage1"] = r["seconds_to_target"] + result["stage1"][r["stage1"]]["seconds"]
            rows.append(r)
            print(summary_line(r), flush=True)
    result["variants"] = rows
    by = {r["variant"]: r for r in rows}
    if "frozen_spatial" in by:
        frozen = by["frozen_spatial"]
        result["ratios_frozen_vs"] = {
            base: {"sec_per_step": frozen["sec_per_step"] / by[base]["sec_per_step"],
                   "saved_activation_bytes": frozen["saved_activation_bytes"] / by[base]["saved_activation_bytes"],
                   "flops_per_step": frozen["flops_per_step"] / by[base]["flops_per_step"],
                   "rss_rise_bytes": (frozen["rss_rise_bytes"] / by[base]["rss_rise_bytes"]
                                      if by[base]["rss_rise_bytes"] else None),
                   "accuracy_gap": {h: frozen["final_accuracy"][h] - by[base]["final_accuracy"][h]
                                    for h in frozen["final_accuracy"]}}
            for base in ("full_scratch", "full_pretrained") if base in by}
    result["meta"]["seconds"] = time.perf_counter() - t_all
    summary = {"stage1_seconds": {k: s["seconds"] for k, s in result["stage1"].items()},
               "variants": {r["variant"]: {k: v for k, v in r.items() if k not in ("variant", "curve")} for r in rows},
               **{k: result[k] for k in ("ratios_frozen_vs",) if k in result}, "seconds": result["meta"]["seconds"]}
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
