"""Generator zoo benchmark: every generator family on the Shapes scene-graph task, equal wall-clock.

Setup: the default recipe's data (Shapes 32 px, up to 3 objects), its convolutional tokenizer with
three bottlenecks trained once each and shared by the generators that read them — VQ 256 codes
(autoregressive, axial, masked, masked + ENAT), residual VQ 2 x 256 (hierarchical), Gaussian KL
with 4 channels (DiT, MAR) — and the default recipe's scene-graph conditioner with P1's layout
stage for every generator. Each generator gets the same width (128) and depth (4 blocks) and the
same training wall-clock budget: its step time is measured first and its step count set to fill
the budget (so its learning-rate schedule completes). Then each samples two images for each of
the first `--conditions` validation graphs and is scored by the Shapes parser: exact scene match,
count/shape/color/size/relation accuracy, diversity, images/s; and whether it reads each attribute of
the graph at all: its held-out loss with every colour (shape, size) shifted by one, minus the true one.

Step sweeps (sampling time vs adherence, one trained model each, `generators.png`): masked with
steps 4/8/16/32, DiT (flow, Euler) with 8/16/32/64, MAR with 4/8/16/32. `--only dit_p20_masked,dit_p20_moe`
trains P20's variants of the DiT (deferred masking; MoE) under the same budget, for comparison with `dit`.

Side by side in the same process: our DiT against diffusers' `DiTTransformer2DModel` at the same
width, depth, heads, patch size and latent grid (class-conditional, as diffusers' DiT is): median
training-step time (forward, backward, AdamW) and sampling time per network evaluation.

    pip install -e ".[bench]"
    python benchmarks/generators.py [--budget 150] [--conditions 100] [--only dit,masked]
                                    [--speed-only] [--no-speed] [--no-sweep] [--threads 2]
                                    [--out benchmarks/results/generators.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentforge.atomic import write_json  # noqa: E402
from latentforge.config import from_dict, load_yaml  # noqa: E402
from latentforge.recipes import RecipeConfig, Run, link  # noqa: E402
from latentforge.registry import lookup  # noqa: E402

WIDTH, DEPTH, HEADS = 128, 4, 4

TOKENIZERS = {  # bottleneck of the default recipe's conv tokenizer, per latent kind
    "vq": {"name": "vq", "codebook_size": 256, "dim": 8},
    "rvq": {"name": "rvq", "depth": 2, "codebook_size": 256, "dim": 8, "codebook_update": "ema"},
    "kl": {"name": "gaussian", "dim": 8, "latent_channels": 4, "kl_weight": 1e-4},
    # VAR's image tokenizer: the same conv tokenizer, multi-scale residual codes on 1, 2, 4, 8 sides
    "multiscale": {"name": "multiscale", "codebook_size": 256, "dim": 8, "scales": [1, 2, 4, 8], "rank": 2},
}

# Kinds given as a whole tokenizer section rather than a bottleneck of the conv tokenizer (benchmarks/rae_dit.py
# adds P6's representation autoencoder here, with its pretrained encoder's path)
SECTIONS: dict[str, dict] = {}
LATENT_KIND_GENERATOR = {"vq": "autoregressive", "rvq": "hierarchical", "kl": "dit", "multiscale": "next_scale"}

# name: (tokenizer, generator section, default sampling options, step sweep)
GENERATORS: dict[str, tuple[str, dict, dict, list[int]]] = {
    "autoregressive": ("vq", {"name": "autoregressive", "dim": WIDTH, "depth": DEPTH, "heads": HEADS}, {}, []),
    "axial": ("vq", {"name": "axial", "dim": WIDTH, "upper_depth": DEPTH // 2, "row_depth": DEPTH // 2,
                     "heads": HEADS}, {}, []),
    "masked": ("vq", {"name": "masked", "dim": WIDTH, "depth": DEPTH, "heads": HEADS}, {"steps": 8},
               [4, 8, 16, 32]),
    "masked_enat": ("vq", {"name": "masked", "enat": True, "dim": WIDTH, "depth": DEPTH, "decoder_depth": 2,
                           "heads": HEADS}, {"steps": 8}, []),
    "hierarchical": ("rvq", {"name": "hierarchical", "dim": WIDTH, "depth": DEPTH, "heads": HEADS,
                             "depth_dim": WIDTH, "depth_layers": 2, "depth_heads": HEADS}, {}, []),
    "dit": ("kl", {"name": "dit", "dim": WIDTH, "depth": DEPTH, "heads": HEADS, "patch": 1}, {"steps": 32},
            [8, 16, 32, 64]),
    # P20 (MicroDiT): a one-block patch mixer, then 75% of the patches dropped in training; and the
    # expert-choice MoE MLPs in every other block. Same width, depth and wall-clock as "dit".
    "dit_p20_masked": ("kl", {"name": "dit", "dim": WIDTH, "depth": DEPTH, "heads": HEADS, "patch": 1,
                              "patch_mixer_depth": 1, "mask_ratio": 0.75}, {"steps": 32}, []),
    "dit_p20_moe": ("kl", {"name": "dit", "dim": WIDTH, "depth": DEPTH, "heads": HEADS, "patch": 1,
                           "moe_experts": 4}, {"steps": 32}, []),
    # VAR (P7's generator) against raster AR: one model call per scale (4) instead of per token (64).
    # Neither paints P1's layout map (next-scale has no input for it), so both run without layout.
    "next_scale": ("multiscale", {"name": "next_scale", "dim": WIDTH, "depth": DEPTH, "heads": HEADS,
                                  "conditioner": {"layout": False}}, {}, []),
    "autoregressive_no_layout": ("vq", {"name": "autoregressive", "dim": WIDTH, "depth": DEPTH, "heads": HEADS,
                                        "conditioner": {"layout": False}}, {}, []),
    "mar": ("kl", {"name": "mar", "dim": WIDTH, "depth": DEPTH, "heads": HEADS, "head_width": WIDTH,
                   "head_depth": 3}, {"steps": 8, "head_steps": 50}, [4, 8, 16, 32]),
}

ADHERENCE = ("scene_exact", "count_acc", "shape_acc", "color_acc", "size_acc", "relation_acc")


def base_recipe() -> dict:
    data = load_yaml(ROOT / "configs" / "shapes_sg2im.yaml")
    data.pop("quick", None)
    return data


def recipe(out: Path, name: str, kind: str, generator: dict | None, steps: int, conditions: int,
           options: dict, data_size: int, tokenizer_steps: int, eval_changes: dict | None = None) -> RecipeConfig:
    data = base_recipe()
    data.update(name=name, out_dir=str(out))
    data["data"]["train_size"] = data_size
    data["tokenizer_train"]["steps"] = tokenizer_steps
    data.setdefault("eval", {})["recon_images"] = 200  # the tokenizer is scored once, in train_tokenizer
    data["eval"].update(eval_changes or {})
    if kind in SECTIONS:
        data["tokenizer"] = copy.deepcopy(SECTIONS[kind])
    else:
        data["tokenizer"]["quantizer"] = copy.deepcopy(TOKENIZERS[kind])
    if generator is not None:
        changes = generator.get("conditioner", {})
        data["generator"] = {**generator, "conditioner": {**data["generator"]["conditioner"], **changes}}
        data["generator_train"]["steps"] = steps
        data["generator_train"]["warmup"] = min(50, steps // 10)
    data["sample"]["conditions"] = conditions
    data["sample"]["options"] = options
    return link(from_dict(RecipeConfig, data, path=""))


def train_tokenizer(out: Path, kind: str, data_size: int, tokenizer_steps: int) -> tuple[Path, dict]:
    """Data + tokenizer + encode for one bottleneck (a later call finds the stages done), and the
    tokenizer's val reconstruction metrics."""
    from latentforge.eval.run_metrics import tokenizer_metrics
    from latentforge.serialization import from_pretrained

    gen = LATENT_KIND_GENERATOR.get(kind, "dit")
    cfg = recipe(out, f"tok_{kind}", kind, {"name": gen}, 1, 1, {}, data_size, tokenizer_steps)
    run = Run(cfg)
    run.run(("data", "tokenizer", "encode"))
    tok = from_pretrained(run.dir / "tokenizer")
    metrics, _ = tokenizer_metrics(tok, run.modality, run.load_split("val")["images"][:500], torch.device("cpu"))
    return cfg.run_dir, metrics


