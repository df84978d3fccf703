"""P12 LaVin-DiT at small scale: one joint DiT for ten image-to-image tasks on Shapes (16 px), the task
chosen in context by 1-3 example pairs; two-stream vs one-stream.

    .venv/bin/python benchmarks/lavin.py            # default run, ~10 min on one shared CPU thread
    .venv/bin/python benchmarks/lavin.py --scale 0.05   # smoke run

Writes benchmarks/results/lavin.{json,md,png}. Setup:

- Data (data/shapes_tasks.py): TRAIN_TASKS (recolour x2, move x3, flip x2, edge, segment, fill) on
  train-split scenes; HELD_OUT_TASKS (three combinations of seen steps, one unseen move offset) never
  trained. Every training example gets 1-3 pairs (drawn per example, the front padded and masked).
- Frames are pixel patches (4 x 4 x 3 = 48 values a token, a 4 x 4 grid a frame), not autoencoder
  latents: at 16 px a conv AE's reconstruction error on 1-px edge and outline maps would be of the
  size of the effects measured, and its training would eat a fifth of the budget that goes to the
  two DiTs. The model only patchifies frames, so latents of any channel count plug in unchanged.
- Models (generators/lavin.py, with its learned per-frame (row, column) table next to 3D RoPE: flips
  need absolute positions): two-stream (separate weights per stream, one joint attention) and
  one-stream (tied weights) at equal width, depth, FLOPs, steps and data order.
- Evaluation on val-split scenes (queries and pairs from scenes never trained on), the same queries
  in every condition: pixel MSE on [-1, 1] of the Euler sample (10 steps) and of the posterior mean
  (one Euler step from t = 1) with 0 (query only) / 1 / 2 / 3 correct pairs, 3 wrong-task pairs and
  3 shuffled pairs (the task's targets of other scenes), on seen tasks and held-out tasks. Baselines:
  copy the query; the mean training target; each task's mean target (knows the task, not the query).
  Differences are paired over queries (mean +- standard error).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from latentforge.data.shapes import ShapesConfig
from latentforge.data.shapes_tasks import HELD_OUT_TASKS, TRAIN_TASKS, TaskPairs
from latentforge.eval.cost import count_flops, parameter_count
from latentforge.generators.lavin import LaVinConfig, LaVinDiT
from latentforge.report.grids import save_image_rows

RESULTS = Path(__file__).parent / "results"


@dataclass
class LavinBenchConfig:
    size: int = 16
    train_scenes: int = 2000
    eval_scenes: int = 300
    batch: int = 32
    steps: int = 600             # per model
    lr: float = 3e-3             # AdamW, 50 warm-up steps, cosine to 10%
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    eval_queries: int = 80       # per group (seen / held-out), tasks balanced
    sample_steps: int = 10       # Euler steps of the evaluated samples (LaVin-DiT: 20; halved for the budget)
    seed: int = 0


# --- training -----------------------------------------------------------------------------------------


def train(cfg: LavinBenchConfig, model: LaVinDiT, bank: TaskPairs) -> dict:
    """AdamW on random batches of 1-3 pairs; the same data order for every model (seeded generator)."""
    data = torch.Generator().manual_seed(cfg.seed)
    noise = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = min(50, cfg.steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))))
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        b = bank.sample(cfg.batch, (1, 3), data)
        loss = model.loss(b["context"], b["pair_mask"], b["query"], b["target"], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            print(f"  step {step + 1}/{cfg.steps} loss {np.mean(losses[-50:]):.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    curve = [float(np.mean(losses[i:i + 50])) for i in range(0, len(losses), 50)]
    return {"loss_every_50": curve, "final_loss": float(np.mean(losses[-50:])),
            "train_step_s": (time.perf_counter() - start) / cfg.steps}


# --- evaluation ---------------------------------------------------------------------------------------------


def batch(cfg: LavinBenchConfig, bank: TaskPairs, tasks: torch.Tensor, pairs: int, context: str) -> dict:
    """The group's fixed queries (same generator seed: same queries, targets and pair scenes in every
    condition; pairs = 0 keeps the 1-pair batch and masks its pair out: the query-only null condition)."""
    b = bank.sample(len(tasks), max(pairs, 1), torch.Generator().manual_seed(cfg.seed + 7), max_pairs=3,
                    task=tasks, context=context)
    if pairs == 0:
        b["pair_mask"] = torch.zeros_like(b["pair_mask"])
    return b


def per_query_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).square().flatten(1).mean(1)                           # [B]


@torch.no_grad()
def predict(model: LaVinDiT, b: dict, steps: int, chunk: int = 64) -> torch.Tensor:
    outs = []
    for i in range(0, len(b["query"]), chunk):
        sl = slice(i, i + chunk)
        g = torch.Generator().manual_seed(1000 + i)
        outs.append(model.sample(b["context"][sl], b["pair_mask"][sl], b["query"][sl], steps=steps, generator=g))
    return torch.cat(outs)


def summary(err: torch.Tensor) -> dict:
    return {"mse": float(err.mean()), "se": float(err.std() / math.sqrt(len(err)))}


def paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a - b per query: mean, standard error, and the share of queries where a > b."""
    d = a - b
    return {"diff": float(d.mean()), "se": float(d.std() / math.sqrt(len(d))), "frac_positive": float((d > 0).float().mean())}


