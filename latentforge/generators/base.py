"""The generator contract: `loss(z, context)` for training, `sample(n, context)` for latents.

A generator owns its conditioner (if any), so a saved generator folder holds everything needed
to go from a condition to latents. Classifier-free guidance: during training the context of a
random fraction `p_uncond` of examples is swapped for the conditioner's learned null context.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Conditioner, ConditionerConfig, Context
from latentforge.config import ModelConfig


@dataclass
class GeneratorConfig(ModelConfig):
    kind = "generator"
    grid: tuple[int, ...] = (8, 8)           # latent grid, from the tokenizer's LatentSpec
    conditioner: ConditionerConfig | None = None
    p_uncond: float = 0.1                    # condition dropout for classifier-free guidance

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {self.p_uncond}")

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


def init_code_io(embedding: nn.Embedding, head: nn.Linear) -> None:
    """A code model's input table N(0, 0.02) and a zero output layer: every model starts uniform,
    with initial loss log V."""
    nn.init.normal_(embedding.weight, std=0.02)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)


class Generator(nn.Module):
    config: GeneratorConfig
    conditioner: Conditioner | None

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

    def guidance_context(self, context: Context | None, cfg_scale: float) -> Context | None:
        """For guided sampling, append the null context: the batch becomes [cond; uncond]."""
        if context is None or cfg_scale == 1.0:
            return context
        return Context.cat(context, self.conditioner.null(len(context)))

    def flat_codes(self, z: Tensor) -> Tensor:
        """Discrete latents: int64 codes [B, *grid] -> raster order [B, N], or an error naming the shape."""
        grid = tuple(self.config.grid)
        if z.dtype != torch.long or tuple(z.shape[1:]) != grid:
            raise ValueError(f"expected int64 codes [B, {', '.join(map(str, grid))}], got {z.dtype} {list(z.shape)}")
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

    @torch.no_grad()
    def sample(self, n: int, context: Context | None = None, *, generator: torch.Generator | None = None,
               **sampling) -> Tensor:
        raise NotImplementedError