def adopt_tokenizer(source: Path, run: Run) -> None:
    """Give a generator run the shared tokenizer's stages (same data and tokenizer sections, so the
    same fingerprints): it then trains only its generator."""
    run.dir.mkdir(parents=True, exist_ok=True)
    for part in ("data", "tokenizer"):
        if not (run.dir / part).exists():
            shutil.copytree(source / part, run.dir / part)
    src, dst = source / "latents.npz", run.dir / "latents.npz"
    # copy2 keeps the modification time, so an equal size and time mean this copy is there already
    # (step-time rounds adopt the same tokenizer many times; wide RAE latents are hundreds of MB)
    same = dst.exists() and (dst.stat().st_size, dst.stat().st_mtime_ns) == (src.stat().st_size, src.stat().st_mtime_ns)
    if not same:
        shutil.copy2(src, dst)
    done = run._stages()  # stages this run finished already stay finished
    done.update({s: run.fingerprint(s) for s in ("data", "tokenizer", "encode")})
    write_json(run.dir / "stages.json", done)


def measure_step(cfg: RecipeConfig, run: Run, reps: int = 6) -> float:
    """Median seconds of one training step of this generator at the recipe's batch size."""
    model = lookup("generator", cfg.generator.name)[1](cfg.generator)
    codes = run.load_latents("train")
    cond = run.condition("train", model)
    if model.latent_norm is not None:
        model.latent_norm.fit(codes)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    B = cfg.generator_train.batch_size
    times = []
    for i in range(reps + 2):
        idx = torch.randint(len(codes), (B,))
        t = time.perf_counter()
        loss = model.loss(codes[idx], model.encode_condition({k: v[idx] for k, v in cond.items()}))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def measured_step(out: Path, name: str, tokenizer_dir: Path, conditions: int, data_size: int, tokenizer_steps: int,
                  eval_changes: dict | None = None) -> float:
    """Median seconds of one training step of generator `name` on its tokenizer's latents."""
    kind, section, options, _ = GENERATORS[name]
    probe = recipe(out, f"gen_{name}", kind, section, 10, conditions, options, data_size, tokenizer_steps,
                   eval_changes)
    run = Run(probe, progress=False)
    adopt_tokenizer(tokenizer_dir, run)
    return measure_step(probe, run)


