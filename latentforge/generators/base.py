"""The generator contract: `loss(z, context)` for training, `sample(n, context)` for latents.

A generator is a backbone (a transformer over latent tokens and the condition), a head that turns
its features into a loss and into draws (heads.py: code cross-entropy, per-token diffusion; DiT's
adaLN output layer is its grid denoiser), and a sampler that drives the head (samplers.py: causal
decoding with a KV cache; masking.py: the parallel masked-decoding schedule; noise.py: ODE/DDIM).

`Generator.sample` is the one sampling template. It checks the request, lays out the condition
once for classifier-free guidance ([cond; null] rows, `Guidance`) and hands it to the family's
`draw`, whose model calls go through the guidance; no family mixes cfg_scale itself. A family
declares its sampling options as keyword-only arguments of `draw`; `sampling_options()` lists
them and `sample`'s published signature shows them (inspect.signature, help).

A generator owns its conditioner (if any), so a saved generator folder holds everything needed
to go from a condition to latents. Classifier-free guidance: during training the context of a
random fraction `p_uncond` of examples is swapped for the conditioner's learned null context.

Every registered config has a `tiny()` preset: a model that builds and samples in well under a
second, which the registry-driven contract test (tests/test_generator_contract.py) runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.config import ModelConfig
from latentforge.generators.guidance import Guidance, GuidanceSchedule
from latentforge.tokenizers.base import LatentNorm, LatentSpec


@dataclass
class GeneratorConfig(ModelConfig):
    kind = "generator"
    # the latents a family models: "discrete" codes (one per position, or `levels` residual
    # levels when residual is True) or "continuous" vectors of `channels`
    latents: ClassVar[str] = "discrete"
    residual: ClassVar[bool] = False
    grid: tuple[int, ...] = (8, 8)           # latent grid, from the tokenizer's LatentSpec
    conditioner: ConditionerConfig | None = None
    p_uncond: float = 0.1                    # condition dropout for classifier-free guidance

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")

    def fields_for(self, spec: LatentSpec, made_by: str) -> dict[str, Any]:
        """The fields that follow from a tokenizer's latents (grid, vocabulary, levels, channels),
        or a ValueError saying why this family cannot model them (`made_by` names the tokenizer)."""
        if spec.kind != self.latents:
            pick = ("a continuous bottleneck (gaussian)" if self.latents == "continuous" else
                    "a discrete quantizer (vq, fsq, lfq, gumbel; rvq for residual codes)")
            raise ValueError(f"generator {self.name!r} models {self.latents} latents, but {made_by} gives "
                             f"{spec.kind} ones: pick {pick} for it")
        if self.latents == "continuous":
            return {"grid": spec.grid, "channels": spec.channels}
        if spec.depth != 1 and not self.residual:
            raise ValueError(f"generator {self.name!r} models one discrete code per position, but {made_by} gives "
                             f"{spec.depth} levels: pick a single-level quantizer (vq, fsq, lfq, gumbel) for it, "
                             "or the hierarchical generator for residual codes")
        return {"grid": spec.grid, "vocab_size": spec.vocab_size, **({"levels": spec.depth} if self.residual else {})}

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


class Generator(nn.Module):
    config: GeneratorConfig
    conditioner: Conditioner | None
    latent_norm: LatentNorm | None

    def __init__(self) -> None:
        super().__init__()
        self.latent_norm = None  # continuous families build one: see build_latent_norm

    def __init_subclass__(cls, **kwargs) -> None:
        # A family that defines `draw` gets `sample` under its own signature (the template's
        # arguments plus the options `draw` declares), so inspect.signature and help() show the
        # options; the body is still the one template, Generator.sample.
        super().__init_subclass__(**kwargs)
        if "draw" in vars(cls):
            cls.sample = _published_sample(cls)

    def build_conditioner(self, dim: int | None = None) -> None:
        """Build `config.conditioner`. `dim` is the width of the generator's token inputs: a
        conditioner of another width gets a projection for its spatial map (see spatial_inputs)."""
        from latentforge import registry

        cfg = self.config.conditioner
        if cfg is not None and hasattr(cfg, "grid") and tuple(cfg.grid) != tuple(self.config.grid):
            # a conditioner that paints on the latent grid must use the generator's grid
            cfg = self.config.conditioner = dataclasses.replace(cfg, grid=tuple(self.config.grid))
        self.conditioner = None if cfg is None else registry.lookup("conditioner", cfg.name)[1](cfg)
        same = cfg is None or dim is None or dim == cfg.dim
        self.spatial_proj = nn.Identity() if same else nn.Linear(cfg.dim, dim)

    def build_latent_norm(self) -> None:
        """Continuous families learn in normalised units: `latent_norm` (tokenizers.base.LatentNorm,
        the one definition) is fitted on the training latents before training and saved with the
        weights. Checkpoints written before it existed keep their buffer names (latent_mean, ...):
        a load hook renames them."""
        self.latent_norm = LatentNorm(self.config.channels)

        def rename(module, state_dict, prefix, *args) -> None:
            LatentNorm.load_legacy_keys(state_dict, prefix, "latent_norm")

        self.register_load_state_dict_pre_hook(rename)

    def spatial_inputs(self, context: Context | None) -> Tensor | None:
        """The condition's map on the latent grid (P1's layout), [B, N, dim] in raster order, to
        add to the token inputs; None when the context has none."""
        if context is None or context.spatial is None:
            return None
        return self.spatial_proj(context.spatial)

    @property
    def context_dim(self) -> int | None:
        return None if self.conditioner is None else self.conditioner.dim

    def encode_condition(self, batch: dict[str, Tensor] | None,
                         generator: torch.Generator | None = None) -> Context | None:
        """Run the conditioner on the condition entries of a batch (None if unconditional).

        `generator` seeds the parts of the condition a conditioner samples (P1's layout).
        """
        if self.conditioner is None:
            return None
        if batch is None:
            raise ValueError(f"{type(self).__name__} is conditional ({self.config.conditioner.name}): "
                             "pass a condition")
        return self.conditioner(self.conditioner.select(batch), generator=generator)

    def drop_condition(self, context: Context | None) -> Context | None:
        """Classifier-free guidance training: replace a random p_uncond of contexts by the null one."""
        if context is None or not self.training or self.config.p_uncond == 0:
            return context
        keep = torch.rand(len(context), device=context.tokens.device) >= self.config.p_uncond
        return context.where(keep, self.conditioner.null(len(context)))

    # ------------------------------------------------------------------ latents

    def flat_codes(self, z: Tensor) -> Tensor:
        """Discrete latents: int64 codes [B, *grid] (or [B, *grid, Q] for Q > 1 residual levels) ->
        raster order, position-major [B, N·Q], or an error naming the shape."""
        levels = getattr(self.config, "levels", 1)
        shape = (*self.config.grid, levels) if levels > 1 else tuple(self.config.grid)
        if z.dtype != torch.long or tuple(z.shape[1:]) != shape:
            raise ValueError(f"expected int64 codes [B, {', '.join(map(str, shape))}], got {z.dtype} {list(z.shape)}")
        return z.reshape(z.shape[0], -1)

    def code_loss(self, nll: Tensor, context: Context | None) -> dict[str, Tensor]:
        """A code model's loss terms from its mean negative log-likelihood per token (nats)."""
        return self.add_condition_losses({"loss": nll, "bits_per_token": nll.detach() / math.log(2)}, context)

    @staticmethod
    def add_condition_losses(out: dict[str, Tensor], context: Context | None) -> dict[str, Tensor]:
        """Add the conditioner's own training terms (e.g. P1's layout NLL) to a generator's loss."""
        if context is not None and context.losses:
            out["loss"] = out["loss"] + sum(context.losses.values())
            out.update({k: v.detach() for k, v in context.losses.items()})
        return out

    def loss(self, z: Tensor, context: Context | None = None) -> dict[str, Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(self, n: int, context: Context | None = None, *, generator: torch.Generator | None = None,
               cfg_scale: float | Sequence[float] | GuidanceSchedule = 1.0, **options) -> Tensor:
        """Draw n latents [n, *grid] (codes) or [n, *grid, C] (continuous vectors).

        Args:
            context: the condition of each sample, from `encode_condition` (None if unconditional).
            generator: seeds every random draw: the same state gives the same samples.
            cfg_scale: classifier-free guidance u + s (c - u) on the model outputs; != 1 runs
                every model call on [cond; null] rows. A `GuidanceSchedule` sets the scale per step
                (an interval of the sampling progress, a ramp); unguided steps skip the null rows.
            options: the family's own settings (steps, temperature, ...), see `sampling_options`.
        """
        unknown = sorted(set(options) - self.sampling_options())
        if unknown:
            raise TypeError(f"{type(self).__name__}.sample got unknown option(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(sorted(self.sampling_options()))}")
        return self.draw(self.guidance(n, context, cfg_scale), generator=generator, **options)

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None) -> Tensor:
        """The family's sampler: guidance.n latents, every model call made through `guidance`."""
        raise NotImplementedError

    @classmethod
    def sampling_options(cls) -> set[str]:
        """Names `sample` accepts besides n, context and generator: cfg_scale and the family's options."""
        return {"cfg_scale", *(p.name for p in _draw_options(cls))}

    def guidance(self, n: int, context: Context | None,
                 cfg_scale: float | Sequence[float] | GuidanceSchedule = 1.0) -> Guidance:
        """Check a sampling request and lay out its condition once: [cond; null] when any scale != 1."""
        n = operator.index(n)
        if n < 1:
            raise ValueError(f"n must be >= 1 samples, got {n}")
        if self.conditioner is None and context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: pass context=None")
        if self.conditioner is not None and context is None:
            raise ValueError(f"{type(self).__name__} is conditional ({self.config.conditioner.name}): "
                             "pass a context (see encode_condition)")
        if context is not None and len(context) != n:
            raise ValueError(f"context has {len(context)} rows for n={n} samples")
        scales = list(cfg_scale) if isinstance(cfg_scale, Sequence) else [cfg_scale]
        if isinstance(cfg_scale, GuidanceSchedule):
            scales = [cfg_scale.scale]
        guided = any(s != 1.0 for s in scales)
        if guided and self.conditioner is None:
            raise ValueError("cfg_scale != 1 needs a conditional generator: classifier-free guidance contrasts "
                             "the condition with the conditioner's null context")
        if guided:
            context = Context.cat(context, self.conditioner.null(n))
        return Guidance(n, context, cfg_scale, guided)


def _draw_options(cls: type[Generator]) -> list[inspect.Parameter]:
    """The keyword-only parameters of a family's `draw` but `generator`: its sampling options."""
    params = inspect.signature(cls.draw).parameters.values()
    return [p for p in params if p.kind is p.KEYWORD_ONLY and p.name != "generator"]


def _published_sample(cls: type[Generator]) -> Callable[..., Tensor]:
    """Generator.sample for `cls`, with a signature listing the options its `draw` declares."""

    def sample(self, n, context=None, *, generator=None, cfg_scale=1.0, **options):
        return Generator.sample(self, n, context, generator=generator, cfg_scale=cfg_scale, **options)

    template = inspect.signature(Generator.sample)
    params = [p for p in template.parameters.values() if p.kind is not p.VAR_KEYWORD]
    sample.__signature__ = template.replace(parameters=params + _draw_options(cls))
    sample.__doc__ = f"{Generator.sample.__doc__}\n        {cls.__name__}'s sampler, `draw`: {cls.draw.__doc__}"
    sample.__qualname__ = f"{cls.__name__}.sample"
    return sample
