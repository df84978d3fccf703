"""REPA at toy scale: does aligning an early generator block with a frozen encoder's patch features
make a DiT (or MAR) converge faster at equal wall-clock?

Task: the default recipe's (Shapes 32 px, up to 3 objects, the scene-graph conditioner with P1's
layout stage) on the KL-VAE latents (conv tokenizer, Gaussian bottleneck, 8 x 8 x 4), through
benchmarks/generators.py's machinery (tokenizer trained once and shared; scored by the Shapes scene
parser: exact scene match and attribute accuracies; Fréchet distance in the Shapes probe's features).
Arms: the zoo's DiT (width 128, depth 4, flow matching, 32 Euler steps) without and with REPA
(train/repa.py: block 1 of 4 = depth // 3, a 3-layer SiLU projector of width 512, lambda 0.5, the
alignment target the Shapes probe network's conv stages on the clean image, 8 x 8 x 64 patches,
the same grid as the latents); `--only mar,mar_repa` runs the zoo's MAR the same way.

Equal wall-clock: each arm's training step (REPA's includes the encoder forward and the projector)
is timed first, in interleaved rounds, and each arm gets as many steps as fit the budget (its LR
schedule then completes). Curves: held-out loss (the generator's own loss on val latents: denoising
plus its conditioner's layout terms, no REPA term) and adherence at each budget; the training log's
loss (`denoise` in the log: the generator's own loss, without the REPA term) against seconds.
Caveat: REPA's encoder is the same probe network whose features the FD reads, so the FD of the REPA
arm is not an independent judge; the adherence (scene parser) and the val loss are.

    python benchmarks/repa.py [--budgets 60,120] [--conditions 60] [--only dit,dit_repa] [--threads 1]

Writes benchmarks/results/repa.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import generators as zoo  # noqa: E402

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.recipes import RecipeConfig, Run  # noqa: E402
from latentforge.registry import lookup  # noqa: E402
from latentforge.train.log import read_jsonl  # noqa: E402
from latentforge.train.repa import REPA, Aligned, RepaConfig  # noqa: E402

REPA_SECTION = RepaConfig(weight=0.5, layer=0, projector_dim=512, encoder="probe")
ROWS = {  # name: (zoo generator, REPA on)
    "dit": ("dit", False),
    "dit_repa": ("dit", True),
    "mar": ("mar", False),
    "mar_repa": ("mar", True),
}
EVAL = {"metrics": ["recon", "val", "adherence", "diversity", "fid"], "n": 300}


def row_recipe(out: Path, name: str, steps: int, args: argparse.Namespace) -> RecipeConfig:
    base, repa = ROWS[name]
    kind, section, options, _ = zoo.GENERATORS[base]
    cfg = zoo.recipe(out, f"gen_{name}", kind, section, steps, args.conditions, options, args.data_size,
                     args.tokenizer_steps, EVAL)
    return dataclasses.replace(cfg, repa=REPA_SECTION if repa else None)


def measure_step(cfg: RecipeConfig, run: Run, reps: int = 6) -> float:
    """Median seconds of one training step (with REPA: encoder forward, projector and all)."""
    torch.manual_seed(0)
    model = lookup("generator", cfg.generator.name)[1](cfg.generator)
    codes = run.load_latents("train")
    cond = run.condition("train", model)
    model.latent_norm.fit(codes)
    images = run.dataset.examples(run.load_split("train"))
    trained = model if cfg.repa is None else Aligned(model, REPA(cfg.repa, model, *run.repa_encoder()))
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], 1e-4)
    B = cfg.generator_train.batch_size
    times = []
    for i in range(reps + 2):
        idx = torch.randint(len(codes), (B,))
        batch = {"codes": codes[idx], **{k: v[idx] for k, v in cond.items()},
                 "images": run.modality.to_model(images[idx.numpy()])}
        t = time.perf_counter()
        if cfg.repa is None:
            loss = model.loss(batch["codes"], model.encode_condition(batch))["loss"]
        else:
            loss = trained.loss(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    if cfg.repa is not None:
        trained.repa.detach_hook()
    return statistics.median(times)


def train_row(out: Path, name: str, tokenizer_dir: Path, budget: float, step_s: float,
              args: argparse.Namespace) -> dict:
    steps = max(50, int(budget / step_s))
    cfg = row_recipe(out, name, steps, args)
    run = Run(cfg, progress=False)
    zoo.adopt_tokenizer(tokenizer_dir, run)
    t = time.perf_counter()
    run.run(("generator",))
    train_s = time.perf_counter() - t
    sens = zoo.sensitivity(run)
    log = read_jsonl(run.dir / "generator" / "train" / "log.jsonl")
    metrics = run.run(("sample", "eval"))
    gen, dist = metrics["generator"], metrics.get("distribution", {})
    info = json.loads((run.dir / "sample_info.json").read_text())
    row = {"arm": name, "budget": budget, "steps": steps, "step_ms": 1000 * step_s, "train_s": train_s,
           "val_loss": sens["val_loss"], **{k: gen.get(k) for k in (*zoo.ADHERENCE, "diversity")},
           "fid": dist.get("model", {}).get("fid"),
           "fid_floor": dist.get("baselines", {}).get("real (test split)", {}).get("fid"),
           "images_per_s": info["samples_per_s"],
           "log": [{k: r.get(k) for k in ("step", "loss", "denoise", "repa_cos", "sec_per_step")} for r in log]}
    last = log[-1] if log else {}
    print(f"{name} @ {budget:.0f} s ({steps} steps, {train_s:.0f} s): val loss {row['val_loss']:.4f}, exact "
          f"{row['scene_exact']:.3f}, FD {row['fid']}" + (f", repa cos {last['repa_cos']:.3f}" if "repa_cos" in last
                                                         else ""), flush=True)
    return row


def table(result: dict) -> str:
    lines = ["| arm | budget s | steps | step ms | val loss | exact | count | shape | color | relation | "
             "FD (probe) | final align cos |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        cos = next((x["repa_cos"] for x in reversed(r["log"]) if x.get("repa_cos") is not None), None)
        lines.append(f"| {r['arm']} | {r['budget']:.0f} | {r['steps']} | {r['step_ms']:.0f} | {r['val_loss']:.4f} | "
                     f"{r['scene_exact']:.3f} | {r['count_acc']:.3f} | {r['shape_acc']:.3f} | {r['color_acc']:.3f} | "
                     f"{r['relation_acc']:.3f} | {r['fid'] or float('nan'):.2f} | "
                     f"{'' if cos is None else f'{cos:.3f}'} |")
    return "\n".join(lines) + f"\n\nTokenizer (val reconstruction): PSNR {result['tokenizer']['psnr']:.2f} dB.\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    arms = list(dict.fromkeys(r["arm"] for r in result["rows"]))
    for arm in arms:
        rows = sorted((r for r in result["rows"] if r["arm"] == arm), key=lambda r: r["budget"])
        axes[0].plot([r["budget"] for r in rows], [r["val_loss"] for r in rows], "o-", label=arm)
        axes[1].plot([r["budget"] for r in rows], [r["scene_exact"] for r in rows], "o-", label=arm)
        longest = rows[-1]
        seconds = [x["step"] * longest["step_ms"] / 1000 for x in longest["log"]]
        axes[2].plot(seconds, [x.get("denoise") or x["loss"] for x in longest["log"]], label=arm)
    axes[0].set_ylabel("held-out generator loss (lower is better)")
    axes[1].set_ylabel("exact scene match (higher is better)")
    axes[2].set_ylabel("training loss without the REPA term (longest budget)")
    for ax in axes:
        ax.set_xlabel("generator training wall-clock (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("REPA: convergence at equal wall-clock (Shapes scene graphs, KL latents)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="60,120", help="generator training seconds, comma-separated")
    ap.add_argument("--conditions", type=int, default=60, help="val graphs sampled (2 samples each)")
    ap.add_argument("--data-size", type=int, default=20000)
    ap.add_argument("--tokenizer-steps", type=int, default=500)
    ap.add_argument("--only", default="dit,dit_repa", help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/bench_repa")
    ap.add_argument("--out", default="benchmarks/results/repa.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.only.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    work = Path(args.work)
    result: dict = {"meta": {"args": vars(args), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                             "machine": platform.processor() or platform.machine(),
                             "repa": dataclasses.asdict(REPA_SECTION)}, "rows": []}
    t = time.perf_counter()
    tokenizer_dir, result["tokenizer"] = zoo.train_tokenizer(work, "kl", args.data_size, args.tokenizer_steps)
    print(f"tokenizer kl: {time.perf_counter() - t:.0f} s, val PSNR {result['tokenizer']['psnr']:.2f} dB", flush=True)
    # step times in interleaved rounds, so a change in the machine's load hits every arm alike
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(3):
        for name in names:
            cfg = row_recipe(work / "timing", name, 10, args)
            run = Run(cfg, progress=False)
            zoo.adopt_tokenizer(tokenizer_dir, run)
            times[name].append(measure_step(cfg, run))
    step_s = result["step_s"] = {n: statistics.median(v) for n, v in times.items()}
    print("seconds per training step:", {k: round(v, 4) for k, v in step_s.items()}, flush=True)
    for budget in (float(b) for b in args.budgets.split(",")):
        for name in names:
            result["rows"].append(train_row(work / f"budget_{budget:.0f}", name, tokenizer_dir, budget, step_s[name],
                                            args))
            write_json(args.out, result)  # keep what is done if a later row fails
    out = Path(args.out)
    write_json(out, result)
    write_text(out.with_suffix(".md"), table(result))
    plot(result, out.with_suffix(".png"))
    print(table(result))


if __name__ == "__main__":
    main()
