"""Inference: a tokenizer and a generator together, from conditions to images.

    pipe = Pipeline.from_run("runs/demo")
    images = pipe.generate(cond, cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latentforge.generators.base import Generator
from latentforge.serialization import from_pretrained
from latentforge.tokenizers.base import Tokenizer


def to_uint8(images: Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def to_float(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    x = torch.as_tensor(images)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Pipeline:
    def __init__(self, tokenizer: Tokenizer, generator: Generator) -> None:
        if tuple(generator.config.grid) != tuple(tokenizer.spec.grid):
            raise ValueError(f"generator grid {generator.config.grid} does not match the tokenizer's "
                             f"latent grid {tokenizer.spec.grid}")
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()

    @classmethod
    def from_run(cls, run: str | os.PathLike, device: str = "cpu") -> "Pipeline":
        run = Path(run)
        for part in ("tokenizer", "generator"):
            if not (run / part / "config.json").is_file():
                raise FileNotFoundError(f"{run} has no trained {part} yet ({run / part / 'config.json'} "
                                        f"is missing): run `latentforge run` first")
        return cls(from_pretrained(run / "tokenizer", device), from_pretrained(run / "generator", device))

    @torch.no_grad()
    def generate(self, cond: dict[str, Tensor] | None, n: int | None = None, *,
                 generator: torch.Generator | None = None, batch_size: int = 256, **sampling) -> np.ndarray:
        """Sample one image per condition row (or n unconditional ones) -> uint8 [N, H, W, C]."""
        device = next(self.generator.parameters()).device
        total = n if cond is None else len(next(iter(cond.values())))
        out = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            part = None if cond is None else {k: v[start:stop].to(device) for k, v in cond.items()}
            context = self.generator.encode_condition(part, generator=generator)
            z = self.generator.sample(stop - start, context, generator=generator, **sampling)
            out.append(to_uint8(self.tokenizer.decode(z)))
        return np.concatenate(out)
