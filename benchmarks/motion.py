"""Motion benchmark (P3 Mogo): RVQ levels, hierarchical vs masked at equal wall-clock, streaming at 2x.

    python benchmarks/motion.py [--budget 150] [--tokenizer-steps 300] [--data-size 2048]
                                [--out runs/bench/motion.json] [--threads 2]

Defaults take about 8 minutes on an idle 2-core CPU (tokenizer 1-2 min, two generators x 150 s, the
recipe's sample + eval stages three times, streaming, ~1 min). When other jobs share the cores, pass
`--threads 1`: two threads then wait on each other at every op (measured 4-5 s per generator step
instead of 0.13-0.2 s). The run folders sit beside the JSON
(`runs/bench/motion/`), so a second call with the same arguments reuses every trained stage and
only re-measures. Writes `--out` (JSON) and the same path with `.png`, and prints a summary.

Everything runs through the recipe of configs/motion_mogo.yaml (DeepMimic clips, 64-frame windows,
conv1d tokenizer with 4-level RVQ x 256 codes, class conditioner on the action, sampling with
CFG 1.5, 120 val conditions x 2 samples, eval on 256 val clips), scaled down by `--data-size`
(training windows) and `--tokenizer-steps`. The three claims of P3 in issue 13:

1. RVQ levels. MPJPE (metres) of the 256 val clips reconstructed from only the first k levels,
   k = 1..4 (`eval.run_metrics.prefix_metrics`: `tokenizer.decode(codes[..., :k])`; the RVQ was
   trained with quantizer dropout, so every prefix is a valid code). Claim: it falls with every level.

2. Hierarchical (Mogo) vs a masked baseline at equal wall-clock. Both share the tokenizer and the
   recipe's class conditioner; each one's training-step time is measured first (interleaved, in
   the trainer's precision), and its step count set to fill `--budget` seconds.
     * hierarchical: the recipe's generator (base 4 x 128 causal over time + a 2-block depth
       transformer over the 4 levels), trained with `prefix_dropout` (default 0.25; the recipe's is
       0) so that the same model can also be sampled with `levels_to_sample=1`: without it the base
       transformer has only seen inputs that sum all 4 levels and `draw` refuses L < 4 (see
       generators/hierarchical.py). It is scored at full depth and with 1 level (the 1-level prefix
       the masked baseline also decodes).
     * masked (level 0): MaskGIT (generators/masked.py, 4 x 128, 8 decoding steps) models ONE code
       per position, so it is trained on the level-0 codes `latents[..., 0]` and its draws decode as
       the 1-level prefix. This is WEAKER than MoMask, which adds a residual transformer that
       predicts levels 1..Q; the comparison that is fair in what is decoded is hierarchical with
       `levels_to_sample=1` vs masked. The recipe's `link()` refuses a single-level generator on
       RVQ latents, so a thin adapter registered in this script (`masked_level0`: MaskedGenerator
       whose loss reads `z[..., 0]` and whose draws carry a level axis of 1) lets it run through the
       same stages; its saved folder only loads in a process that imported this script.
   Each is scored by the recipe's own eval stage (metrics.json): probe-FID / KID / precision-recall
   of 256 fresh samples against the 256 val clips (the in-house motion probe's features, with the
   real-vs-real floor, val vs test, and the trivial baselines: mean pose, per-frame Gaussians,
   training copies), the motion judge (action accuracy by the probe, multimodality, foot skating,
   jerk, bone-length drift, each beside the real clips'), plus the probe-feature diversity of the
   samples (`motion_metrics.diversity`, 300 pairs) computed here. All seeded (training seed 0,
   sampling seed 0); the step counts depend on the measured step time, which the JSON records.

3. Streaming at 2x length. The hierarchical generator draws 2 x 16 latent steps (128 frames) with
   its sliding window (`length=32`, `window_stride=1`) for the cyclic actions walk and run. Decoding:
   the conv1d decoder is fully convolutional and would accept any length, but its GroupNorms take
   statistics over the whole time axis and its receptive field crosses the middle, so decoding the
   32 steps at once is not what it was trained on and changes the first half of the clip. The 2x
   clip is therefore decoded in training-length chunks of 16 latent steps (64 frames) whose features
   are concatenated before the positions are integrated (the root path is a running sum of velocities,
   so it stays continuous); the whole-sequence decode is reported beside it. Checked:
   (a) periodicity: `data.motion.gait_frequency` of frames 0-63 vs 64-127, per clip, beside the same
       on real 128-frame windows of the clip (the floor) and the spread between different samples;
   (b) foot-skating ratio of the streamed frames 64-127 within 1.5x of the same model's
       training-length samples (both on 64-frame windows: the metric's ground is each clip's lowest
       foot, which sits lower over 128 frames and lowers the ratio by itself; the whole-clip number
       is in the JSON too);
   (c) the prefix never changes: the codes of `sample(..., length=32)[:, :16]` equal those of
       `sample(...)` for the same seed (asserted), and so do the decoded first 64 frames.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators import adopt_tokenizer  # noqa: E402  (benchmarks/ is the script's folder)

from latentforge.atomic import write_json  # noqa: E402
from latentforge.config import from_dict, load_yaml  # noqa: E402
from latentforge.generators.guidance import Guidance  # noqa: E402
from latentforge.generators.masked import MaskedConfig, MaskedGenerator  # noqa: E402
from latentforge.pipeline import condition_tensors  # noqa: E402
from latentforge.recipes import RecipeConfig, Run, link  # noqa: E402
from latentforge.registry import lookup, register  # noqa: E402
from latentforge.train.precision import resolve_precision  # noqa: E402
from latentforge.train.trainer import build_optimizer  # noqa: E402

CYCLIC = ("walk", "run")      # actions for the streaming check
STREAM_CLIPS = 24             # 2x clips per cyclic action


# ---------------------------------------------------------------------------------- masked on level 0

@dataclass
class MaskedLevel0Config(MaskedConfig):
    """MaskGIT over the coarsest level of residual codes (the rest of the levels are not modelled)."""

    residual = True               # reads RVQ latents [B, T, Q], so `link()` accepts it
    name: str = "masked_level0"
    levels: int = 1               # Q of the latents it reads (set by link); it models level 0 only


@register("generator", "masked_level0", MaskedLevel0Config)
class MaskedLevel0Generator(MaskedGenerator):
    """MaskedGenerator on `z[..., 0]`; draws [n, T, 1], which the RVQ decodes as the 1-level prefix."""

    def loss(self, z, context=None, *, mask=None):
        if z.dim() == len(self.config.grid) + 2:
            z = z[..., 0]
        return super().loss(z, context, mask=mask)

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, steps: int = 8,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             choice_temperature: float = 4.5, reuse: bool = True) -> torch.Tensor:
        """Level-0 code grids [n, *grid, 1] in `steps` parallel decoding steps (MaskGIT)."""
        codes = super().draw(guidance, generator=generator, steps=steps, temperature=temperature, top_k=top_k,
                             top_p=top_p, choice_temperature=choice_temperature, reuse=reuse)
        return codes[..., None]


# ---------------------------------------------------------------------------------- recipes

def base_recipe() -> dict:
    data = load_yaml(ROOT / "configs" / "motion_mogo.yaml")
    data.pop("quick", None)
    return data


def generator_sections(prefix_dropout: float) -> dict[str, tuple[dict, dict]]:
    """name -> (generator section without its conditioner, sampling options)."""
    gen = base_recipe()["generator"]
    hier = {k: v for k, v in gen.items() if k != "conditioner"}
    masked = {"name": "masked_level0", "dim": gen["dim"], "depth": gen["depth"], "heads": gen["heads"]}
    return {"hierarchical": ({**hier, "prefix_dropout": prefix_dropout}, {}),
            "masked_level0": (masked, {"steps": 8})}


def recipe(work: Path, name: str, generator: dict, steps: int, options: dict, data_size: int,
           tokenizer_steps: int) -> RecipeConfig:
    data = base_recipe()
    data.update(name=name, out_dir=str(work))
    data["data"]["train_size"] = data_size
    data["tokenizer_train"]["steps"] = tokenizer_steps
    data["tokenizer_train"]["warmup"] = min(data["tokenizer_train"]["warmup"], max(1, tokenizer_steps // 10))
    data["generator"] = {**generator, "conditioner": data["generator"]["conditioner"]}
    data["generator_train"]["steps"] = steps
    data["generator_train"]["warmup"] = min(data["generator_train"]["warmup"], max(1, steps // 10))
    data["sample"]["options"] = options
    return link(from_dict(RecipeConfig, data, path=""))


def with_options(cfg: RecipeConfig, options: dict) -> RecipeConfig:
    return dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, options=options))


def train_tokenizer(work: Path, data_size: int, tokenizer_steps: int) -> tuple[Path, dict]:
    """Data + tokenizer + encode (a later call finds the stages done), and the val reconstruction
    metrics, with MPJPE by decoded level prefix (`mpjpe_by_levels`, via prefix_metrics)."""
    from latentforge.eval.run_metrics import tokenizer_metrics
    from latentforge.serialization import from_pretrained

    gen, opts = generator_sections(0.0)["hierarchical"]
    cfg = recipe(work, f"tok_n{data_size}_s{tokenizer_steps}", gen, 1, opts, data_size, tokenizer_steps)
    run = Run(cfg)
    t = time.perf_counter()
    run.run(("data", "tokenizer", "encode"))
    seconds = time.perf_counter() - t
    tok = from_pretrained(run.dir / "tokenizer")
    val = run.dataset.examples(run.load_split("val"))[: cfg.eval.recon_images]
    metrics, _ = tokenizer_metrics(tok, run.modality, val, torch.device("cpu"))
    metrics["seconds_this_call"] = seconds
    return cfg.run_dir, metrics


# ---------------------------------------------------------------------------------- equal wall-clock

def measure_steps(cfgs: dict[str, RecipeConfig], run: Run, reps: int = 8) -> dict[str, float]:
    """Median seconds of one training step of each generator at the recipe's batch size, in the
    trainer's precision with its optimizer (forward + backward + clip + fused AdamW), interleaved
    so that load from other processes hits every family alike."""
    codes = run.load_latents("train")
    train = run.load_split("train")
    models, opts, conds = {}, {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        models[name] = lookup("generator", cfg.generator.name)[1](cfg.generator).train()
        opts[name] = build_optimizer(models[name], cfg.generator_train)  # the trainer's (fused) AdamW
        conds[name] = condition_tensors(run.dataset, train, models[name])
    precision = resolve_precision(next(iter(cfgs.values())).generator_train.precision, "cpu")
    B = next(iter(cfgs.values())).generator_train.batch_size
    times: dict[str, list[float]] = {k: [] for k in cfgs}
    for i in range(reps + 2):
        for name, model in models.items():
            idx = torch.randint(len(codes), (B,))
            t = time.perf_counter()
            with precision.autocast("cpu"):
                loss = model.loss(codes[idx], model.encode_condition({k: v[idx] for k, v in conds[name].items()}))
            loss["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def planned_steps(work: Path, names: list[str], tok_dir: Path, args) -> dict[str, dict]:
    """Steps per generator for `--budget` seconds: measured once, then kept in `plan_<tag>.json`, so a
    re-run with the same arguments finds the recipe's generator stages done instead of retraining."""
    tag = f"n{args.data_size}_s{args.tokenizer_steps}_b{args.budget:g}_pd{args.prefix_dropout:g}"
    path = work / f"plan_{tag}.json"
    if path.exists():
        plan = json.loads(path.read_text())
        if all(n in plan for n in names):
            print(f"step plan from {path} (delete it to re-measure)", flush=True)
            return plan
    for n in names:  # generator runs trained for another plan's step counts would not resume: start afresh
        shutil.rmtree(work / f"{n}_{tag}", ignore_errors=True)
    sections = generator_sections(args.prefix_dropout)
    cfgs = {n: recipe(work, f"{n}_{tag}", sections[n][0], 10, sections[n][1], args.data_size,
                      args.tokenizer_steps) for n in names}
    scratch = Run(next(iter(cfgs.values())), progress=False)
    adopt_tokenizer(tok_dir, scratch)
    step_s = measure_steps(cfgs, scratch)
    plan = {n: {"run": f"{n}_{tag}", "step_s": s, "steps": max(50, int(args.budget / s))} for n, s in step_s.items()}
    write_json(path, plan)
    return plan


