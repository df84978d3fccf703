"""Inference: a tokenizer, a generator and the data's modality, from conditions to examples.

    pipe = Pipeline.from_run("runs/demo", dataset.modality)
    rows = dataset.parse_conditions(json.loads(text), "conditions.json")   # or a split's rows
    samples, given = pipe.sample(rows, n=8, seed=0, dataset=dataset, options=sampling)

This is the only sampling path: the recipe's sample and eval stages and `latentforge sample`
all come through `Pipeline.sample`, so they draw the same examples for the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from latentforge.conditioning.caption import CaptionConfig, encode_captions
from latentforge.config import ADDED_LATER, ConfigError
from latentforge.generators.base import Generator
from latentforge.generators.guidance import GuidanceSchedule
from latentforge.serialization import from_pretrained
from latentforge.tokenizers.base import Tokenizer


@dataclass
class SampleConfig:
    conditions: int = 200            # validation conditions (scene graphs, labels) to sample for
    per_graph: int = 2               # samples per condition (>= 2 measures diversity)
    batch_size: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    seed: int = 0
    options: dict = field(default_factory=dict)   # generator-specific: steps, method, eta, ...
    # cfg_scale per step (generators/guidance.py GuidanceSchedule): guided only while the sampling progress
    # (0 = start, 1 = done) is in the interval (Kynkäänniemi et al. 2024; unguided steps skip the null rows),
    # the scale constant or rising with progress, 1 + (cfg_scale - 1) p ("linear") or p^guidance_power ("power")
    guidance_interval: tuple[float, float] = field(default=(0.0, 1.0), metadata=ADDED_LATER)
    guidance_ramp: Literal["constant", "linear", "power"] = field(default="constant", metadata=ADDED_LATER)
    guidance_power: float = field(default=1.0, metadata=ADDED_LATER)

    def guidance(self) -> float | GuidanceSchedule:
        """cfg_scale as `Generator.sample` takes it: the plain number unless an interval or ramp is set."""
        if tuple(self.guidance_interval) == (0.0, 1.0) and self.guidance_ramp == "constant":
            return self.cfg_scale
        try:
            return GuidanceSchedule(self.cfg_scale, tuple(self.guidance_interval), self.guidance_ramp,
                                    self.guidance_power)
        except ValueError as err:
            raise ConfigError(f"sample.guidance_*: {err}") from None


def sampling_options(generator: Generator, s: SampleConfig) -> dict[str, Any]:
    """The sample section as keyword arguments of this generator's `sample`: the common knobs it
    takes (a diffusion model has no top-k) plus `sample.options`, checked by name."""
    accepted = generator.sampling_options()
    unknown = sorted(set(s.options) - accepted)
    if unknown:
        raise ConfigError(f"sample.options: {', '.join(unknown)} not accepted by generator "
                          f"{generator.config.name!r}; it takes {', '.join(sorted(accepted))}")
    common = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "cfg_scale": s.guidance()}
    if generator.conditioner is None:  # a recipe's guidance scale means nothing to an unconditional model
        common.pop("cfg_scale")
    return {**{k: v for k, v in common.items() if k in accepted}, **s.options}


def condition_tensors(dataset: Any, rows: dict[str, np.ndarray], generator: Generator) -> dict[str, Tensor]:
    """A data set's condition rows (numeric entries, captions) -> the tensors a conditioner
    selects from; a caption conditioner gets the captions as word ids in its vocabulary."""
    out = {k: torch.from_numpy(np.array(v)) for k, v in dataset.numeric(rows).items()}  # copies: rows may be memory-mapped
    cond = generator.config.conditioner
    if isinstance(cond, CaptionConfig):
        texts = [str(t) for t in rows[dataset.caption_key]]
        out.update(encode_captions(texts, cond.vocab, cond.max_len))
    return out


class Pipeline:
    def __init__(self, tokenizer: Tokenizer, generator: Generator, modality: Any) -> None:
        if tuple(generator.config.grid) != tuple(tokenizer.spec.grid):
            raise ValueError(f"generator grid {generator.config.grid} does not match the tokenizer's "
                             f"latent grid {tokenizer.spec.grid}")
        self.tokenizer = tokenizer.eval()
        self.generator = generator.eval()
        self.modality = modality
        self.decode_size: int | None = None   # set_decode_size: decode at another resolution

    def set_decode_size(self, size: int | None) -> None:
        """Decode samples at `size` px (None: the trained size), for tokenizers whose decoder is a
        continuous field (`decode_at`: the implicit tokenizer, DDMI)."""
        if size is not None and not hasattr(self.tokenizer, "decode_at"):
            raise ValueError(f"tokenizer {self.tokenizer.config.name!r} decodes at its trained size only; "
                             "decoding at another size needs one with decode_at (tokenizer.name: implicit)")
        if size is not None and size < 1:
            raise ValueError(f"the decode size must be a positive number of pixels, got {size}")
        self.decode_size = size

    def quantize_int8(self, activations: bool = True) -> None:
        """Sample with int8 Linear weights (inference.quantize_int8) in the generator and the
        tokenizer: ~4x less weight memory and faster CPU matmuls, at a small loss of accuracy
        (benchmarks/inference.py). The fp32 modules are replaced; reload the run to undo."""
        from latentforge.inference import quantize_int8

        self.tokenizer = quantize_int8(self.tokenizer, activations)
        self.generator = quantize_int8(self.generator, activations)

    def _decode(self, z: Tensor) -> Tensor:
        return self.tokenizer.decode(z) if self.decode_size is None else self.tokenizer.decode_at(z, self.decode_size)

    @classmethod
    def from_run(cls, run: str | os.PathLike, modality: Any, device: str | torch.device = "cpu") -> "Pipeline":
        run = Path(run)
        for part in ("tokenizer", "generator"):
            if not (run / part / "config.json").is_file():
                raise FileNotFoundError(f"{run} has no trained {part} yet ({run / part / 'config.json'} "
                                        f"is missing): run `latentforge run` first")
        return cls(from_pretrained(run / "tokenizer", device), from_pretrained(run / "generator", device), modality)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def generate(self, cond: dict[str, Tensor] | None, n: int | None = None, *,
                 generator: torch.Generator | None = None, batch_size: int = 256, **sampling) -> np.ndarray:
        """Sample one example per condition row (or n unconditional ones), in the modality's
        stored layout (images: uint8 [N, H, W, 3])."""
        total = n if cond is None else len(next(iter(cond.values())))
        out = []
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            part = None if cond is None else {k: v[start:stop].to(self.device) for k, v in cond.items()}
            context = self.generator.encode_condition(part, generator=generator)
            z = self.generator.sample(stop - start, context, generator=generator, **sampling)
            step = self.modality.inference_batch  # decoding clips takes far more memory than sampling latents
            out.extend(self.modality.from_model(self._decode(z[i:i + step])) for i in range(0, len(z), step))
        return np.concatenate(out)

    @torch.no_grad()
    def continuation(self, prompts: np.ndarray, cond: dict[str, Tensor] | None, frames: int | None = None, *,
                     generator: torch.Generator | None = None, **sampling) -> np.ndarray:
        """Continue prompts (stored layout, time first: audio [n, L], shorter than the trained clip)
        to `frames` latent frames (default: the trained length), streaming past it when the
        generator can: the prompt's codes are the samples' unchanged prefix. 1D latent grids only
        (audio, motion), with a generator that takes a `prefix` (autoregressive, hierarchical; only
        the hierarchical one streams past the trained length)."""
        grid = tuple(self.tokenizer.spec.grid)
        if len(grid) != 1 or "prefix" not in self.generator.sampling_options():
            raise ValueError(f"continuing a prompt needs a 1D latent grid and a generator that takes a prefix; "
                             f"this run has grid {grid} and generator {self.generator.config.name!r}")
        x = self.modality.to_model(prompts).to(self.device)               # [n, Lp, C]
        length = self.tokenizer.config.seq_len
        per_frame = length // grid[0]
        P = x.shape[1] // per_frame
        if not 1 <= P < grid[0]:
            raise ValueError(f"a prompt must hold 1 to {grid[0] - 1} latent frames ({per_frame} to "
                             f"{(grid[0] - 1) * per_frame} steps), got {x.shape[1]} steps")
        padded = torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1]))
        codes = self.tokenizer.encode(padded)[:, :P]
        context = self.generator.encode_condition(cond, generator=generator) if cond is not None else None
        total = grid[0] if frames is None else frames
        longer = {} if total == grid[0] else {"length": total}  # only a streaming generator takes it
        z = self.generator.sample(len(x), context, generator=generator, prefix=codes, **longer, **sampling)
        return self.modality.from_model(self._decode(z))

    def sample(self, rows: dict[str, np.ndarray], n: int, seed: int, dataset: Any,
               options: dict[str, Any] | None = None, batch_size: int = 256, prompts: np.ndarray | None = None,
               frames: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """n samples: one per row of `rows` (a split's entries without the examples) for a
        conditional generator, else n unconditional ones; with `prompts` (n of them), their
        continuations to `frames` latent frames (`continuation`). Returns the samples and the rows
        as the sampler was given them (`dataset.for_sampling`; empty when unconditional)."""
        conditional = self.generator.conditioner is not None
        given = dataset.for_sampling({k: v[:n] for k, v in rows.items()}) if conditional else {}
        if conditional and len(next(iter(given.values()), ())) < n:
            raise ValueError(f"{n} conditional samples asked for, but only "
                             f"{len(next(iter(given.values()), ()))} condition rows given")
        gen = torch.Generator(device=self.device).manual_seed(seed)
        cond = condition_tensors(dataset, given, self.generator) if conditional else None
        if conditional and hasattr(self.generator.conditioner, "layout_critic"):
            self.generator.conditioner.layout_critic = dataset.layout_critic()  # the data's placement rules
        if prompts is not None:
            if len(prompts) != n:
                raise ValueError(f"{len(prompts)} prompts for {n} samples")
            samples = self.continuation(prompts, cond, frames, generator=gen, **(options or {}))
        else:
            samples = self.generate(cond, n=n, generator=gen, batch_size=batch_size, **(options or {}))
        return samples, given