def generator_row(out: Path, name: str, tokenizer_dir: Path, budget: float, conditions: int, data_size: int,
                  tokenizer_steps: int, sweep_steps: bool = True, eval_changes: dict | None = None,
                  step_s: float | None = None) -> dict:
    """Train, sample and score one generator; `step_s`: its seconds per step, measured by the caller
    (e.g. interleaved with the rows it is compared with), else measured here."""
    kind, section, options, sweep = GENERATORS[name]
    sizes = (data_size, tokenizer_steps, eval_changes)
    if step_s is None:
        step_s = measured_step(out, name, tokenizer_dir, conditions, data_size, tokenizer_steps, eval_changes)
    steps = max(50, int(budget / step_s))
    cfg = recipe(out, f"gen_{name}", kind, section, steps, conditions, options, *sizes)
    run = Run(cfg, progress=True)
    adopt_tokenizer(tokenizer_dir, run)
    model = lookup("generator", cfg.generator.name)[1](cfg.generator)
    params = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    run.run(("generator",))
    train_s = time.perf_counter() - t
    row = {"generator": name, "tokenizer": kind, "params": params, "step_ms": 1000 * step_s, "steps": steps,
           "train_s": train_s, "sweep": [], "sensitivity": sensitivity(run)}
    print(f"  {name}: val loss {row['sensitivity']['val_loss']:.4f}; shifted colour / shape / size: "
          + " / ".join(f"{row['sensitivity'][a]:+.4f}" for a in ("colour", "shape", "size")) + " nats", flush=True)
    for steps_k in (sweep if sweep and sweep_steps else [None]):
        opts = dict(options) if steps_k is None else {**options, "steps": steps_k}
        cfg_k = dataclass_with_options(cfg, opts)
        run_k = Run(cfg_k, progress=False)
        metrics = run_k.run(("sample", "eval"))
        gen = metrics["generator"]
        info = json.loads((run_k.dir / "sample_info.json").read_text())
        dist = metrics.get("distribution", {})  # only when eval_changes ask for fid
        point = {"options": opts, **{k: gen.get(k) for k in (*ADHERENCE, "diversity", "unique_frac")},
                 "fid": dist.get("model", {}).get("fid"),
                 "fid_floor": dist.get("baselines", {}).get("real (test split)", {}).get("fid"),
                 "images_per_s": info["samples_per_s"]}
        row["sweep"].append(point)
        print(f"  {name} {opts}: exact {point['scene_exact']:.3f} rel {point['relation_acc']:.3f} "
              f"{point['images_per_s']:.1f} img/s", flush=True)
    default = next((p for p in row["sweep"] if p["options"] == options), row["sweep"][0])
    row.update({k: v for k, v in default.items() if k != "options"})
    return row


