"""P15 check at toy scale: which positions let a causal model run past its training length?

Task (known answer): sequences over V codes where each token follows a local rule,
    x_t = (x_{t-1} + x_{t-2}) mod V  with probability 1 - noise, a uniform code otherwise;
the first two tokens are uniform. The rule reads two tokens back and is the same at every position and
length, so a model that learned *the rule* (rather than "the rule at positions < 64") should keep its
loss at any length. The best possible loss per token is the noise's entropy (`floor`), plus ln V for
the two free tokens at the start.

Models: the library's `ARGenerator` on a 1D grid of 64 tokens (dim 32, depth 2, 4 heads), one per
`position`: learned (a table per position, the default), rope, alibi (geometric slopes) and
rope_alibi (P15's factored RoPE x ALiBi with harmonic slopes 1/h). Same seed, same data stream, same
optimizer (AdamW, lr 3e-3, batch 32). Evaluated with `logits` (teacher forcing) on fresh sequences of
64, 128 and 256 tokens: mean nats per token, and the mean over the positions past 64 only. Learned
positions have no row for position 64, so they cannot run longer sequences at all (reported null).

Claims checked: ALiBi's loss at 256 stays within 0.05 nats of its loss at 64; P15's RoPE x ALiBi
extrapolates better than RoPE alone (lower loss at 256).

    python benchmarks/positions.py [--steps 600] [--seeds 0,1] [--out benchmarks/results/positions.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.heads import token_nll

POSITIONS = ("learned", "rope", "alibi", "rope_alibi")
LENGTHS = (64, 128, 256)


def local_rule(n: int, T: int, V: int, generator: torch.Generator, noise: float = 0.1) -> Tensor:
    """[n, T] int64 codes: x_t = (x_{t-1} + x_{t-2}) mod V, or a uniform code with probability noise."""
    x = torch.randint(V, (n, T), generator=generator)
    keep = torch.rand(n, T, generator=generator) >= noise
    for t in range(2, T):
        x[:, t] = torch.where(keep[:, t], (x[:, t - 1] + x[:, t - 2]) % V, x[:, t])
    return x


def floor(V: int, noise: float) -> float:
    """Entropy in nats of one rule-following token: the rule's code w.p. 1 - noise + noise/V."""
    hit, miss = 1 - noise + noise / V, noise / V
    return -hit * math.log(hit) - (V - 1) * miss * math.log(miss)


def train(position: str, args, seed: int, length: int | None = None) -> ARGenerator:
    """A small causal model trained `args.steps` steps on the local rule at `length` tokens (default
    `args.train_len`); benchmarks/kv_cache.py trains its model with this too."""
    length = args.train_len if length is None else length
    torch.manual_seed(seed)
    model = ARGenerator(ARConfig(grid=(length,), vocab_size=args.vocab, dim=32, depth=2, heads=4,
                                 position=position))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(1000 + seed)
    for _ in range(args.steps):
        loss = model.loss(local_rule(args.batch, length, args.vocab, data, args.noise))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: ARGenerator, args, seed: int) -> dict:
    """Nats per token at each length (null where the model cannot run), and past the trained length."""
    out = {}
    for T in LENGTHS:
        z = local_rule(args.eval, T, args.vocab, torch.Generator().manual_seed(5000 + seed + T), args.noise)
        try:
            nll = token_nll(model.logits(z, None), z)  # [n, T]
        except ValueError:
            out[str(T)], out[f"{T}_past_train"] = None, None
            continue
        out[str(T)] = float(nll.mean())
        out[f"{T}_past_train"] = float(nll[:, args.train_len:].mean()) if T > args.train_len else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--vocab", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--train-len", type=int, default=64)
    parser.add_argument("--eval", type=int, default=64, help="sequences per evaluation length")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/positions.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.time()
    runs = {p: [] for p in POSITIONS}
    for seed in seeds:
        for position in POSITIONS:
            t0 = time.time()
            result = evaluate(train(position, args, seed), args, seed)
            result["train_s"] = round(time.time() - t0, 1)
            runs[position].append(result)
            print(position, seed, {k: v if v is None else round(v, 3) for k, v in result.items()}, flush=True)

    def mean(position: str, key: str) -> float | None:
        values = [r[key] for r in runs[position]]
        return None if None in values else statistics.mean(values)

    summary = {p: {key: mean(p, key) for key in runs[p][0] if key != "train_s"} for p in POSITIONS}
    alibi, rope, both = summary["alibi"], summary["rope"], summary["rope_alibi"]
    claims = {
        "learned_cannot_run_past_64": summary["learned"]["256"] is None,
        "alibi_256_within_0.05_of_64": abs(alibi["256"] - alibi["64"]) <= 0.05,
        "rope_alibi_beats_rope_at_256": both["256"] < rope["256"],
    }
    # the two free tokens at the start cost ln V each; the rest cost at least the noise's entropy
    best = {str(T): (2 * math.log(args.vocab) + (T - 2) * floor(args.vocab, args.noise)) / T for T in LENGTHS}
    result = dict(
        task=f"x_t = (x_t-1 + x_t-2) mod {args.vocab}, noise {args.noise}; trained at {args.train_len} tokens",
        args=vars(args), best_possible_nats=best, summary=summary, runs=runs, claims=claims,
        machine=platform.processor() or platform.machine(), seconds=round(time.time() - start, 1),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(dict(summary=summary, best=best, claims=claims, seconds=result["seconds"]), indent=2))


if __name__ == "__main__":
    main()