CONDITIONS = (("null", 0, "correct"), ("correct_1", 1, "correct"), ("correct_2", 2, "correct"),
              ("correct_3", 3, "correct"), ("wrong_3", 3, "wrong"), ("shuffled_3", 3, "shuffled"))


def evaluate(cfg: LavinBenchConfig, model: LaVinDiT, bank: TaskPairs, groups: dict[str, torch.Tensor]) -> dict:
    """Per group and condition, the MSE of the Euler sample (the primary answer) and of the one-step
    posterior mean; the claims as paired differences of the Euler errors over the same queries."""
    out: dict = {}
    euler = f"euler{cfg.sample_steps}"
    for group, tasks in groups.items():
        errs: dict = {euler: {}, "posterior_mean": {}}
        for name, pairs, context in CONDITIONS:
            b = batch(cfg, bank, tasks, pairs, context)
            for metric, steps in ((euler, cfg.sample_steps), ("posterior_mean", 1)):
                errs[metric][name] = per_query_mse(predict(model, b, steps), b["target"])
        res: dict = {metric: {name: summary(e) for name, e in by.items()} for metric, by in errs.items()}
        e = errs[euler]
        res["per_task_correct_3"] = {bank.tasks[t]: float(e["correct_3"][tasks == t].mean())
                                     for t in tasks.unique().tolist()}
        res["claims"] = {"1_minus_2_pairs": paired(e["correct_1"], e["correct_2"]),
                         "2_minus_3_pairs": paired(e["correct_2"], e["correct_3"]),
                         "1_minus_3_pairs": paired(e["correct_1"], e["correct_3"]),
                         "wrong_minus_correct_3": paired(e["wrong_3"], e["correct_3"]),
                         "shuffled_minus_correct_3": paired(e["shuffled_3"], e["correct_3"]),
                         "null_minus_correct_3": paired(e["null"], e["correct_3"])}
        res["_errors_correct_3"] = e["correct_3"]
        out[group] = res
        for metric in (euler, "posterior_mean"):
            print(f"  {group} {metric}: " + ", ".join(f"{k} {v['mse']:.4f}" for k, v in res[metric].items()),
                  flush=True)
    return out


