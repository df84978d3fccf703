"""Training speed of the one Trainer (issue 6), side by side in one run:

1. the machine: CPU model and capability, and the matmul ceiling (2048^3, fp32 and bf16);
2. step time of the default tokenizer, the default generator and a width-512 generator under
   fp32, bf16, `auto` and `auto` + torch.compile (median of `--steps` after `--warmup`), with the
   achieved FLOP/s (matmul/conv/attention FLOPs of forward + backward, counted by torch's
   FlopCounterMode) as a fraction of the fastest precision's ceiling;
3. DDP on the 2 cores: 1 process x 2 threads against 2 processes x 1 thread (torchrun, gloo);
4. with `--curves`: bf16 against fp32 loss curves on the default generator (and a second bf16 seed
   as the noise).

bf16 is measured only where the CPU runs it natively (`train.precision.cpu_native_bf16`: AMX or
AVX512-BF16, and oneDNN not capped below them): on an AVX2-only CPU it is emulated, 40-450x slower,
and timing it would take the better part of an hour to say so; the run prints why it skipped it.

    python benchmarks/training.py [--steps 10] [--warmup 3] [--curves] [--curve-steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from latentforge.data.base import build_dataset
from latentforge.data.sets import ShapesDataConfig
from latentforge.modalities.image import ImageModality
from latentforge.recipes import load_recipe
from latentforge.registry import lookup
from latentforge.train.precision import cpu_flags, cpu_model, cpu_native_bf16
from latentforge.train.trainer import TrainConfig, Trainer


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --- the models -------------------------------------------------------------------------------

def shapes_data(n: int = 2048) -> dict:
    return build_dataset(ShapesDataConfig(train_size=n, val_size=8)).split("train")


def tokenizer_job(data: dict):
    cfg = load_recipe("configs/shapes_sg2im.yaml")
    images = torch.from_numpy(data["images"])
    batch = cfg.tokenizer_train.batch_size

    def make():
        return lookup("tokenizer", cfg.tokenizer.name)[1](cfg.tokenizer)

    def batch_fn(step):
        return {"image": ImageModality(images.shape[1]).to_model(images[torch.randint(len(images), (batch,))])}

    return "tokenizer (default: conv 64/128, VQ 256)", make, batch_fn, None, batch


def _code_job(name: str, gcfg, codes: torch.Tensor, cond: dict[str, torch.Tensor], batch: int):
    """A generator of discrete codes trained on (codes, conditions) rows."""
    holder = {}

    def make():
        holder["model"] = lookup("generator", gcfg.name)[1](gcfg)
        return holder["model"]

    def batch_fn(step):
        idx = torch.randint(len(codes), (batch,))
        return {"codes": codes[idx], **{k: v[idx] for k, v in cond.items()}}

    def loss_fn(b):
        m = holder["model"]
        return m.loss(b["codes"], m.encode_condition(b) if m.conditioner is not None else None)

    return name, make, batch_fn, loss_fn, batch


def generator_job(data: dict, dim: int | None = None, conditional: bool = True):
    """The default generator (or a wider one) on Shapes graphs and random codes."""
    overrides = [f"generator.dim={dim}", "generator.heads=8"] if dim else []
    if not conditional:
        overrides.append("generator.conditioner=null")
    cfg = load_recipe("configs/shapes_sg2im.yaml", overrides)
    gcfg = cfg.generator
    cond = {k: torch.from_numpy(v) for k, v in build_dataset(cfg.data).numeric(data).items()}
    codes = torch.randint(gcfg.vocab_size, (len(data["images"]), *gcfg.grid))
    name = (f"generator width {dim} (AR, 4 layers, {'scene graph' if conditional else 'unconditional'})"
            if dim else "generator (default: AR 128 x 4 + scene graph + layout)")
    return _code_job(name, gcfg, codes, cond, cfg.generator_train.batch_size)


def step_time(job, precision: str, compile_: bool, steps: int, warmup: int) -> dict:
    name, make, batch_fn, loss_fn, batch = job
    torch.manual_seed(0)
    model = make()
    cfg = TrainConfig(steps=10**6, batch_size=batch, precision=precision, compile=compile_, tensorboard=False,
                      log_every=10**6, ckpt_every=10**6)
    folder = tempfile.mkdtemp(prefix="lf-bench-")
    trainer = Trainer(model, cfg, folder, batch_fn, loss_fn, progress=False)
    if compile_:
        trainer._compile()
    model.train()
    feed = trainer._feed(range(warmup + steps))
    trainer._step(0, feed)  # counts the FLOPs (eagerly), and warms up
    for i in range(1, warmup):
        trainer._step(i, feed)
    times = [_timed(lambda i=i: trainer._step(warmup + i, feed)) for i in range(steps)]
    seconds = statistics.median(times)
    return {"precision": trainer.precision.name, "compiled": trainer.forward is not trainer.objective,
            "sec_per_step": seconds, "samples_per_s": batch / seconds, "flops_per_step": trainer.flops_per_step,
            "flops_per_s": trainer.flops_per_step / seconds,
            "parameters": sum(p.numel() for p in model.parameters())}


# --- DDP ---------------------------------------------------------------------------------------

def ddp_worker(steps: int, warmup: int, out: str) -> None:
    from latentforge.train import distributed

    world = distributed.init_from_env()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = step_time(generator_job(shapes_data(512)), "auto", False, steps, warmup)
    if world.main:
        Path(out).write_text(json.dumps({**result, "processes": world.size, "threads": torch.get_num_threads()}))


def ddp_scaling(steps: int, warmup: int) -> list[dict]:
    rows = []
    for procs, threads in ((1, 1), (1, 2), (2, 1)):
        out = tempfile.mktemp(suffix=".json")
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)] \
            if procs > 1 else [sys.executable]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([*launch, __file__, "--ddp-worker", out, "--steps", str(steps), "--warmup", str(warmup)],
                       env=env, check=True, capture_output=True)
        rows.append(json.loads(Path(out).read_text()))
        print("ddp", rows[-1], flush=True)
    return rows


# --- loss curves -------------------------------------------------------------------------------

def curve(job, precision: str, seed: int, steps: int) -> list[list[float]]:
    name, make, batch_fn, loss_fn, batch = job
    torch.manual_seed(seed)
    model = make()
    folder = Path(tempfile.mkdtemp(prefix="lf-curve-"))
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=3e-3, warmup=50, weight_decay=0.01, precision=precision,
                      seed=seed, log_every=10, ckpt_every=10**6, tensorboard=False)
    Trainer(model, cfg, folder, batch_fn, loss_fn, progress=False).fit()
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [[r["step"], r["loss"]] for r in records]


def real_generator_job(run_dir: Path):
    """The default generator on the demo run's own latents and graphs (runs/demo)."""
    from latentforge.recipes import Run

    cfg = load_recipe("configs/shapes_sg2im.yaml", [f"out_dir={run_dir.parent}", f"name={run_dir.name}"])
    run = Run(cfg, progress=False)
    model = lookup("generator", cfg.generator.name)[1](cfg.generator)
    return _code_job("generator (default) on runs/demo latents", cfg.generator, run.load_latents("train"),
                     run.condition("train", model), cfg.generator_train.batch_size)


