"""int8 vs fp32 CPU inference (P28), and torch.export vs eager for the tokenizer's decoder.

    .venv/bin/python benchmarks/inference.py [--threads 1] [--train-steps 20] [--dit-steps 10] [--out PATH]

Models (width 256, depth 8, 4 heads): an AR generator over a 16x16 grid of 512 codes, briefly
trained on synthetic codes with local structure (each code near its left neighbour) so that its
bits per token mean something; a flow DiT over a 16x16x4 latent grid with 2x2 patches (64 tokens),
random init with its zero-init gates perturbed (an untrained DiT outputs zeros); a ViT decoder
(width 256, depth 4, 64x64 images from an 8x8x4 Gaussian latent).
int8 = latentforge.inference.quantize_int8: int8 weights and per-row dynamic int8 activations
(`torch._int_mm`); "int8-w" = weight-only (dequantised per call).
Writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.inference import export_decoder, quantize_int8, weight_bytes
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.tokenizers.vit import ViTConfig, ViTTokenizer


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def synthetic_codes(n: int, grid: tuple[int, int], vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Codes [n, *grid]: a random walk in raster order (steps in -2..2): learnable local structure."""
    steps = torch.randint(-2, 3, (n, math.prod(grid)), generator=gen)
    start = torch.randint(0, vocab, (n, 1), generator=gen)
    return ((start + steps.cumsum(1)) % vocab).reshape(n, *grid)


def linear_bytes(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if type(m) is torch.nn.Linear)


def bench_ar(args, gen: torch.Generator) -> dict:
    cfg = ARConfig(grid=(16, 16), vocab_size=512, dim=256, depth=8, heads=4)
    model = ARGenerator(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        loss = model.loss(synthetic_codes(8, cfg.grid, cfg.vocab_size, gen))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - start
    model.eval()
    variants = {"fp32": model, "int8": quantize_int8(model), "int8-w": quantize_int8(model, activations=False)}
    val = synthetic_codes(32, cfg.grid, cfg.vocab_size, gen)
    out: dict = {"config": "ARConfig(grid=(16, 16), vocab_size=512, dim=256, depth=8, heads=4)",
                 "train_steps": args.train_steps, "train_s": round(train_s, 1),
                 "linear_weight_MB_fp32": linear_bytes(model) / 2**20}
    with torch.no_grad():
        ref = F.log_softmax(model.logits(val.reshape(32, -1), None).float(), -1)
        for name, m in variants.items():
            logp = F.log_softmax(m.logits(val.reshape(32, -1), None).float(), -1)
            row = {"weight_MB": weight_bytes(m) / 2**20,
                   "val_bits_per_token": float(m.loss(val)["bits_per_token"]),
                   "logits_kl_to_fp32_nats": float(F.kl_div(logp, ref, log_target=True, reduction="none")
                                                   .sum(-1).mean())}
            for batch in (1, 32):
                sample = lambda m=m, batch=batch: m.sample(batch, generator=torch.Generator().manual_seed(0))  # noqa: E731
                row[f"sample_s_per_sample_b{batch}"] = timed(sample, args.repeats) / batch
            out[name] = row
    return out


def bench_dit(args, gen: torch.Generator) -> dict:
    cfg = DiTConfig(grid=(16, 16), channels=4, patch=2, dim=256, depth=8, heads=4)
    model = DiTGenerator(cfg)
    with torch.no_grad():  # off adaLN-Zero's zero gates and output layer: a random but non-trivial denoiser
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    model.eval()
    variants = {"fp32": model, "int8": quantize_int8(model), "int8-w": quantize_int8(model, activations=False)}
    x = torch.randn(32, *cfg.grid, cfg.channels, generator=gen)
    t = torch.rand(32, generator=gen)
    out: dict = {"config": "DiTConfig(grid=(16, 16), channels=4, patch=2, dim=256, depth=8, heads=4), random init",
                 "sample_steps": args.dit_steps, "linear_weight_MB_fp32": linear_bytes(model) / 2**20}
    with torch.no_grad():
        ref = model.predict(x, t)
        for name, m in variants.items():
            pred = m.predict(x, t)
            row = {"weight_MB": weight_bytes(m) / 2**20,
                   "denoiser_rel_mse_to_fp32": float((pred - ref).pow(2).mean() / ref.pow(2).mean())}
            for batch in (1, 32):
                sample = lambda m=m, batch=batch: m.sample(  # noqa: E731
                    batch, generator=torch.Generator().manual_seed(0), steps=args.dit_steps)
                row[f"sample_s_per_sample_b{batch}"] = timed(sample, args.repeats) / batch
            out[name] = row
    return out


def bench_decoder(args, gen: torch.Generator) -> dict:
    cfg = ViTConfig(image_size=64, patch=8, dim=256, encoder_depth=1, decoder_depth=4, heads=4,
                    quantizer=GaussianConfig(dim=32, latent_channels=4))
    tok = ViTTokenizer(cfg).eval()
    z = torch.randn(32, *tok.spec.grid, tok.spec.channels, generator=gen)
    start = time.perf_counter()
    program = export_decoder(tok, z[:2]).module()
    export_s = time.perf_counter() - start
    out: dict = {"config": "ViTConfig(image_size=64, patch=8, dim=256, decoder_depth=4, heads=4, gaussian, 4 latent channels)",
                 "export_s": round(export_s, 2)}
    int8 = quantize_int8(tok)
    with torch.no_grad():
        ref = tok.decode(z)
        out["export_max_abs_diff"] = float((program(z) - ref).abs().max())
        out["int8_rel_mse"] = float((int8.decode(z) - ref).pow(2).mean() / ref.pow(2).mean())
        for batch in (1, 32):
            zb = z[:batch]
            for name, fn in (("eager", tok.decode), ("export", program), ("int8", int8.decode)):
                out[f"{name}_s_per_sample_b{batch}"] = timed(lambda: fn(zb), args.repeats) / batch  # noqa: B023
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the benchmark machine is shared)")
    p.add_argument("--train-steps", type=int, default=20, help="AdamW steps for the AR model (batch 8)")
    p.add_argument("--dit-steps", type=int, default=10, help="flow ODE steps per DiT sample")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "inference.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    start = time.perf_counter()
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "quantized_engine": "own Int8Linear (torch._int_mm)"}
    for name, fn in (("autoregressive", bench_ar), ("dit", bench_dit), ("decoder", bench_decoder)):
        t0 = time.perf_counter()
        result[name] = fn(args, gen)
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(result[name], indent=1)}", flush=True)
    result["total_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} in {result['total_s']} s")


if __name__ == "__main__":
    main()
