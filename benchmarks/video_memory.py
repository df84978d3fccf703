"""Peak memory of one causal 3D tokenizer training step on a clip batch (issue 15: a batch of 16
clips of 16-17 x 64 x 64 must train within 8 GiB).

    python benchmarks/video_memory.py [--batch 16 --frames 17 --size 64 --steps 2 --threads 1]

Prints the parameter count, the latent grid, seconds per step and the process's peak RSS (GiB)
after `steps` AdamW steps of the default `causal3d` config on random clips.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from latentforge.tokenizers.causal3d import Causal3dConfig, Causal3dTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = Causal3dConfig(frames=args.frames, image_size=args.size)
    tok = Causal3dTokenizer(cfg)
    opt = torch.optim.AdamW(tok.parameters(), 1e-3)
    x = torch.rand(args.batch, 3, args.frames, args.size, args.size) * 2 - 1
    start = time.perf_counter()
    for _ in range(args.steps):
        opt.zero_grad(set_to_none=True)
        tok.loss({"video": x})["loss"].backward()
        opt.step()
    out = {"params": sum(p.numel() for p in tok.parameters()), "latent_grid": cfg.latent_grid,
           "batch": [args.batch, 3, args.frames, args.size, args.size],
           "sec_per_step": (time.perf_counter() - start) / args.steps,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
