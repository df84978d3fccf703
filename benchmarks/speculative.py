"""P25 MatFormer at toy scale: nested FFNs trained jointly, their extracted submodels, and speculative
decoding with the quarter-width submodel as the draft.

Data: Shapes scenes (32 px) average-pooled to 8 x 8 and colour-quantised to 4 levels per channel,
64 codes (the stand-in for a small VQ tokenizer's codes the generator tests use): 64 tokens a sample,
raster order, unconditional. Train and validation scenes come from their own splits.

Models (every one: width 128, 4 layers, 4 heads, the same seed, data stream and AdamW):
- nested: FFN h = 512 with nested_widths (0.25, 0.5, 1.0); each step runs the batch at every width
  (MatFormer's step: 3 forward/backward passes, one update);
- half: a plain model with h = 256, trained alone for the same number of steps;
- full: a plain model with h = 512, trained alone for the same number of steps.

Reported:
- validation NLL (nats/token) of the nested model at every width, of a Mix'n'Match model
  [1, 0.5, 0.5, 0.25], of the extracted half-width submodel (`submodel(0.5)`, checked equal to the
  nested model at 0.5), of `half` and `full`; the consistency of the submodels (argmax agreement of
  half-width and full-width predictions, nested vs separately trained);
- sampling at temperature 1: plain vs speculative (draft = the 0.25 submodel) at k = 2, 4, 8, batch 1
  and 16: seconds per batch (median over repeats), tokens/s, speed-up, acceptance rate (drafts the
  rule accepted / proposed), tokens kept per full-model pass; and plain sampling with the draft
  alone (every MLP at h/4), which bounds what a draft token can cost.

P25's claims checked (notes: details-P18-P34.md §8): the extracted h/2 submodel is within 0.05 nats of
the separately trained h/2 model at equal optimizer steps; the full width within 0.03 of `full`; the
nested submodels agree with the full model more than independently trained ones do; speculative
decoding with the submodel as draft is faster than plain sampling.

    python benchmarks/speculative.py [--steps 250] [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.heads import code_nll
from latentforge.nn.matformer import use_widths

NESTED = (0.25, 0.5, 1.0)
MIX = [1.0, 0.5, 0.5, 0.25]


def shapes_codes(n: int, split: str, grid: int = 8, levels: int = 4) -> torch.Tensor:
    """n Shapes images pooled to grid x grid, each RGB value quantised to `levels`: codes [n, grid, grid]."""
    from latentforge.data.shapes import ShapesConfig, sample_and_render

    _, images = sample_and_render(ShapesConfig(), split, range(n), workers=1)
    x = torch.as_tensor(images).float().div(255)                              # [n, 32, 32, 3] in [0, 1]
    side = x.shape[1] // grid
    pooled = x.view(n, grid, side, grid, side, 3).mean((2, 4))              # [n, grid, grid, 3]
    index = (pooled * levels).long().clamp(0, levels - 1)
    return (index * torch.tensor([levels * levels, levels, 1])).sum(-1)     # [n, grid, grid]


def build(mlp_ratio: float, nested: tuple[float, ...] = ()) -> ARGenerator:
    torch.manual_seed(0)
    return ARGenerator(ARConfig(grid=(8, 8), vocab_size=64, dim=128, depth=4, heads=4, mlp_ratio=mlp_ratio,
                                nested_widths=nested))


def train(model: ARGenerator, data: torch.Tensor, steps: int, batch: int, lr: float) -> float:
    """AdamW at a constant rate on a fixed-seed stream of batches; returns the seconds it took."""
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        z = data[torch.randint(len(data), (batch,), generator=g)]
        loss = model.loss(z)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def nll_and_argmax(model: ARGenerator, data: torch.Tensor) -> tuple[float, torch.Tensor]:
    codes = model.flat_codes(data)
    logits = model.logits(codes, None)
    return code_nll(logits, codes).item(), logits.argmax(-1)


def time_sampling(model: ARGenerator, n: int, repeats: int, **options) -> dict:
    seconds, stats = [], []
    for r in range(repeats):
        g = torch.Generator().manual_seed(r)
        start = time.perf_counter()
        model.sample(n, generator=g, **options)
        seconds.append(time.perf_counter() - start)
        if options.get("speculative"):
            stats.append(model.last_speculation)
    s = statistics.median(seconds)
    row = {"seconds": round(s, 4), "tokens_per_s": round(n * model.config.num_tokens / s, 1)}
    if stats:
        row["acceptance_rate"] = round(sum(x.accepted for x in stats) / sum(x.proposed for x in stats), 3)
        row["tokens_per_target_pass"] = round(sum(x.kept for x in stats) / sum(x.target_calls for x in stats), 2)
    return row


def best_speedup(speed: list[dict], batch: int) -> float:
    return max(r["speedup"] for r in speed if r["batch"] == batch and isinstance(r["k"], int) and r["k"] > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="sampling runs per setting (the median is kept)")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/speculative.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # other jobs share the machine
    start = time.perf_counter()
    data, val = shapes_codes(args.train_size, "train"), shapes_codes(args.val_size, "val")

    # -- training ---------------------------------------------------------------------------
    models = {"nested": build(4.0, NESTED), "half": build(2.0), "full": build(4.0)}
    train_seconds = {name: round(train(m, data, args.steps, args.batch, args.lr), 1) for name, m in models.items()}
    print("training seconds:", train_seconds, flush=True)

    # -- quality ----------------------------------------------------------------------------
    nested = models["nested"]
    quality, argmax = {}, {}
    for w in [*NESTED, MIX]:
        with use_widths(nested.transformer, w):
            quality[f"nested@{w}"], argmax[str(w)] = nll_and_argmax(nested, val)
    extracted = nested.submodel(0.5)
    quality["extracted h/2"], extracted_argmax = nll_and_argmax(extracted, val)
    for name in ("half", "full"):
        quality[name], argmax[name] = nll_and_argmax(models[name], val)
    quality = {k: round(v, 4) for k, v in quality.items()}
    params = {"nested (whole)": sum(p.numel() for p in nested.parameters()),
              "extracted h/2": sum(p.numel() for p in extracted.parameters()),
              "half": sum(p.numel() for p in models["half"].parameters())}
    agreement = {"nested h/2 vs nested h": (argmax["0.5"] == argmax["1.0"]).float().mean().item(),
                 "nested h/4 vs nested h": (argmax["0.25"] == argmax["1.0"]).float().mean().item(),
                 "half vs full (separate)": (argmax["half"] == argmax["full"]).float().mean().item()}
    agreement = {k: round(v, 3) for k, v in agreement.items()}
    print("| model | val NLL (nats/token) |\n|---|---|")
    for k, v in quality.items():
        print(f"| {k} | {v:.4f} |")
    print("argmax agreement:", agreement, flush=True)

    # -- sampling speed ---------------------------------------------------------------------
    ks = [int(k) for k in args.ks.split(",")]
    speed = []
    print("| batch | k | s/batch | tokens/s | speed-up | acceptance | tokens/full pass |\n|---|---|---|---|---|---|---|")
    for n in (1, 16):
        plain = time_sampling(nested, n, args.repeats)
        speed.append({"batch": n, "k": 0, **plain, "speedup": 1.0})
        print(f"| {n} | plain | {plain['seconds']:.3f} | {plain['tokens_per_s']:.0f} | 1.00 | | 1 |", flush=True)
        with use_widths(nested.transformer, NESTED[0]):  # the draft alone: what one draft token costs
            alone = time_sampling(nested, n, args.repeats)
        speed.append({"batch": n, "k": "draft alone", **alone, "speedup": round(plain["seconds"] / alone["seconds"], 2)})
        print(f"| {n} | draft alone (h/4) | {alone['seconds']:.3f} | {alone['tokens_per_s']:.0f} | "
              f"{plain['seconds'] / alone['seconds']:.2f} | | |", flush=True)
        for k in ks:
            row = time_sampling(nested, n, args.repeats, speculative=k, draft_width=NESTED[0])
            row["speedup"] = round(plain["seconds"] / row["seconds"], 2)
            speed.append({"batch": n, "k": k, **row})
            print(f"| {n} | {k} | {row['seconds']:.3f} | {row['tokens_per_s']:.0f} | {row['speedup']:.2f} | "
                  f"{row['acceptance_rate']:.3f} | {row['tokens_per_target_pass']:.2f} |", flush=True)

    claims = {
        "extracted h/2 within 0.05 nats of separately trained h/2": quality["extracted h/2"] - quality["half"] <= 0.05,
        "nested full width within 0.03 nats of separately trained h": quality["nested@1.0"] - quality["full"] <= 0.03,
        "Mix'n'Match [1, .5, .5, .25] between h/4 and h": quality["nested@0.25"] >= quality[f"nested@{MIX}"]
        >= quality["nested@1.0"],
        "nested h/2 agrees with h more than separate h/2 with h": agreement["nested h/2 vs nested h"]
        > agreement["half vs full (separate)"],
        "speculative faster than plain (best k, batch 1)": best_speedup(speed, 1) > 1.0,
        "speculative faster than plain (best k, batch 16)": best_speedup(speed, 16) > 1.0,
    }
    for name, ok in claims.items():
        print(f"- {name}: {'held' if ok else 'did NOT hold'}")
    from latentforge.atomic import write_json

    meta = {"args": vars(args), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - start, 1)}
    write_json(args.out, {"meta": meta, "train_seconds": train_seconds, "val_nll": quality, "params": params,
                          "argmax_agreement": agreement, "sampling": speed, "claims": claims})
    print(f"done in {meta['seconds']} s")


if __name__ == "__main__":
    main()
