"""P15 check at toy scale: is a staircase-quantized KV cache better than uniform 4 bits at equal memory?

Model: the library's `ARGenerator` (RoPE positions, which learned this task fastest in
benchmarks/positions.py; dim 32, depth 2, 4 heads) trained briefly on that file's local-rule task at
128 tokens. Then, for each KV cache, fresh
sequences are decoded one step at a time, as the sampler does (`samplers.causal_decode`), but with
the *true* code fed back at every step (teacher forcing through the cache): every prediction reads
keys and values as that cache holds them at that moment. Reported per cache:
- bits per token (mean over steps and sequences) and its excess over the full-precision cache;
- cache bytes at the last step (packed codes + fp16 scale and low per token and head, keys and
  values, summed over layers; nn/kv_quant.py), and the mean over the decoding steps.
Caches: full (fp32), uniform int8 / int4 / int2, and staircases by block age (blocks of 16 tokens):
- stairs_eq4: 2 newest blocks at 8 bits, 2 at 4, older at 2: averages 4 bits at 128 tokens, the
  same bytes as int4 at the last step;
- stairs_8_4_2: 1 block at 8, 1 at 4, older at 2: averages 3 bits at 128 tokens, fewer bytes than
  int4 (the library's `kv_cache="staircase"` is 1 block at 8, 2 at 4, older at 2).

Claim checked (P15): at equal memory, the staircase's bits per token are closer to the full cache's
than uniform 4 bits'.

    python benchmarks/kv_cache.py [--steps 800] [--position rope] [--out benchmarks/results/kv_cache.json]
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

from latentforge.generators.autoregressive import ARGenerator
from latentforge.generators.heads import token_nll
from latentforge.nn.kv_quant import Staircase, kv_cache_bytes

sys.path.insert(0, str(Path(__file__).parent))
from positions import local_rule  # noqa: E402  (the same task and trainer)
from positions import train as train_local_rule  # noqa: E402

CACHES = {
    "full": "full",
    "int8": "int8",
    "int4": "int4",
    "int2": "int2",
    "stairs_eq4": Staircase(((8, 2), (4, 2), (2, None)), block=16),
    "stairs_8_4_2": Staircase(((8, 1), (4, 1), (2, None)), block=16),
}


def train(args) -> ARGenerator:
    return train_local_rule(args.position, args, args.seed, length=args.length)


@torch.no_grad()
def teacher_forced(model: ARGenerator, codes: torch.Tensor, kv_cache, context=None) -> dict:
    """Decode codes [n, N] one step at a time through a cache, feeding the true codes (the sampler's
    loop, `samplers.causal_decode`, with the draw replaced by the truth); bits per token, cache bytes.
    context: the samples' encoded condition (cross-attention; no spatial map), or None."""
    n, N = codes.shape
    cross = {} if context is None else dict(context_kv=model.transformer.context_kv(context.tokens),
                                            context_mask=context.mask)
    pos = model.step_inputs()                                                    # [N, D]
    x = model.bos.expand(n, 1, -1) + pos[:1]                                     # step 0's input
    caches = model.transformer.new_caches(n, N, x, kv_cache)
    logits, sizes = [], []
    for i in range(N):
        h = model.transformer(x, causal=True, caches=caches, **cross)[:, -1]    # [n, D]
        logits.append(model.head(h))
        sizes.append(sum(kv_cache_bytes(c) for c in caches))
        x = model.token_emb(codes[:, i])[:, None] + pos[i + 1 : i + 2] if i + 1 < N else None
    nll = token_nll(torch.stack(logits, 1), codes)                             # [n, N]
    return dict(bits_per_token=float(nll.mean()) / math.log(2), bytes_last=sizes[-1],
                bytes_mean=statistics.mean(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--position", default="rope")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--eval", type=int, default=128, help="sequences decoded per cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/kv_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    model = train(args)
    train_s = time.time() - start
    codes = local_rule(args.eval, args.length, args.vocab, torch.Generator().manual_seed(7), args.noise)
    with torch.no_grad():
        reference = float(token_nll(model.logits(codes, None), codes).mean()) / math.log(2)
    results = {}
    for name, kind in CACHES.items():
        results[name] = teacher_forced(model, codes, kind)
        results[name]["excess_bits"] = results[name]["bits_per_token"] - (results.get("full") or results[name])["bits_per_token"]
        print(name, {k: round(v, 5) for k, v in results[name].items()}, flush=True)
    eq, int4 = results["stairs_eq4"], results["int4"]
    claims = {
        "stairs_eq4_same_bytes_as_int4_at_last_step": eq["bytes_last"] == int4["bytes_last"],
        "stairs_eq4_fewer_excess_bits_than_int4": eq["excess_bits"] < int4["excess_bits"],
        "stairs_8_4_2_fewer_bytes_and_excess_bits_than_int4": (results["stairs_8_4_2"]["bytes_mean"] < int4["bytes_mean"]
                                                               and results["stairs_8_4_2"]["excess_bits"] < int4["excess_bits"]),
        "cached_full_equals_teacher_forcing": abs(results["full"]["bits_per_token"] - reference) < 1e-4,
    }
    out = dict(task=f"x_t = (x_t-1 + x_t-2) mod {args.vocab}, noise {args.noise}, {args.length} tokens",
               args=vars(args), teacher_forcing_bits=reference, caches=results, claims=claims,
               stairs={k: str(v) for k, v in CACHES.items()}, train_s=round(train_s, 1),
               machine=platform.processor() or platform.machine(), seconds=round(time.time() - start, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(dict(claims=claims, seconds=out["seconds"]), indent=2))


if __name__ == "__main__":
    main()
