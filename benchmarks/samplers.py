"""Samplers: quality against the number of sampling steps (DDIM, Euler, Heun, DPM-Solver++(2M)), and
guidance intervals against full guidance.

Part 1, known answer (no training). Data: a 1D mixture of two Gaussians (weights .3/.7, means -1.5/1,
std .3/.5), whose noise and velocity predictions are closed forms (posterior over the components).
The probability-flow ODE's exact endpoint for each noise draw is computed once by RK4 with 1000 steps
(on the flow form of the ODE; DDPM's VP path is the same ODE in other coordinates: x_flow = x_vp (1 - t) / alpha
where (1 - t) / t = alpha / sigma). Samplers from noise.py with `steps` model evaluations: DDPM (linear betas,
T = 1000): DDIM vs DPM-Solver++(2M); flow matching: Euler vs Heun (2 steps - 1 evaluations) vs DPM-Solver++(2M).
Scores: RMS distance to the exact endpoints, and W1 of the samples to the data distribution (sorted
samples against the mixture's quantiles; the exact endpoints' W1 is the finite-sample floor).

Part 2, a small trained DiT on Shapes (benchmarks/generators.py's machinery: the default recipe's KL
tokenizer and scene-graph conditioner, the zoo's DiT, flow matching, trained for `--budget` seconds;
`--ddpm` trains a DDPM DiT too). The same trained model sampled with each method at each step count,
scored by the Shapes parser (exact scene match, attribute accuracies) and the probe Fréchet distance
(`fid`, its floor val vs test beside it); then guidance: none, full (cfg at every step) and only inside
an interval of the progress (Kynkäänniemi et al. 2024) at equal steps, with the sampler's wall time.

    python benchmarks/samplers.py [--steps 4,8,16,32,64] [--budget 180] [--conditions 60] [--ddpm]
                                  [--no-dit] [--work runs/bench_samplers] [--threads 1]

Writes benchmarks/results/samplers.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import generators as zoo  # noqa: E402

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.generators.noise import DDPM, FlowMatching, denoise  # noqa: E402

# ---------------------------------------------------------------- part 1: the known-answer mixture

WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
MEANS = torch.tensor([-1.5, 1.0], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5], dtype=torch.float64)


def posterior(x: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """E[data | x_t] and E[noise | x_t] for x_t = alpha data + sigma noise, x [B, 1]; alpha, sigma [B, 1] or floats."""
    var = alpha**2 * STDS**2 + sigma**2                                  # [B, K]
    centred = x - alpha * MEANS                                          # [B, K]
    log_p = torch.log(WEIGHTS) - 0.5 * centred**2 / var - 0.5 * torch.log(var)
    resp = log_p.softmax(-1)                                             # component posteriors [B, K]
    data = (resp * (MEANS + alpha * STDS**2 / var * centred)).sum(-1, keepdim=True)
    noise = (resp * (sigma / var * centred)).sum(-1, keepdim=True)
    return data, noise


def flow_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.to(x.dtype)[:, None]
    data, noise = posterior(x, 1 - t, t)
    return noise - data


def ddpm_epsilon(process: DDPM):
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = process.alpha_bar[t].to(x.dtype)[:, None]
        return posterior(x, abar.sqrt(), (1 - abar).sqrt())[1]
    return eps


def exact_endpoint(x: torch.Tensor, t_start: float, steps: int = 1000) -> torch.Tensor:
    """The flow ODE dx/dt = v from (x, t_start) to t = 0 by RK4: the reference every sampler approximates."""
    dt = -t_start / steps

    def tv(s: float) -> torch.Tensor:
        return torch.full((x.shape[0],), s, dtype=x.dtype)

    for i in range(steps):
        t = t_start + i * dt
        k1 = flow_velocity(x, tv(t))
        k2 = flow_velocity(x + 0.5 * dt * k1, tv(t + 0.5 * dt))
        k3 = flow_velocity(x + 0.5 * dt * k2, tv(t + 0.5 * dt))
        k4 = flow_velocity(x + dt * k3, tv(t + dt))
        x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def mixture_quantiles(u: torch.Tensor) -> torch.Tensor:
    """The mixture's inverse CDF at u [N] by bisection."""
    lo, hi = torch.full_like(u, -10.0), torch.full_like(u, 10.0)
    normal = torch.distributions.Normal(MEANS, STDS)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = (WEIGHTS * normal.cdf(mid[:, None])).sum(-1) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def w1(samples: torch.Tensor, quantiles: torch.Tensor) -> float:
    return (samples.flatten().sort().values - quantiles).abs().mean().item()