def baselines(cfg: LavinBenchConfig, bank: TaskPairs, train_bank: TaskPairs, held_mean: torch.Tensor,
              groups: dict[str, torch.Tensor]) -> dict:
    task_mean = torch.cat([train_bank.mean_targets(), held_mean])                # [T, C, H, W], bank order
    overall = train_bank.targets.flatten(0, 1).mean(0)                            # [C, H, W]
    out = {}
    for group, tasks in groups.items():
        b = batch(cfg, bank, tasks, 1, "correct")
        out[group] = {"copy_query": summary(per_query_mse(b["query"], b["target"])),
                      "mean_target": summary(per_query_mse(overall.expand_as(b["target"]), b["target"])),
                      "task_mean_target": summary(per_query_mse(task_mean[tasks], b["target"]))}
    return out


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def picture(cfg: LavinBenchConfig, model: LaVinDiT, bank: TaskPairs, path: Path) -> None:
    """One row per task: the 3 pairs, the query, the 20-step sample, the target."""
    tasks = torch.arange(len(bank.tasks))
    b = batch(cfg, bank, tasks, 3, "correct")
    pred = predict(model, b, cfg.sample_steps)
    rows = [to_uint8(torch.cat([b["context"][i].flatten(0, 1), b["query"][i:i + 1], pred[i:i + 1],
                                b["target"][i:i + 1]])) for i in range(len(tasks))]
    labels = [("held-out " if name in HELD_OUT_TASKS else "") + name for name in bank.tasks]
    save_image_rows(rows, labels, path, title="in1 out1 in2 out2 in3 out3 | query | two-stream sample | target")


def call_flops(cfg: LavinBenchConfig, model: LaVinDiT, bank: TaskPairs) -> int:
    """FLOPs of one velocity evaluation of one example with 3 pairs."""
    b = batch(cfg, bank, torch.zeros(1, dtype=torch.long), 3, "correct")
    return count_flops(lambda: model(b["context"], b["pair_mask"], b["query"], b["target"], torch.ones(1)))


# --- the run ------------------------------------------------------------------------------------------------------