# ---------------------------------------------------------------------------------- generators

def probe_diversity(run: Run, samples: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Diversity (Guo et al.: mean probe-feature distance of 300 random pairs), samples and real val."""
    from latentforge.eval.motion_probe import dataset_probe
    from latentforge.modalities.motion_metrics import diversity

    probe = dataset_probe(run.dataset, progress=False)
    return {"probe_diversity": diversity(probe.features(samples).numpy(), seed=0),
            "real_probe_diversity": diversity(probe.features(real).numpy(), seed=0)}


JUDGE_KEYS = ("action_acc", "real_action_acc", "multimodality", "real_multimodality", "skating_ratio",
              "real_skating_ratio", "jerk", "real_jerk", "bone_length_error", "real_bone_length_error",
              "diversity", "unique_frac", "val_loss", "bits_per_token", "bits_per_position", "samples_per_s")
DIST_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "nearest_train_ratio")


def score(run: Run, cfg: RecipeConfig, label: str) -> tuple[dict, dict]:
    """The recipe's sample + eval stages for `cfg`'s sampling options -> the benchmark's row."""
    r = Run(cfg, progress=False)
    metrics = r.run(("sample", "eval"))
    with np.load(r.dir / "samples.npz") as f:
        samples = f["samples"]
    real = run.dataset.examples(r.load_split("val"))
    gen, dist = metrics["generator"], metrics["distribution"]
    row = {"model": label, "options": cfg.sample.options,
           **{k: gen[k] for k in JUDGE_KEYS if k in gen},
           **{k: dist["model"][k] for k in DIST_KEYS if k in dist["model"]},
           **probe_diversity(r, samples, real), "n_samples": gen.get("n_samples")}
    return row, metrics


def train_generator(work: Path, name: str, plan: dict, tok_dir: Path, args) -> tuple[Run, RecipeConfig, dict]:
    section, options = generator_sections(args.prefix_dropout)[name]
    cfg = recipe(work, plan["run"], section, plan["steps"], options, args.data_size, args.tokenizer_steps)
    run = Run(cfg, progress=True)
    adopt_tokenizer(tok_dir, run)
    model = lookup("generator", cfg.generator.name)[1](cfg.generator)
    t = time.perf_counter()
    run.run(("generator",))
    info = {"generator": name, "params": sum(p.numel() for p in model.parameters()), "step_ms": 1000 * plan["step_s"],
            "steps": plan["steps"], "train_s_this_call": time.perf_counter() - t}
    log = run.dir / "generator" / "train" / "log.jsonl"
    if log.exists():  # the trainer's own timing, also when the stage was done in an earlier call
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "sec_per_step" in r]
        last = {r["step"]: r for r in rows}  # a resumed run logs some steps twice: keep the last
        steps = sorted(last)
        info["train_s_logged"] = sum(last[b]["sec_per_step"] * (b - a) for a, b in zip([0, *steps], steps))
        info["final_train_loss"] = last[steps[-1]].get("loss") if steps else None
    return run, cfg, info