def known_answer(steps: list[int], n: int) -> dict:
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    quantiles = mixture_quantiles((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    ddpm = DDPM(schedule="linear")
    abar_T = float(ddpm.alpha_bar[-1])
    alpha_T, sigma_T = math.sqrt(abar_T), math.sqrt(1 - abar_T)
    t_star = sigma_T / (alpha_T + sigma_T)   # the flow time with the same signal-to-noise ratio
    t0 = time.perf_counter()
    exact = {"flow": exact_endpoint(noise, 1.0), "ddpm": exact_endpoint(noise * (1 - t_star) / alpha_T, t_star)}
    print(f"exact endpoints (RK4, 1000 steps) in {time.perf_counter() - t0:.1f} s; W1 floor "
          f"{w1(exact['flow'], quantiles):.4f} (flow), {w1(exact['ddpm'], quantiles):.4f} (ddpm)", flush=True)
    out = {"floor_w1": {k: w1(v, quantiles) for k, v in exact.items()}, "n": n, "rows": []}
    runs = [("ddpm", "ddim"), ("ddpm", "dpmpp_2m"), ("flow", "euler"), ("flow", "heun"), ("flow", "dpmpp_2m")]
    for process_name, method in runs:
        process, model = (ddpm, ddpm_epsilon(ddpm)) if process_name == "ddpm" else (FlowMatching(), flow_velocity)
        for k in steps:
            x = denoise(process, model, noise, k, method=method)
            row = {"process": process_name, "method": method, "steps": k, "nfe": 2 * k - 1 if method == "heun" else k,
                   "rms_to_exact": (x - exact[process_name]).pow(2).mean().sqrt().item(), "w1": w1(x, quantiles)}
            out["rows"].append(row)
            print(f"  {process_name} {method:9s} {k:3d} steps: rms {row['rms_to_exact']:.5f}  w1 {row['w1']:.4f}",
                  flush=True)
    return out


# ---------------------------------------------------------------- part 2: a trained DiT on Shapes

def trained_dit(work: Path, objective: str, budget: float, conditions: int, data_size: int, tokenizer_steps: int,
                tokenizer_dir: Path, fd_n: int):
    """The zoo's DiT (flow or DDPM) trained for `budget` seconds on the KL latents (cached in `work`)."""
    from latentforge.recipes import Run

    name = "dit" if objective == "flow" else "dit_ddpm"
    kind, section, options, _ = zoo.GENERATORS["dit"]
    zoo.GENERATORS[name] = (kind, {**section, "objective": objective}, options, [])
    evaluation = {"metrics": ["adherence", "fid"], "baselines": False, "n": fd_n}
    step_s = zoo.measured_step(work, name, tokenizer_dir, conditions, data_size, tokenizer_steps, evaluation)
    steps = max(50, int(budget / step_s))
    cfg = zoo.recipe(work, f"gen_{name}", kind, zoo.GENERATORS[name][1], steps, conditions, options, data_size,
                     tokenizer_steps, evaluation)
    run = Run(cfg, progress=True)
    zoo.adopt_tokenizer(tokenizer_dir, run)
    t = time.perf_counter()
    run.run(("generator",))
    print(f"  {name}: {steps} steps ({1000 * step_s:.0f} ms each) in {time.perf_counter() - t:.0f} s", flush=True)
    return cfg, steps


def score(cfg, options: dict, sample_changes: dict | None = None, baselines: bool = False, timed: bool = False) -> dict:
    """Sample and evaluate the trained run with these sampling options: parser adherence, probe FD
    (and, `timed`, the sampler's own wall time)."""
    from latentforge.recipes import Run

    sample = dataclasses.replace(cfg.sample, options=options, **(sample_changes or {}))
    cfg_k = dataclasses.replace(cfg, sample=sample, eval=dataclasses.replace(cfg.eval, baselines=baselines))
    run = Run(cfg_k, progress=False)
    metrics = run.run(("sample", "eval"))
    gen, dist = metrics["generator"], metrics.get("distribution", {})
    info = json.loads((run.dir / "sample_info.json").read_text())
    point = {"options": options, **(sample_changes or {}),
             **{k: gen.get(k) for k in zoo.ADHERENCE}, "fid": dist.get("model", {}).get("fid"),
             "samples_per_s": info["samples_per_s"]}
    if timed:
        point["sample_s"], point["sample_cpu_s"] = sampling_seconds(run, sample)
    if baselines:
        point["fid_floor"] = dist.get("baselines", {}).get("real (test split)", {}).get("fid")
    return point


def sampling_seconds(run, sample, n: int = 64, reps: int = 3) -> tuple[float, float]:
    """Median wall and CPU seconds of the generator's `sample` for n conditions (no decoding): what guidance
    costs. On a shared machine the CPU time of this one-thread process is the steadier of the two."""
    import statistics

    from latentforge.pipeline import Pipeline, condition_tensors, sampling_options

    pipe = Pipeline.from_run(run.dir, run.modality)
    rows = run.dataset.for_sampling({k: v[:n] for k, v in run.dataset.conditions(run.load_split("val")).items()})
    cond = condition_tensors(run.dataset, rows, pipe.generator)
    options = sampling_options(pipe.generator, sample)
    wall, cpu = [], []
    for _ in range(reps):
        gen = torch.Generator().manual_seed(0)
        context = pipe.generator.encode_condition(cond, generator=gen)
        t, c = time.perf_counter(), time.process_time()
        pipe.generator.sample(n, context, generator=gen, **options)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def dit_part(args) -> dict:
    work = Path(args.work)
    tok_dir, tok_metrics = zoo.train_tokenizer(work, "kl", args.data_size, args.tokenizer_steps)
    out: dict = {"tokenizer": tok_metrics, "models": {}}
    steps = [int(s) for s in args.dit_steps.split(",")]
    objectives = ["flow", "ddpm"] if args.ddpm else ["flow"]
    for objective in objectives:
        cfg, train_steps = trained_dit(work, objective, args.budget, args.conditions, args.data_size,
                                       args.tokenizer_steps, tok_dir, args.fd_n)
        methods = ["euler", "heun", "dpmpp_2m"] if objective == "flow" else ["ddim", "dpmpp_2m"]
        model = {"train_steps": train_steps, "cfg_scale": cfg.sample.cfg_scale, "steps_sweep": [], "guidance": []}
        first = True
        for method in methods:
            for k in steps:
                point = score(cfg, {"steps": k, "method": method}, baselines=first)
                first = False
                model["steps_sweep"].append(point)
                print(f"  {objective} {method:9s} {k:3d} steps: exact {point['scene_exact']:.3f} "
                      f"fid {point['fid']:.2f}", flush=True)
        # guidance at equal steps: none, full, interval (progress = 1 - t)
        options = {"steps": args.guidance_steps, "method": methods[0]}
        lo, hi = (float(v) for v in args.interval.split(","))
        for scale in [float(s) for s in args.scales.split(",")]:
            for label, changes in [("full", {"cfg_scale": scale}),
                                   ("interval", {"cfg_scale": scale, "guidance_interval": (lo, hi)})]:
                if scale == 1.0 and label == "interval":
                    continue
                point = {"guidance": label if scale != 1.0 else "none", **score(cfg, options, changes, timed=True)}
                model["guidance"].append(point)
                print(f"  {objective} cfg {scale} {point['guidance']:8s}: exact {point['scene_exact']:.3f} "
                      f"fid {point['fid']:.2f} sample {point['sample_s']:.2f} s ({point['sample_cpu_s']:.2f} s CPU)",
                      flush=True)
        out["models"][objective] = model
    return out


# ---------------------------------------------------------------- report

def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["known_answer"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, process in zip(axes, ("ddpm", "flow")):
        for method in dict.fromkeys(r["method"] for r in rows if r["process"] == process):
            pts = [r for r in rows if r["process"] == process and r["method"] == method]
            ax.loglog([r["nfe"] for r in pts], [r["rms_to_exact"] for r in pts], "o-", label=method)
        ax.set_title(f"{process}, 1D Gaussian mixture: error to the exact ODE endpoint", fontsize=9)
        ticks = sorted({r["nfe"] for r in rows if r["process"] == process and r["method"] != "heun"})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("model evaluations")
        ax.set_ylabel("RMS error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    ka = result["known_answer"]
    lines = ["# Samplers", "", f"{result['meta']['machine']}, torch {result['meta']['torch']}, "
             f"{result['meta']['date']}, {result['meta']['args']['threads']} thread(s).", "",
             "## Known answer: 1D Gaussian mixture, exact predictions", "",
             f"RMS error to the exact ODE endpoint (RK4, 1000 steps) / W1 to the data; W1 floor of the exact "
             f"endpoints (n = {ka['n']}): ddpm {ka['floor_w1']['ddpm']:.4f}, flow {ka['floor_w1']['flow']:.4f}.", ""]
    steps = sorted({r["steps"] for r in ka["rows"]})
    lines += ["| process | method | " + " | ".join(f"{k} steps" for k in steps) + " |",
              "|---|---|" + "---:|" * len(steps)]
    for process, method in dict.fromkeys((r["process"], r["method"]) for r in ka["rows"]):
        cells = [next(r for r in ka["rows"] if (r["process"], r["method"], r["steps"]) == (process, method, k))
                 for k in steps]
        lines.append(f"| {process} | {method} | " + " | ".join(f"{c['rms_to_exact']:.4f} / {c['w1']:.3f}"
                                                                for c in cells) + " |")
    lines.append("")
    for objective, model in result.get("dit", {}).get("models", {}).items():
        lines += [f"## Trained DiT ({objective}), Shapes, {model['train_steps']} training steps, "
                  f"cfg {model['cfg_scale']}", "",
                  "| method | steps | model calls | scene exact | count | colour | relation | probe FD |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for p in model["steps_sweep"]:
            k = p["options"]["steps"]
            nfe = 2 * k - 1 if p["options"]["method"] == "heun" else k
            lines.append(f"| {p['options']['method']} | {k} | {nfe} | {p['scene_exact']:.3f} | "
                         f"{p['count_acc']:.3f} | {p['color_acc']:.3f} | {p['relation_acc']:.3f} | {p['fid']:.2f} |")
        floor = model["steps_sweep"][0].get("fid_floor")
        if floor is not None:
            lines += ["", f"FD floor (val vs test images): {floor:.2f}."]
        lines += ["", f"Guidance at {result['meta']['args']['guidance_steps']} steps; sample s: the generator's "
                  "sample() for 64 conditions, median of 3, wall (CPU of this one-thread process).", "",
                  "| guidance | cfg | interval | scene exact | count | colour | relation | probe FD | sample s |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for p in model["guidance"]:
            lines.append(f"| {p['guidance']} | {p.get('cfg_scale', 1.0)} | {p.get('guidance_interval', '')} | "
                         f"{p['scene_exact']:.3f} | {p['count_acc']:.3f} | {p['color_acc']:.3f} | "
                         f"{p['relation_acc']:.3f} | {p['fid']:.2f} | {p['sample_s']:.2f} ({p['sample_cpu_s']:.2f}) |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="4,8,16,32,64", help="known-answer step counts")
    ap.add_argument("--n", type=int, default=20000, help="known-answer noise draws")
    ap.add_argument("--no-dit", action="store_true", help="only the known-answer part")
    ap.add_argument("--ddpm", action="store_true", help="also train and sweep a DDPM DiT")
    ap.add_argument("--dit-steps", default="4,8,16,32", help="trained DiT step counts")
    ap.add_argument("--budget", type=float, default=180.0, help="DiT training seconds")
    ap.add_argument("--conditions", type=int, default=60, help="val graphs sampled (2 samples each)")
    ap.add_argument("--fd-n", type=int, default=300, help="samples for the probe FD")
    ap.add_argument("--data-size", type=int, default=20000)
    ap.add_argument("--tokenizer-steps", type=int, default=500)
    ap.add_argument("--scales", default="1,2,4", help="guidance scales compared (1 = none)")
    ap.add_argument("--interval", default="0.15,0.8", help="guided progress interval lo,hi (progress = 1 - t)")
    ap.add_argument("--guidance-steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/bench_samplers")
    ap.add_argument("--out", default="benchmarks/results/samplers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"meta": {"args": vars(args), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                             "machine": platform.processor() or platform.machine()}}
    result["known_answer"] = known_answer([int(s) for s in args.steps.split(",")], args.n)
    out = Path(args.out)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    if not args.no_dit:
        result["dit"] = dit_part(args)
        write_json(out, result)
    write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