def sensitivity(run: Run, n: int = 500) -> dict[str, float]:
    """Held-out loss increase (nats) when the graphs' colours, shapes or sizes are shifted by one
    (eval/sensitivity.py): about 0 for an attribute the generator does not read."""
    from latentforge.eval.sensitivity import condition_sensitivity
    from latentforge.serialization import from_pretrained

    model = from_pretrained(run.dir / "generator")
    latents = run.load_latents("val")[:n]
    cond = {k: v[:n] for k, v in run.condition("val", model).items()}
    return condition_sensitivity(model, latents, cond)


def dataclass_with_options(cfg: RecipeConfig, options: dict) -> RecipeConfig:
    import dataclasses

    return dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, options=options))


# ---------------------------------------------------------------------------------- diffusers


def speed_vs_diffusers(grid: int = 8, channels: int = 4, batch: int = 32, reps: int = 10, bf16: bool = False) -> dict:
    """Our DiT vs diffusers' DiTTransformer2DModel, same width/depth/heads/patch, class-conditional;
    fp32, or both under bf16 autocast."""
    from diffusers import DiTTransformer2DModel

    from latentforge.conditioning.class_label import ClassConfig
    from latentforge.generators.diffusion import DiTConfig, DiTGenerator

    torch.manual_seed(0)
    ours = DiTGenerator(DiTConfig(grid=(grid, grid), channels=channels, dim=WIDTH, depth=DEPTH, heads=HEADS,
                                  patch=1, conditioner=ClassConfig(dim=WIDTH, num_classes=10), p_uncond=0.0,
                                  cross_attention=False))  # diffusers' DiT reads the class through adaLN only
    peer = DiTTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=WIDTH // HEADS, in_channels=channels,
                                 out_channels=channels, num_layers=DEPTH, sample_size=grid, patch_size=1,
                                 num_embeds_ada_norm=1000)
    z = torch.randn(batch, grid, grid, channels)
    labels = torch.randint(10, (batch,))
    t_int = torch.randint(1000, (batch,))

    def ours_train():
        return ours.loss(z, ours.encode_condition({"label": labels}))["loss"]

    def peer_train():
        x = z.permute(0, 3, 1, 2)
        out = peer(x + torch.randn_like(x), timestep=t_int, class_labels=labels).sample
        return (out - x).pow(2).mean()

    def ours_eval():
        ctx = ours.encode_condition({"label": labels})
        return ours.predict(z, torch.rand(batch), ctx)

    def peer_eval():
        return peer(z.permute(0, 3, 1, 2), timestep=t_int, class_labels=labels).sample

    opts = {m: torch.optim.AdamW(m.parameters(), 1e-4) for m in (ours, peer)}
    times: dict[str, list[float]] = {k: [] for k in ("ours_train", "peer_train", "ours_eval", "peer_eval")}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    for i in range(reps + 2):  # interleaved, so drift hits both alike
        for who, model, fn in (("ours", ours, ours_train), ("peer", peer, peer_train)):
            model.train()
            t = time.perf_counter()
            with autocast:
                loss = fn()
            loss.backward()
            opts[model].step()
            opts[model].zero_grad(set_to_none=True)
            if i >= 2:
                times[f"{who}_train"].append(time.perf_counter() - t)
        with torch.no_grad(), autocast:
            for who, model, fn in (("ours", ours, ours_eval), ("peer", peer, peer_eval)):
                model.eval()
                t = time.perf_counter()
                fn()
                if i >= 2:
                    times[f"{who}_eval"].append(time.perf_counter() - t)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    import diffusers

    return {"precision": "bf16" if bf16 else "fp32", "batch": batch, "grid": grid, "channels": channels,
            "diffusers": diffusers.__version__,
            "params_ours": sum(p.numel() for p in ours.parameters()),
            "params_peer": sum(p.numel() for p in peer.parameters()),
            **{f"{k}_ms": v for k, v in med.items()},
            "train_ratio": med["ours_train"] / med["peer_train"], "eval_ratio": med["ours_eval"] / med["peer_eval"]}