# ---------------------------------------------------------------------------------- streaming

@torch.no_grad()
def streaming(run: Run, cfg: RecipeConfig, seed: int = 0) -> dict:
    """2x-length clips of the cyclic actions: periodicity, foot skating vs 1x, prefix unchanged."""
    from latentforge.data.motion import gait_frequency
    from latentforge.eval.motion_probe import dataset_probe
    from latentforge.modalities.motion_metrics import foot_skating_ratio, jerk

    pipe = run.pipeline()
    gen, tok, modality, skeleton = pipe.generator, pipe.tokenizer, run.modality, run.dataset.skeleton
    probe = dataset_probe(run.dataset, progress=False)
    T = cfg.generator.grid[0]
    frames = modality.window
    names = list(run.dataset.class_names)
    val = run.load_split("val")
    real_all = run.dataset.examples(val)
    opts = {"cfg_scale": cfg.sample.cfg_scale, "temperature": cfg.sample.temperature}
    out: dict = {"latent_length": T, "frames": frames, "clips_per_action": STREAM_CLIPS, "window_stride": 1,
                 "sampling": opts, "decode": "chunks of the training length (16 latent steps = 64 frames)",
                 "actions": {}}

    def draw(label: int, length: int | None) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + label)
        ctx = gen.encode_condition({"label": torch.full((STREAM_CLIPS,), label, dtype=torch.long)}, generator=g)
        return gen.sample(STREAM_CLIPS, ctx, generator=g, length=length, window_stride=1, **opts)

    def decode_chunks(z: torch.Tensor) -> np.ndarray:
        feats = [tok.decode(z[:, i:i + T]) for i in range(0, z.shape[1], T)]   # each [n, 64, F]
        return modality.from_model(torch.cat(feats, dim=1))                    # [n, 64 k, J, 3]

    # the floor of the periodicity check: real 128-frame windows of the same clips, halves compared
    long_cfg = dataclasses.replace(run.dataset.config, window=2 * frames, clips=CYCLIC, val_size=2 * STREAM_CLIPS)
    long_real = type(run.dataset)(long_cfg).split("val")
    for action in CYCLIC:
        if action not in names:
            continue
        real2 = long_real["motion"][long_real["label"] == CYCLIC.index(action)]
        r1, r2 = gait_frequency(real2[:, :frames], skeleton), gait_frequency(real2[:, frames:], skeleton)
        label = names.index(action)
        t = time.perf_counter()
        z1 = draw(label, None)                 # [n, T, Q]
        t1 = time.perf_counter() - t
        t = time.perf_counter()
        z2 = draw(label, 2 * T)                # [n, 2T, Q]
        t2 = time.perf_counter() - t
        assert torch.equal(z2[:, :T], z1), "streaming changed an already generated prefix"
        one = decode_chunks(z1)                                         # [n, 64, J, 3]
        two = decode_chunks(z2)                                         # [n, 128, J, 3]
        whole = modality.from_model(tok.decode_latents(tok.quantizer.lookup(z2)))  # the 32 steps at once
        prefix_diff = float(np.abs(two[:, :frames] - one).max())
        assert prefix_diff < 1e-5, f"decoded prefix changed by {prefix_diff}"
        real = real_all[val["label"] == label]
        first, second = gait_frequency(two[:, :frames], skeleton), gait_frequency(two[:, frames:], skeleton)
        w1, w2 = gait_frequency(whole[:, :frames], skeleton), gait_frequency(whole[:, frames:], skeleton)
        f1x, freal = gait_frequency(one, skeleton), gait_frequency(real, skeleton)
        step = np.linalg.norm(np.diff(two, axis=1), axis=-1).mean(-1)   # [n, 127] mean joint displacement per frame
        seam = float(step[:, frames - 1].mean() / np.median(step))
        # each clip's ground is its lowest foot over all its frames: over 128 frames it sits lower
        # than over 64, which lowers the ratio by itself; so the windows of 64 frames are compared
        skate1, skate_second = foot_skating_ratio(one, skeleton), foot_skating_ratio(two[:, frames:], skeleton)
        row = {
            "codes_prefix_equal": True, "decoded_prefix_max_abs_diff_m": prefix_diff,
            "seconds_1x": t1, "seconds_2x": t2,
            "gait_hz_first_half": float(np.median(first)), "gait_hz_second_half": float(np.median(second)),
            "gait_hz_abs_diff_median": float(np.median(np.abs(first - second))),
            "gait_hz_halves_within_0.15": float(np.mean(np.abs(first - second) <= 0.15)),
            # the spread between different clips of the action (first halves, each against the next clip's)
            "gait_hz_between_clips_abs_diff_median": float(np.median(np.abs(first - np.roll(first, 1)))),
            "gait_hz_1x_samples": float(np.median(f1x)), "gait_hz_real": float(np.median(freal)),
            "real_2x_gait_hz_halves": [float(np.median(r1)), float(np.median(r2))],
            "real_2x_gait_hz_abs_diff_median": float(np.median(np.abs(r1 - r2))),
            "real_2x_gait_hz_halves_within_0.15": float(np.mean(np.abs(r1 - r2) <= 0.15)),
            "skating_ratio_1x": skate1, "skating_ratio_2x_second_half": skate_second,
            "skating_ratio_2x_windows": (foot_skating_ratio(two[:, :frames], skeleton) + skate_second) / 2,
            "skating_ratio_2x_whole_clip": foot_skating_ratio(two, skeleton),
            "second_half_over_1x": skate_second / skate1 if skate1 > 0 else float("inf"),
            "real_skating_ratio": foot_skating_ratio(real, skeleton),
            "jerk_2x": jerk(two, skeleton.fps), "jerk_1x": jerk(one, skeleton.fps), "real_jerk": jerk(real, skeleton.fps),
            "action_acc_1x": float((probe.predict(one).numpy() == label).mean()),
            "action_acc_2x_first_half": float((probe.predict(two[:, :frames]).numpy() == label).mean()),
            "action_acc_2x_second_half": float((probe.predict(two[:, frames:]).numpy() == label).mean()),
            "seam_step_over_median_step": seam,
            "whole_decode": {"gait_hz_first_half": float(np.median(w1)), "gait_hz_second_half": float(np.median(w2)),
                             "skating_ratio_2x_second_half": foot_skating_ratio(whole[:, frames:], skeleton),
                             "first_half_mpjpe_vs_1x_decode_m": float(np.linalg.norm(whole[:, :frames] - one, axis=-1).mean())},
            "per_clip_hz": {"first": first.tolist(), "second": second.tolist()},
            "real_per_clip_hz": {"first": r1.tolist(), "second": r2.tolist()},
        }
        out["actions"][action] = row
    # the claim on the streamed part alone (frames 64-127; frames 0-63 are the 1x samples themselves)
    skate2 = np.mean([r["skating_ratio_2x_second_half"] for r in out["actions"].values()])
    skate1 = np.mean([r["skating_ratio_1x"] for r in out["actions"].values()])
    out["skating_ratio_2x_second_half"], out["skating_ratio_1x"] = float(skate2), float(skate1)
    out["skating_within_1.5x"] = bool(skate2 <= 1.5 * skate1)
    return out


