"""The efficiency table (issue 19): every technique on its task, beside the plain model of the same run.

Tasks and the rows each brings (a technique's module trains its plain model and its variants in one
call, `efficiency_rows(quick)`, so every ratio is measured side by side):
- shapes scene graph (AR), benchmarks/scene_task.py: 8 x 8 Shapes codes given the scene graph, bits
  per token. This file: P15 RoPE x ALiBi positions and the staircase / int4 KV caches, P25 MatFormer
  (nested model, its extracted half-width submodel, speculative decoding with the quarter-width
  draft), P28 int8 weights and activations. benchmarks/distill.py: P28 knowledge distillation into a
  smaller generator. benchmarks/vib_prune.py: P14 VIB pruning and magnitude pruning (P28's
  structured pruning) to half the parameters.
- shapes colours (flow DiT), benchmarks/distill.py: P28 progressive distillation 32 -> 4 steps.
- shapes object count (ViT encoder), benchmarks/early_exit.py: P10 early exits with a gate.
- shapes in clutter (ViT classifier), benchmarks/token_drop.py: P32 token dropping.
- long grid, benchmarks/fit.py: P23 FIT, its local-only ablation and P30 hashed attention.

Columns: parameters, FLOPs of one inference call (torch's FlopCounterMode: matmuls, convolutions and
attention; int8 matmuls are not counted by it), peak bytes of the tensors that call creates, seconds
per training step, seconds per inference call (what the call is is named), and the task's quality
beside the plain model's. One thread; the machine is named in the JSON.
A plot of quality against inference time, one panel per task: benchmarks/results/efficiency.png.

    python benchmarks/efficiency.py [--only scene,distill,...] [--quick] [--threads 1]
    python benchmarks/efficiency.py --from-json benchmarks/results/efficiency.json   # redraw only

Writes benchmarks/results/efficiency.json, efficiency.md (the table) and efficiency.png.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kv_cache import teacher_forced  # noqa: E402
from scene_task import SceneTask, build_generator, load_task, sampler, train_generator, val_bits  # noqa: E402

from latentforge.atomic import atomic_path, write_json, write_text  # noqa: E402
from latentforge.eval.cost import CostRow, inference_cost, parameter_count  # noqa: E402
from latentforge.inference import quantize_int8, weight_bytes  # noqa: E402
from latentforge.serialization import read_json  # noqa: E402

TASK = "shapes scene graph (AR)"
NESTED = (0.25, 0.5, 1.0)


def _row(technique: str, paper: str, model, task: SceneTask, quality: float, plain: float, step_s, note: str = "",
         params: int | None = None, **sampling) -> CostRow:
    cost = inference_cost(sampler(model, task, 16, **sampling))
    params = parameter_count(model) if params is None else params
    return CostRow(TASK, technique, paper, params, cost["flops"], cost["peak_bytes"], step_s,
                   cost["infer_s"], "16 samples", "bits/token", quality, plain, False, note)


def scene_rows(quick: bool = False) -> list[CostRow]:
    """P15, P25 and P28-int8 rows on the scene task, beside the plain generator they modify."""
    task = load_task(400 if quick else 2000, 100 if quick else 500)
    steps = 20 if quick else 300
    plain = build_generator()
    plain_step = train_generator(plain, task, steps)
    base = val_bits(plain, task)
    rows = [_row("plain", "-", plain, task, base, base, plain_step, "learned positions, width 128, depth 4")]

    # P15: relative positions (trained), quantised KV caches (the plain model, read through the cache)
    relative = build_generator(position="rope_alibi")
    relative_step = train_generator(relative, task, steps)
    rows.append(_row("P15 RoPE x ALiBi positions", "P15", relative, task, val_bits(relative, task), base,
                     relative_step))
    n = 64 if quick else 200
    codes, cond = task.batch("val", torch.arange(n))
    with torch.no_grad():
        context = plain.encode_condition(cond)
        flat = plain.flat_codes(codes)
        full = teacher_forced(plain, flat, "full", context)
        for kind in ("staircase", "int4"):
            through = teacher_forced(plain, flat, kind, context)
            rows.append(_row(f"P15 KV cache {kind}", "P15", plain, task, through["bits_per_token"],
                             full["bits_per_token"], None,
                             f"cache {through['bytes_last'] / 1024:.0f} KiB vs {full['bytes_last'] / 1024:.0f} KiB full "
                             f"({n} val samples)", kv_cache=kind))

    # P25: nested FFNs trained jointly; extracted half width; speculative decoding (exact)
    nested = build_generator(nested_widths=NESTED)
    nested_step = train_generator(nested, task, steps)
    nested_bits = val_bits(nested, task)
    rows.append(_row("P25 MatFormer (full width)", "P25", nested, task, nested_bits, base, nested_step,
                     "3 widths trained per step"))
    half = nested.submodel(0.5)
    rows.append(_row("P25 MatFormer extracted h/2", "P25", half, task, val_bits(half, task), base, None,
                     "no training of its own"))
    rows.append(_row("P25 speculative (k=4, h/4 draft)", "P25", nested, task, nested_bits, base, None,
                     "exact: the full width's distribution", speculative=4, draft_width=0.25))

    # P28: int8 weights and per-row int8 activations (CPU inference)
    int8 = quantize_int8(copy.deepcopy(plain))
    rows.append(_row("P28 int8 (weights + activations)", "P28", int8, task, val_bits(int8, task), base, None,
                     f"weights {weight_bytes(int8) / 2**20:.2f} MiB vs {weight_bytes(plain) / 2**20:.2f}; "
                     "int8 matmuls are not in the FLOPs", params=parameter_count(plain)))
    return rows


SECTIONS = {
    "scene": ("efficiency", "scene_rows"),
    "distill": ("distill", "efficiency_rows"),
    "prune": ("vib_prune", "efficiency_rows"),
    "early_exit": ("early_exit", "efficiency_rows"),
    "token_drop": ("token_drop", "efficiency_rows"),
    "fit": ("fit", "efficiency_rows"),
}


def markdown(rows: list[CostRow]) -> str:
    head = ("| task | technique | params | GFLOPs / call | peak MiB | train s/step | infer s (call) | quality "
            "| plain | note |\n|---|---|---:|---:|---:|---:|---:|---|---:|---|\n")
    lines = []
    for r in rows:
        step = "–" if r.train_step_s is None else f"{r.train_step_s:.3f}"
        lines.append(f"| {r.task} | {r.technique} | {r.params / 1e6:.2f} M | {r.flops / 1e9:.2f} | "
                     f"{r.peak_bytes / 2**20:.1f} | {step} | {r.infer_s:.3f} ({r.infer_what}) | "
                     f"{r.metric} {r.quality:.4g} | {r.plain_quality:.4g} | {r.note} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[CostRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    tasks = list(dict.fromkeys(r.task for r in rows))
    cols = min(4, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 4.0 * nrows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, tasks):
        group = [r for r in rows if r.task == name]
        for i, r in enumerate(group):
            plain = r.technique == "plain"
            ax.scatter(r.infer_s, r.quality, marker="*" if plain else "o", s=160 if plain else 45,
                       color="black" if plain else f"C{i}", zorder=3, label=r.technique)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6, loc="best", framealpha=0.8)
        ax.set_title(name if len(name) < 48 else name[:45] + "...", fontsize=9)
        ax.set_xlabel(f"seconds per call ({group[0].infer_what})", fontsize=8)
        ax.set_ylabel(f"{group[0].metric} ({'higher' if group[0].higher_is_better else 'lower'} is better)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Quality against inference time; the star is the plain model of the same run", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="tiny budgets: checks that every section runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/efficiency")
    ap.add_argument("--from-json", default=None, help="redraw the table and plot of an earlier run's JSON")
    args = ap.parse_args()
    if args.from_json:
        rows = [CostRow(**r) for r in read_json(args.from_json)["rows"]]
        out = Path(args.out)
        write_text(out.with_suffix(".md"), markdown(rows))
        plot(rows, out.with_suffix(".png"))
        print(markdown(rows))
        return
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--only: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    torch.set_num_threads(args.threads)
    rows: list[CostRow] = []
    seconds = {}
    for name in names:
        module, function = SECTIONS[name]
        start = time.perf_counter()
        rows += getattr(importlib.import_module(module), function)(quick=args.quick)
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"date": time.strftime("%Y-%m-%d"), "threads": args.threads,
                                          "machine": platform.processor() or platform.machine(),
                                          "quick": args.quick, "seconds": seconds,
                                          "rows": [r.to_json() for r in rows]})
    write_text(out.with_suffix(".md"), markdown(rows))
    plot(rows, out.with_suffix(".png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