def p20_step_speed(grid: int = 16, channels: int = 4, width: int = 256, depth: int = 8, batch: int = 32,
                   reps: int = 6) -> dict:
    """P20's claim at a size where the backbone dominates: the training step of a plain DiT against
    the same DiT with a one-block patch mixer and 75% of the patches dropped (interleaved medians)."""
    from latentforge.generators.diffusion import DiTConfig, DiTGenerator

    torch.manual_seed(0)
    size = dict(grid=(grid, grid), channels=channels, dim=width, depth=depth, heads=width // 64, patch=1)
    models = {"plain": DiTGenerator(DiTConfig(**size)),
              "deferred_masking": DiTGenerator(DiTConfig(**size, patch_mixer_depth=1, mask_ratio=0.75)),
              "moe_4_experts": DiTGenerator(DiTConfig(**size, moe_experts=4))}
    opts = {k: torch.optim.AdamW(m.parameters(), 1e-4) for k, m in models.items()}
    z = torch.randn(batch, grid, grid, channels)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(reps + 1):
        for name, model in models.items():
            t = time.perf_counter()
            model.loss(z)["loss"].backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if i:
                times[name].append(time.perf_counter() - t)
    med = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {"size": {**size, "grid": [grid, grid], "batch": batch}, **{f"{k}_ms": v for k, v in med.items()},
            "masking_speedup": med["plain"] / med["deferred_masking"],
            "moe_slowdown": med["moe_4_experts"] / med["plain"]}


# ---------------------------------------------------------------------------------- plot


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        xs = [1000 / p["images_per_s"] for p in row["sweep"]]
        ys = [p["scene_exact"] for p in row["sweep"]]
        ax.plot(xs, ys, "o-" if len(xs) > 1 else "o", label=row["generator"])
        for p, x, y in zip(row["sweep"], xs, ys):
            if "steps" in p["options"] and len(row["sweep"]) > 1:
                ax.annotate(str(p["options"]["steps"]), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("sampling time per image (ms, log scale)")
    ax.set_ylabel("exact scene match")
    ax.set_title("Shapes scene graphs: adherence vs sampling time (labels: steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=150.0, help="generator training seconds each")
    ap.add_argument("--conditions", type=int, default=100, help="val graphs sampled (2 samples each)")
    ap.add_argument("--data-size", type=int, default=20000)
    ap.add_argument("--tokenizer-steps", type=int, default=500)
    ap.add_argument("--only", default=",".join(n for n in GENERATORS if not n.startswith(("dit_p20", "next_scale",
                                                                                          "autoregressive_no"))),
                    help=f"comma-separated, of {', '.join(GENERATORS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-only", action="store_true", help="only the diffusers DiT comparison")
    ap.add_argument("--no-speed", action="store_true", help="skip the diffusers DiT and P20 step-time checks")
    ap.add_argument("--no-sweep", action="store_true", help="sample each family at its default steps only")
    ap.add_argument("--work", default="runs/bench_generators")
    ap.add_argument("--out", default="benchmarks/results/generators.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.work)
    result: dict = {"meta": {"args": vars(args), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                             "machine": platform.processor() or platform.machine()}}
    from latentforge.train.precision import cpu_native_bf16

    result["diffusers_dit"] = []
    for bf16 in () if args.no_speed else (False, True) if cpu_native_bf16()[0] else (False,):
        speed = speed_vs_diffusers(bf16=bf16, reps=20)
        result["diffusers_dit"].append(speed)
        print(f"DiT vs diffusers ({speed['precision']}): train {speed['ours_train_ms']:.1f} / "
              f"{speed['peer_train_ms']:.1f} ms ({speed['train_ratio']:.2f}x), eval {speed['ours_eval_ms']:.1f} / "
              f"{speed['peer_eval_ms']:.1f} ms ({speed['eval_ratio']:.2f}x)", flush=True)
    p20 = result["p20_step_speed"] = None if args.no_speed else p20_step_speed()
    if p20 is not None:
        print(f"P20 at 16x16 tokens, width 256, depth 8: step {p20['plain_ms']:.0f} ms plain, "
          f"{p20['deferred_masking_ms']:.0f} ms with deferred masking ({p20['masking_speedup']:.2f}x faster), "
          f"{p20['moe_4_experts_ms']:.0f} ms with MoE ({p20['moe_slowdown']:.2f}x)", flush=True)
    if not args.speed_only:
        names = args.only.split(",")
        tokenizers, result["tokenizers"] = {}, {}
        for kind in dict.fromkeys(GENERATORS[n][0] for n in names):
            t = time.perf_counter()
            tokenizers[kind], metrics = train_tokenizer(out, kind, args.data_size, args.tokenizer_steps)
            result["tokenizers"][kind] = metrics
            print(f"tokenizer {kind}: ready in {time.perf_counter() - t:.0f} s, val PSNR {metrics['psnr']:.2f} dB",
                  flush=True)
        rows = []
        for name in names:
            rows.append(generator_row(out, name, tokenizers[GENERATORS[name][0]], args.budget, args.conditions,
                                      args.data_size, args.tokenizer_steps, not args.no_sweep))
            result["generators"] = rows
            write_json(args.out, result)  # keep what is done if a later generator fails
        plot(rows, Path(args.out).with_suffix(".png"))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