# ---------------------------------------------------------------------------------- plot

def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    levels = result["tokenizer"]["mpjpe_by_levels"]
    ax.plot(range(1, len(levels) + 1), [1000 * v for v in levels], "o-")
    for k, v in enumerate(levels, 1):
        ax.annotate(f"{1000 * v:.0f}", (k, 1000 * v), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xticks(range(1, len(levels) + 1))
    ax.set_xlabel("RVQ levels decoded (prefix k)")
    ax.set_ylabel("val MPJPE (mm)")
    ax.set_title("tokenizer: reconstruction error by level")
    ax.grid(alpha=0.3)

    rows = result["generators"]
    base = result["distribution_baselines"]
    names = [r["model"] for r in rows] + list(base)
    fids = [r["fid"] for r in rows] + [base[b]["fid"] for b in base]
    colours = ["tab:blue"] * len(rows) + ["tab:green"] + ["tab:grey"] * (len(base) - 1)
    ax = axes[0, 1]
    ax.bar(range(len(names)), fids, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("probe-FID vs val (log)")
    ax.set_title("probe-FID: models (blue), floor (green), trivial (grey)")
    for i, v in enumerate(fids):
        ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)

    ax = axes[1, 0]
    accs = [r["action_acc"] for r in rows]
    ax.bar(range(len(rows)), accs, color="tab:blue")
    floor = rows[0].get("real_action_acc")
    if floor is not None:
        ax.axhline(floor, color="tab:green", ls="--", label=f"real clips {floor:.2f}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=15, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("action accuracy (probe)")
    ax.set_title(f"action accuracy at equal wall-clock ({result['meta']['args']['budget']:g} s)")
    for i, v in enumerate(accs):
        ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)

    ax = axes[1, 1]
    s = result["streaming"]
    for action, row in s["actions"].items():
        ax.scatter(row["per_clip_hz"]["first"], row["per_clip_hz"]["second"], s=14,
                   label=f"{action}: skating, frames 64-127 {row['skating_ratio_2x_second_half']:.3f} / 1x "
                         f"{row['skating_ratio_1x']:.3f}")
    for action, row in s["actions"].items():
        ax.scatter(row["real_per_clip_hz"]["first"], row["real_per_clip_hz"]["second"], s=10, marker="x",
                   color="grey", label="real 128-frame clips" if action == CYCLIC[0] else None)
    lim = [0.3, 3.5]
    ax.plot(lim, lim, "k:", lw=1)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_xlabel("gait frequency, frames 0-63 (Hz)")
    ax.set_ylabel("gait frequency, frames 64-127 (Hz)")
    ax.set_title("streaming to 2x length: periodicity per clip")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=150.0, help="generator training seconds, each family")
    ap.add_argument("--tokenizer-steps", type=int, default=300)
    ap.add_argument("--data-size", type=int, default=2048, help="training windows")
    ap.add_argument("--prefix-dropout", type=float, default=0.25,
                    help="hierarchical training; > 0 lets it be sampled with levels_to_sample=1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/motion.json", help="JSON; the PNG and the run folders sit beside it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = out.with_suffix("")
    t_all = time.perf_counter()
    from latentforge.train.precision import cpu_native_bf16

    result: dict = {"meta": {"args": vars(args), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
                             "machine": platform.processor() or platform.machine(),
                             "precision_auto": "bf16" if cpu_native_bf16()[0] else "fp32"}}

    # 1. the tokenizer and MPJPE by level
    tok_dir, tok = train_tokenizer(work, args.data_size, args.tokenizer_steps)
    result["tokenizer"] = tok
    by = tok["mpjpe_by_levels"]
    result["claims"] = {"mpjpe_falls_every_level": all(b < a for a, b in zip(by, by[1:]))}
    print("MPJPE by levels (mm): " + " -> ".join(f"{1000 * v:.1f}" for v in by), flush=True)
    write_json(out, result)

    # 2. hierarchical vs masked at equal wall-clock
    names = ["hierarchical", "masked_level0"]
    plan = planned_steps(work, names, tok_dir, args)
    print("step plan: " + ", ".join(f"{n} {1000 * p['step_s']:.0f} ms x {p['steps']}" for n, p in plan.items()),
          flush=True)
    result["training"], rows = [], []
    for name in names:
        run, cfg, info = train_generator(work, name, plan[name], tok_dir, args)
        result["training"].append(info)
        if name == "hierarchical":
            row, metrics = score(run, cfg, "hierarchical, 4 levels")
            rows.append(row)
            hier_run, hier_cfg = run, cfg
            if args.prefix_dropout > 0:
                row1, _ = score(run, with_options(cfg, {"levels_to_sample": 1}), "hierarchical, 1 level")
                rows.append(row1)
        else:
            row, metrics = score(run, cfg, "masked (MaskGIT), level 0")
            rows.append(row)
        result["generators"] = rows
        write_json(out, result)
    dist = metrics["distribution"]
    result["distribution_baselines"] = {("real (test) = floor" if k.startswith("real") else k):
                                        {m: v[m] for m in DIST_KEYS if m in v} for k, v in dist["baselines"].items()}
    result["probe"] = dist["features"]
    hier4 = rows[0]
    masked = next(r for r in rows if r["model"].startswith("masked"))
    hier1 = next((r for r in rows if r["model"] == "hierarchical, 1 level"), None)
    result["claims"]["hierarchical_4_vs_masked"] = {"fid": hier4["fid"] <= masked["fid"],
                                                    "action_acc": hier4["action_acc"] >= masked["action_acc"]}
    if hier1 is not None:
        result["claims"]["hierarchical_1_vs_masked"] = {"fid": hier1["fid"] <= masked["fid"],
                                                        "action_acc": hier1["action_acc"] >= masked["action_acc"]}
    write_json(out, result)

    # 3. streaming at 2x
    s = result["streaming"] = streaming(hier_run, hier_cfg)
    result["claims"]["stream_prefix_unchanged"] = all(r["codes_prefix_equal"] for r in s["actions"].values())
    result["claims"]["stream_skating_within_1.5x"] = s["skating_within_1.5x"]
    result["claims"]["stream_periodic_halves_median_abs_diff_hz"] = {
        a: r["gait_hz_abs_diff_median"] for a, r in s["actions"].items()}
    result["meta"]["seconds"] = time.perf_counter() - t_all
    write_json(out, result)
    plot(result, out.with_suffix(".png"))

    # summary
    print(f"\nMotion benchmark ({result['meta']['seconds']:.0f} s; {out}, {out.with_suffix('.png')})")
    print("1. MPJPE by RVQ levels: " + " -> ".join(f"{1000 * v:.1f}" for v in by)
          + f" mm; falls every level: {result['claims']['mpjpe_falls_every_level']}")
    print(f"2. equal wall-clock {args.budget:g} s (masked models level 0 only: weaker than MoMask's residual "
          f"transformer; hierarchical trained with prefix_dropout {args.prefix_dropout:g})")
    print(f"   {'model':<28} {'FID':>8} {'act acc':>8} {'MModal':>7} {'div':>6} {'skate':>6} {'jerk':>6}")
    for r in rows:
        print(f"   {r['model']:<28} {r['fid']:8.3g} {r['action_acc']:8.3f} {r.get('multimodality', float('nan')):7.3f} "
              f"{r['probe_diversity']:6.2f} {r['skating_ratio']:6.3f} {r['jerk']:6.0f}")
    print(f"   {'real clips':<28} {result['distribution_baselines']['real (test) = floor']['fid']:8.3g} "
          f"{hier4['real_action_acc']:8.3f} {hier4.get('real_multimodality', float('nan')):7.3f} "
          f"{hier4['real_probe_diversity']:6.2f} {hier4['real_skating_ratio']:6.3f} {hier4['real_jerk']:6.0f}")
    for k, v in result["distribution_baselines"].items():
        if not k.startswith("real"):
            print(f"   {k:<28} {v['fid']:8.3g}")
    print("3. streaming 2x: " + "; ".join(
        f"{a}: gait {r['gait_hz_first_half']:.2f} / {r['gait_hz_second_half']:.2f} Hz (real {r['gait_hz_real']:.2f}), "
        f"per-clip |diff| {r['gait_hz_abs_diff_median']:.2f} Hz (real 128-frame clips "
        f"{r['real_2x_gait_hz_abs_diff_median']:.2f}), "
        f"skating frames 64-127 {r['skating_ratio_2x_second_half']:.3f} vs 1x {r['skating_ratio_1x']:.3f}, "
        f"seam step {r['seam_step_over_median_step']:.1f}x median" for a, r in s["actions"].items())
        + f"; within 1.5x: {s['skating_within_1.5x']}; prefix unchanged: {result['claims']['stream_prefix_unchanged']}")


if __name__ == "__main__":
    main()