def plot_curves(curves: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean of 10 steps)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("default generator on the demo's latents: bf16 vs fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--curves", action="store_true", help="also the bf16 vs fp32 loss curves (needs --run)")
    p.add_argument("--curve-steps", type=int, default=300)
    p.add_argument("--run", default="runs/demo", help="a finished default-recipe run, for the loss curves")
    p.add_argument("--out", default="benchmarks/results/training.json")
    p.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ddp_worker:
        return ddp_worker(args.steps, args.warmup, args.ddp_worker)
    flags = cpu_flags()
    result = {"cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
              "native_bf16_flags": sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16")),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    native, why = cpu_native_bf16()
    result["bf16"] = {"measured": native, "reason": why}
    if not native:
        print(f"skipping bf16 (and its matmul ceiling, loss curves): {why}", flush=True)
    result["ceiling"] = {"fp32": matmul_ceiling(torch.float32)}
    if native:
        result["ceiling"]["bf16"] = matmul_ceiling(torch.bfloat16)
    best = max(result["ceiling"], key=result["ceiling"].get)
    print(result, flush=True)
    data = shapes_data()
    result["models"] = {}
    for job in (tokenizer_job(data), generator_job(data), generator_job(data, dim=512, conditional=False)):
        rows = {}
        variants = (("fp32", "fp32", False), ("bf16", "bf16", False), ("auto", "auto", False),
                    ("auto + compile", "auto", True))
        for label, precision, compile_ in (v for v in variants if native or v[1] != "bf16"):
            row = step_time(job, precision, compile_, args.steps, args.warmup)
            row["fraction_of_best_ceiling"] = row["flops_per_s"] / result["ceiling"][best]
            rows[label] = row
            print(job[0], label, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        result["models"][job[0]] = rows
    result["best_ceiling"] = best
    result["ddp"] = ddp_scaling(args.steps, args.warmup)
    run = Path(args.run)
    if args.curves and not native:
        print("skipping the loss curves: bf16 is emulated here", flush=True)
    elif args.curves and not (run / "latents.npz").exists():
        print(f"skipping the loss curves: {run} has no latents.npz (run the default recipe first)", flush=True)
    elif args.curves:
        job = real_generator_job(run)
        result["curves"] = {"fp32, seed 0": curve(job, "fp32", 0, args.curve_steps),
                            "bf16, seed 0": curve(job, "bf16", 0, args.curve_steps),
                            "bf16, seed 1": curve(job, "bf16", 1, args.curve_steps)}
        plot_curves(result["curves"], Path(args.out).with_name("training_curves.png"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