def run(cfg: LavinBenchConfig, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    shapes = ShapesConfig(size=cfg.size)
    train_bank = TaskPairs(shapes, "train", TRAIN_TASKS, cfg.train_scenes)
    held_train = TaskPairs(shapes, "train", HELD_OUT_TASKS, cfg.eval_scenes)     # for the task-mean baseline only
    bank = TaskPairs(shapes, "val", TRAIN_TASKS + HELD_OUT_TASKS, cfg.eval_scenes)
    seen, held = len(TRAIN_TASKS), len(HELD_OUT_TASKS)
    groups = {"seen": torch.arange(cfg.eval_queries) % seen,
              "held_out": seen + torch.arange(cfg.eval_queries) % held}
    result: dict = {"config": asdict(cfg), "train_tasks": list(TRAIN_TASKS), "held_out_tasks": list(HELD_OUT_TASKS),
                    "frames": "pixel patches 4x4x3 on 16 px images (no autoencoder)",
                    "baselines": baselines(cfg, bank, train_bank, held_train.mean_targets(), groups)}
    print("data", f"{time.perf_counter() - t0:.0f}s", json.dumps(result["baselines"]), flush=True)

    models = {}
    for variant, two_stream in (("two_stream", True), ("one_stream", False)):
        torch.manual_seed(cfg.seed)
        mcfg = LaVinConfig(size=cfg.size, patch=4, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                           mlp_ratio=cfg.mlp_ratio, two_stream=two_stream, sample_steps=cfg.sample_steps)
        model = LaVinDiT(mcfg)
        print(variant, f"{parameter_count(model)} parameters", flush=True)
        entry = {"params": parameter_count(model), "flops_per_model_call": call_flops(cfg, model, bank),
                 "model_config": asdict(mcfg),
                 "train": train(cfg, model, train_bank)}
        entry["eval"] = evaluate(cfg, model, bank, groups)
        result[variant] = entry
        models[variant] = model
        print(variant, f"done {time.perf_counter() - t0:.0f}s", flush=True)

    result["two_minus_one_stream"] = {
        g: paired(result["two_stream"]["eval"][g].pop("_errors_correct_3"),
                  result["one_stream"]["eval"][g].pop("_errors_correct_3")) for g in groups}
    out_dir.mkdir(parents=True, exist_ok=True)
    picture(cfg, models["two_stream"], bank, out_dir / "lavin.png")
    result["seconds"] = time.perf_counter() - t0
    return result


def markdown(r: dict) -> str:
    cfg = r["config"]
    euler = f"euler{cfg['sample_steps']}"
    lines = [f"# P12 LaVin-DiT (small): in-context tasks on Shapes {cfg['size']} px",
             "", f"{cfg['steps']} steps x batch {cfg['batch']} per model, {cfg['eval_queries']} val queries per group; "
             f"{r['frames']}; run took {r['seconds']:.0f}s.", "",
             f"Pixel MSE on [-1, 1] of the {cfg['sample_steps']}-step Euler sample (and, in brackets, of the one-step "
             "posterior mean); +- standard error over queries.", "",
             "| model | group | 0 pairs | 1 | 2 | 3 | 3 wrong-task | 3 shuffled |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for variant in ("two_stream", "one_stream"):
        for group, ev in r[variant]["eval"].items():
            cells = [f"{ev[euler][c]['mse']:.4f} +- {ev[euler][c]['se']:.4f} ({ev['posterior_mean'][c]['mse']:.4f})"
                     for c, _, _ in CONDITIONS]
            lines.append(f"| {variant} | {group} | " + " | ".join(cells) + " |")
    lines += ["", "| baseline | seen | held-out |", "|---|---:|---:|"]
    for name in ("copy_query", "mean_target", "task_mean_target"):
        lines.append(f"| {name} | {r['baselines']['seen'][name]['mse']:.4f} | "
                     f"{r['baselines']['held_out'][name]['mse']:.4f} |")
    lines += ["", "Paired differences of the Euler-sample MSE (mean +- se, share of queries > 0):", "",
              "| model | group | claim | diff | se | share > 0 |", "|---|---|---|---:|---:|---:|"]
    for variant in ("two_stream", "one_stream"):
        for group, ev in r[variant]["eval"].items():
            for claim, d in ev["claims"].items():
                lines.append(f"| {variant} | {group} | {claim} | {d['diff']:.4f} | {d['se']:.4f} | "
                             f"{d['frac_positive']:.2f} |")
    for group, d in r["two_minus_one_stream"].items():
        lines.append(f"| two - one stream | {group} | correct_3 MSE | {d['diff']:.4f} | {d['se']:.4f} | "
                     f"{d['frac_positive']:.2f} |")
    lines += ["", "Per-task Euler-sample MSE, two-stream, 3 correct pairs:", "", "| task | MSE |", "|---|---:|"]
    for group in ("seen", "held_out"):
        for task, v in r["two_stream"]["eval"][group]["per_task_correct_3"].items():
            lines.append(f"| {task} | {v:.4f} |")
    lines += ["", "| model | params | FLOPs / call (3 pairs) | loss every 50 steps | s / step |",
              "|---|---:|---:|---|---:|"]
    for variant in ("two_stream", "one_stream"):
        e = r[variant]
        curve = " ".join(f"{x:.3f}" for x in e["train"]["loss_every_50"])
        lines.append(f"| {variant} | {e['params']} | {e['flops_per_model_call']} | {curve} | "
                     f"{e['train']['train_step_s']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=LavinBenchConfig.steps)
    parser.add_argument("--seed", type=int, default=LavinBenchConfig.seed)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply steps and query counts (0.05: smoke)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = LavinBenchConfig(steps=args.steps, seed=args.seed)
    if args.scale != 1.0:
        for f in ("steps", "eval_queries"):
            setattr(cfg, f, max(14, int(getattr(cfg, f) * args.scale)))
        cfg.train_scenes = max(50, int(cfg.train_scenes * args.scale))
        cfg.eval_scenes = max(50, int(cfg.eval_scenes * args.scale))
    out_dir = Path(args.out_dir)
    result = run(cfg, out_dir)
    (out_dir / "lavin.json").write_text(json.dumps(result, indent=2))
    (out_dir / "lavin.md").write_text(markdown(result))
    print(markdown(result))
    print("wrote", out_dir / "lavin.json")


if __name__ == "__main__":
    main()
