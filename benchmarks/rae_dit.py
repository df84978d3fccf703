"""P6 RAE's convergence claim at toy scale: does a DiT learn faster in a representation autoencoder's
latent space than the same DiT in a KL-VAE's, at equal wall-clock?

Task: the default recipe's (Shapes 32 px, up to 3 objects, the scene-graph conditioner with P1's
layout stage), run through benchmarks/generators.py's machinery: each tokenizer is trained once, each
generator gets a training wall-clock budget (its step time measured first, its step count set to
fill the budget), then samples two images for each of the first `--conditions` validation graphs,
scored by the Shapes parser (exact scene match, attribute accuracies) and by the Fréchet distance in
the Shapes probe network's features (fid; its floor, val vs train images, is reported beside it).

Latent spaces:
- kl: the default recipe's conv tokenizer with a Gaussian (KL) bottleneck, 8 x 8 x 4 (generators.py's);
- rae_mp3: P6's RAE (tokenizers/rae.py), a frozen MP3 encoder pretrained by P18's position prediction
  (benchmarks/mp3.py's pretraining, or `--encoder FILE`), 8 x 8 x 96 normalised per element, with a
  noise-augmented ViT decoder (tau 0.8);
- rae_probe: the same RAE with the Shapes probe network's conv stages as the encoder (trained to
  count shapes, colours and sizes: a supervised semantic encoder, the analogue of RAE's DINOv2),
  8 x 8 x 64; the probe is the one the FD reads (trained once, cached), so this row's FD is not an
  independent judge (its generator models the features the FD compares): read its adherence;
- rae_random: the same RAE with its encoder left random (is the *pretraining* what helps?).
Generators: the zoo's DiT (width 128, depth 4, flow matching, 32 Euler steps); on RAE latents with
RAE's dimension-dependent time shift sqrt(8 * 8 * 96 / 4096) = 1.22 and the wide, shallow DDT head
(width 256, depth 2); `dit_rae_mp3_nohead` drops the head (ablation).
Claim (details-P1-P17.md section 6): at equal wall-clock the DiT on RAE latents reaches better
adherence / FID than on the KL-VAE latent.

    python benchmarks/rae_dit.py [--budgets 60,180] [--conditions 60] [--encoder FILE]
                                 [--pretrain-steps 1500] [--only dit_kl,dit_rae_mp3] [--threads 1]

Writes benchmarks/results/rae_dit.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
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
import mp3  # noqa: E402

from latentforge.atomic import write_json, write_text  # noqa: E402
from latentforge.pretraining.mp3 import MP3Config, MP3Encoder  # noqa: E402
from latentforge.serialization import save_state_dict  # noqa: E402

GRID, RAE_CHANNELS, PROBE_WIDTH = 8, 96, 32
SHIFT = math.sqrt(GRID * GRID * RAE_CHANNELS / 4096)  # RAE's dimension-dependent shift, base 4096
DIT = {"name": "dit", "dim": zoo.WIDTH, "depth": zoo.DEPTH, "heads": zoo.HEADS, "patch": 1}
# RAE's head is wider than the trunk but shallow; at this trunk (4 blocks of 128) one block of 192 adds about half
# the trunk's cost per token (the paper's 2 x 2048 head on a 28 x 1152 trunk adds about a quarter)
RAE_DIT = {**DIT, "shift": SHIFT, "head_width": 192, "head_depth": 1}
OPTIONS = {"steps": 32}
ROWS = {  # name: (latent space, generator section)
    "dit_kl": ("kl", DIT),
    "dit_rae_mp3": ("rae_mp3", RAE_DIT),
    "dit_rae_mp3_nohead": ("rae_mp3", {**DIT, "shift": SHIFT}),
    "dit_rae_random": ("rae_random", RAE_DIT),
    "dit_rae_probe": ("rae_probe", {**RAE_DIT, "shift": math.sqrt(GRID * GRID * 2 * PROBE_WIDTH / 4096)}),
}
EVAL = {"metrics": ["recon", "val", "adherence", "diversity", "fid"], "n": 300}


def rae_section(encoder_weights: str, encoder: str = "mp3") -> dict:
    channels = RAE_CHANNELS if encoder == "mp3" else 2 * PROBE_WIDTH
    return {"name": "rae", "image_size": 32, "patch": 32 // GRID, "encoder": encoder, "encoder_dim": channels,
            "encoder_depth": 4, "encoder_heads": 4, "probe_width": PROBE_WIDTH, "dim": 128, "decoder_depth": 4,
            "heads": 4, "noise_tau": 0.8, "encoder_weights": encoder_weights}


def probe_weights(data_size: int, tokenizer_steps: int) -> str:
    """The Shapes probe network of the recipe's data (trained once and cached, as the eval's FID uses it)."""
    from latentforge.eval.probe import load_probe, probe_dir
    from latentforge.serialization import WEIGHTS_NAME

    data = zoo.recipe(Path("unused"), "probe", "kl", {"name": "dit"}, 1, 1, {}, data_size, tokenizer_steps).data
    load_probe(data)
    return str(probe_dir(data) / WEIGHTS_NAME)


def pretrained_encoder(path: Path, steps: int, size: int) -> dict:
    """Pretrain P18's MP3 encoder (RAE's encoder shape) on chirped-background Shapes and save it."""
    config = MP3Config(dim=RAE_CHANNELS, depth=4, heads=4, patch=32 // GRID)
    images, _ = mp3.scenes_and_images(size, "train", 0)
    val, _ = mp3.scenes_and_images(500, "val", 1)
    torch.manual_seed(0)
    encoder = MP3Encoder(config)
    start = time.perf_counter()
    mp3.pretrain(encoder, images, steps, 64, 1e-3)
    info = {"steps": steps, "seconds": time.perf_counter() - start, "position_top1": encoder.position_accuracy(val)}
    save_state_dict(encoder.state_dict(), path)
    write_json(path.with_suffix(".json"), info)  # read back when the file is given as --encoder
    return info


def table(result: dict) -> str:
    lines = ["| generator | latent | budget s | steps | exact | count | shape | color | relation | FD (probe) | FD floor |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['generator']} | {row['tokenizer']} | {row['budget']:.0f} | {row['steps']} | "
                     f"{row['scene_exact']:.3f} | {row['count_acc']:.3f} | {row['shape_acc']:.3f} | "
                     f"{row['color_acc']:.3f} | {row['relation_acc']:.3f} | {row.get('fid') or float('nan'):.2f} | "
                     f"{row.get('fid_floor') or float('nan'):.2f} |")
    toks = "; ".join(f"{k}: PSNR {v['psnr']:.2f} dB" for k, v in result["tokenizers"].items())
    return "\n".join(lines) + f"\n\nTokenizers (val reconstruction): {toks}.\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["generator"] for r in result["rows"]):
        rows = sorted((r for r in result["rows"] if r["generator"] == name), key=lambda r: r["budget"])
        for ax, key in zip(axes, ("scene_exact", "fid")):
            ax.plot([r["budget"] for r in rows], [r.get(key) for r in rows], "o-", label=name)
    axes[0].set_ylabel("exact scene match (higher is better)")
    axes[1].set_ylabel("Fréchet distance, probe features (lower is better)")
    for ax in axes:
        ax.set_xlabel("generator training wall-clock (s)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("P6 RAE: DiT convergence by latent space (Shapes scene graphs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="60,180", help="generator training seconds, comma-separated")
    ap.add_argument("--conditions", type=int, default=60, help="val graphs sampled (2 samples each)")
    ap.add_argument("--data-size", type=int, default=20000)
    ap.add_argument("--tokenizer-steps", type=int, default=500)
    ap.add_argument("--encoder", default=None, help="a pretrained MP3 encoder (safetensors); else pretrain one")
    ap.add_argument("--pretrain-steps", type=int, default=1500)
    ap.add_argument("--pretrain-size", type=int, default=8000)
    ap.add_argument("--only", default="dit_kl,dit_rae_mp3,dit_rae_probe,dit_rae_random",
                    help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/bench_rae_dit")
    ap.add_argument("--out", default="benchmarks/results/rae_dit.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    result: dict = {"meta": {"args": vars(args), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                             "machine": platform.processor() or platform.machine(), "shift": SHIFT},
                    "tokenizers": {}, "rows": []}
    kinds = list(dict.fromkeys(ROWS[n][0] for n in names))
    if "rae_mp3" in kinds:
        encoder = args.encoder
        if encoder is None:
            encoder = str(work / "mp3_encoder.safetensors")
            result["mp3"] = pretrained_encoder(Path(encoder), args.pretrain_steps, args.pretrain_size)
            print(f"MP3 encoder: position top-1 {result['mp3']['position_top1']:.3f} after "
                  f"{result['mp3']['seconds']:.0f} s", flush=True)
        elif Path(encoder).with_suffix(".json").is_file():
            result["mp3"] = json.loads(Path(encoder).with_suffix(".json").read_text())
        zoo.SECTIONS["rae_mp3"] = rae_section(str(Path(encoder).resolve()))
    zoo.SECTIONS["rae_random"] = rae_section("")
    if "rae_probe" in kinds:
        zoo.SECTIONS["rae_probe"] = rae_section(probe_weights(args.data_size, args.tokenizer_steps), "probe")
    tokenizer_dirs = {}
    for kind in kinds:
        t = time.perf_counter()
        tokenizer_dirs[kind], result["tokenizers"][kind] = zoo.train_tokenizer(work, kind, args.data_size,
                                                                               args.tokenizer_steps)
        print(f"tokenizer {kind}: {time.perf_counter() - t:.0f} s, val PSNR {result['tokenizers'][kind]['psnr']:.2f} dB",
              flush=True)
    for name in names:
        kind, section = ROWS[name]
        zoo.GENERATORS[name] = (kind, section, OPTIONS, [])
    # step times measured in rounds over the rows, so a change in the machine's load hits them all
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(3):
        for name in names:
            times[name].append(zoo.measured_step(work / "timing", name, tokenizer_dirs[ROWS[name][0]], args.conditions,
                                                 args.data_size, args.tokenizer_steps, EVAL))
    step_s = result["step_s"] = {name: statistics.median(t) for name, t in times.items()}
    print("seconds per training step:", {k: round(v, 4) for k, v in step_s.items()}, flush=True)
    for budget in (float(b) for b in args.budgets.split(",")):
        for name in names:
            row = zoo.generator_row(work / f"budget_{budget:.0f}", name, tokenizer_dirs[ROWS[name][0]], budget,
                                    args.conditions, args.data_size, args.tokenizer_steps, sweep_steps=False,
                                    eval_changes=EVAL, step_s=step_s[name])
            row["budget"] = budget
            result["rows"].append(row)
            print(f"{name} @ {budget:.0f} s: exact {row['scene_exact']:.3f}, FD {row.get('fid')}", flush=True)
            write_json(args.out, result)  # keep what is done if a later row fails
    out = Path(args.out)
    write_json(out, result)
    write_text(out.with_suffix(".md"), table(result))
    plot(result, out.with_suffix(".png"))
    print(table(result))


if __name__ == "__main__":
    main()
