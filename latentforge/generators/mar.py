"""MAR: masked autoregression over continuous tokens with a per-token diffusion head (P9, P33).

Legend: B batch, N = prod(grid) tokens, C token channels, D transformer width, W head width,
R = diffusion_batch_mul, M masked tokens in a batch (times R in training).

MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization") keeps the
masked-generation loop of MaskGIT but never quantizes: a token is a continuous C-vector, and its
distribution given the others is modelled by a small diffusion model instead of a softmax.

1. Backbone. One bidirectional transformer over all N tokens. Input at a known position is a
   projection of its (normalised) token, at an unknown position a learned mask embedding; both get
   the grid position and the condition's spatial map, and every block cross-attends to the
   context. Output z_i [B, N, D] summarises "what token i should look like given the rest".
   MAR itself splits this into an MAE encoder over the visible tokens and a decoder that pads mask
   tokens back in; that saves encoder compute at large widths (training masks 70-100% of tokens).
   We use the single transformer: it is the shared `nn.Transformer` unchanged, lets every row of a
   batch have its own mask ratio (the MAE split needs equal visible counts per row), and puts the
   spatial map and the cross-attended context on masked positions as naturally as on visible ones.
2. Head. `heads.DiffusionHead`, a residual MLP (MAR's SimpleMLPAdaLN), denoises one token: input
   x_t [M, C]; each block is x += gate * MLP(LN(x) * (1 + scale) + shift) with (shift, scale, gate)
   from SiLU(z_i + emb(t)), zero-initialised so that the head starts as the identity with a zero
   output. It predicts the noise eps (DDPM, cosine schedule, as MAR) or the velocity eps - x (flow
   matching), both from `noise.py`.
3. Training. Per example: a random order and a mask ratio r ~ N(1, 0.25^2) truncated to
   [mask_ratio_min, 1]; the first ceil(r N) tokens of the order are masked (`masking.py`). The loss is the head's
   denoising MSE on masked tokens only, each target repeated R times with fresh noise and times
   (the head is cheap, the transformer pass is not: R draws per pass reduce the loss's variance).
   A plain MSE head would regress to the conditional mean and blur multimodal tokens (notes.md
   pitfall 4); the diffusion head samples from the distribution instead.
4. Sampling = backbone + masked sampler + diffusion head. All tokens start unknown; a random order
   (from the torch.Generator) fixes which are revealed when (`masking.reveal_in_order`): at step k
   of K the number still unknown falls to about floor(N cos(pi/2 (k+1)/K)) (MaskGIT's cosine, the
   schedule masked.py uses too). Each step runs the backbone once and the head draws every newly
   revealed token from its z_i in `head_steps` DDIM (or Euler/Heun) steps. Classifier-free guidance
   runs the rows as [cond; null] and mixes the head's eps (or velocity) through the run's
   `Guidance`; the "linear" schedule grows the scale from 1 to cfg_scale with the fraction of
   tokens revealed (MAR, after Muse), since early tokens set the global layout where strong
   guidance hurts diversity most. `temperature` scales the head sampler's initial noise x_T
   (see `DiffusionHead.sample`).

Latents are normalised per channel by `latent_norm` (tokenizers.base.LatentNorm, as DiT's) so the
head's noise scale of 1 matches the data; samples are returned in the tokenizer's units.
Reference: github.com/LTH14/mar (models/mar.py, models/diffloss.py), read for its mechanism.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance, GuidanceSchedule, by_rows
from latentforge.generators.heads import DiffusionHead, RegressionHead
from latentforge.generators.masking import random_rank_mask, reveal_in_order, truncated_normal
from latentforge.generators.noise import DDPM, FlowMatching
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register


@dataclass
class MARConfig(GeneratorConfig):
    latents = "continuous"
    name: str = "mar"
    channels: int = 16                 # C, from the tokenizer's LatentSpec
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    head_width: int = 256
    head_depth: int = 3                # residual adaLN blocks in the diffusion head
    head_objective: Literal["ddpm", "flow", "mse"] = "ddpm"   # mse: MAR-3D's regression ablation
    diffusion_steps: int = 1000        # DDPM's T (training times)
    noise_schedule: Literal["linear", "cosine"] = "cosine"
    diffusion_batch_mul: int = 4       # R: noise draws per masked token per step
    mask_ratio_min: float = 0.7
    mask_ratio_std: float = 0.25       # of the truncated normal centred at 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_objective not in ("ddpm", "flow", "mse"):
            raise ValueError(f"head_objective must be 'ddpm', 'flow' or 'mse', got {self.head_objective!r}")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if self.mask_ratio_std <= 0 or self.diffusion_batch_mul < 1 or self.channels < 1:
            raise ValueError("mask_ratio_std must be > 0, diffusion_batch_mul and channels >= 1")

    @classmethod
    def tiny(cls) -> MARConfig:
        """Builds and samples in well under a second (tests)."""
        return cls(grid=(4, 4), channels=2, dim=32, depth=2, heads=2, head_width=32, head_depth=1)


@register("generator", "mar", MARConfig)
class MARGenerator(Generator):
    def __init__(self, config: MARConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        C, D = config.channels, config.dim
        self.in_proj = nn.Linear(C, D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos = GridPositionEmbedding(config.grid, D)
        self.transformer = Transformer(D, config.depth, config.heads, config.mlp_ratio, context_dim=self.context_dim)
        init_transformer_weights(self.transformer, config.depth)
        nn.init.normal_(self.mask_token, std=0.02)
        if config.head_objective == "mse":
            self.head = RegressionHead(C, D, config.head_width, config.head_depth)
        else:
            process = (DDPM(config.diffusion_steps, config.noise_schedule) if config.head_objective == "ddpm"
                       else FlowMatching())
            self.head = DiffusionHead(C, D, config.head_width, config.head_depth, process)
        self.build_latent_norm()

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    # ------------------------------------------------------------------ latents

    def _flatten(self, z: Tensor) -> Tensor:
        grid, C = tuple(self.config.grid), self.config.channels
        if not z.is_floating_point() or tuple(z.shape[1:]) != grid + (C,):
            raise ValueError(f"expected float latents [B, {', '.join(map(str, grid + (C,)))}], "
                             f"got {z.dtype} {list(z.shape)}")
        return self.latent_norm(z).reshape(z.shape[0], -1, C)  # [B, N, C]

    # ------------------------------------------------------------------ backbone

    def features(self, x: Tensor, mask: Tensor, context: Context | None,
                 context_kv: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Transformer features z [B, N, D] of normalised tokens x [B, N, C] with mask [B, N]
        (True = unknown: its input is the mask embedding, whatever x holds there)."""
        h = torch.where(mask[..., None], self.mask_token.to(x.dtype), self.in_proj(x)) + self.pos()
        spatial = self.spatial_inputs(context)
        if spatial is not None:
            h = h + spatial
        return self.transformer(h, context=None if context is None else context.tokens,
                                context_mask=None if context is None else context.mask, context_kv=context_kv)

    # ------------------------------------------------------------------ training

    def sample_mask_ratio(self, n: int, *, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> Tensor:
        """[n] mask ratios from the truncated normal centred at 1 on [mask_ratio_min, 1]."""
        cfg = self.config
        return truncated_normal(n, 1.0, cfg.mask_ratio_std, cfg.mask_ratio_min, 1.0, generator=generator, device=device)

    def random_mask(self, batch: int, *, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> Tensor:
        """[B, N] bool, True where masked: the first ceil(r N) tokens of a random order per example."""
        ratio = self.sample_mask_ratio(batch, generator=generator, device=device)
        return random_rank_mask(ratio, self.config.num_tokens, generator=generator)

    def head_loss(self, z: Tensor, target: Tensor, mask: Tensor, *, noise: Tensor | None = None,
                  t: Tensor | None = None) -> Tensor:
        """Denoising loss of the head on masked tokens only, each repeated R times.

        Args:
            z: transformer features [B, N, D]; target: normalised tokens [B, N, C]; mask: [B, N].
            noise: [R, B, N, C] and t: [R, B, N] (int64 for DDPM, float in (0, 1) for flow)
                override the random draws (for tests); entries at unmasked tokens are unused.
        """
        R, (B, N, C) = self.config.diffusion_batch_mul, target.shape
        # reads the mask off the device: eager only (under torch.compile it would be one more graph break)
        if not torch.compiler.is_compiling() and not mask.any():
            raise ValueError("no masked token: the MAR loss is defined on masked tokens only")
        if noise is None:
            noise = torch.randn(R, B, N, C, device=target.device, dtype=target.dtype)
        if t is None:
            t = self.head.process.sample_time(R * B * N, device=target.device).view(R, B, N)
        sel = mask.expand(R, B, N)                      # [R, B, N]
        x0 = target.expand(R, B, N, C)[sel]             # [R*M, C]
        cond = z.expand(R, *z.shape)[sel]               # [R*M, D]
        return self.head.loss(cond, x0, noise[sel], t[sel])

    def loss(self, z: Tensor, context: Context | None = None, *, mask: Tensor | None = None,
             noise: Tensor | None = None, t: Tensor | None = None) -> dict[str, Tensor]:
        """Masked-token diffusion loss; `mask` [B, N] bool, `noise`, `t` override the draws (tests)."""
        x = self._flatten(z)
        if mask is None:
            mask = self.random_mask(x.shape[0], device=x.device)
        feats = self.features(x, mask, self.drop_condition(context))
        out = {"loss": self.head_loss(feats, x, mask, noise=noise, t=t),
               "mask_ratio": mask.float().mean().detach()}
        return self.add_condition_losses(out, context)

    # ------------------------------------------------------------------ sampling

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, steps: int = 8,
             head_steps: int = 50, temperature: float = 1.0, cfg_schedule: Literal["constant", "linear"] = "linear",
             eta: float = 0.0, flow_method: Literal["euler", "heun"] = "euler",
             order: Literal["random", "raster", "reverse"] = "random") -> Tensor:
        """Latent grids [n, *grid, C] in `steps` masked-generation steps.

        Args:
            steps: K, backbone passes; tokens revealed per pass follow `masking.reveal_counts`.
            head_steps: denoising steps of the head per revealed token (DDIM or flow ODE).
            temperature: scale of the head's initial noise (1 = the learned distribution).
            cfg_schedule: "linear" ramps the guidance scale from 1 to cfg_scale with the fraction of
                revealed tokens (reaching cfg_scale at the last step), "constant" does not. A
                `GuidanceSchedule` given as cfg_scale replaces it (its progress: that same fraction).
            eta: DDIM stochasticity (0 = deterministic; DDPM heads only); flow_method: "euler" or "heun".
            order: which tokens are revealed when: a random permutation per sample (MAR), or the
                fixed raster order (or its reverse), e.g. to check that a set's samples do not
                depend on the order (MAR-3D, P9).
        """
        if cfg_schedule not in ("constant", "linear"):
            raise ValueError(f"cfg_schedule must be 'constant' or 'linear', got {cfg_schedule!r}")
        if order not in ("random", "raster", "reverse"):
            raise ValueError(f"order must be 'random', 'raster' or 'reverse', got {order!r}")
        g, n = guidance, guidance.n
        if cfg_schedule == "linear" and not isinstance(g.scale, GuidanceSchedule):
            g = dataclasses.replace(g, scale=GuidanceSchedule(g.scale, ramp="linear"))
        N, C = self.config.num_tokens, self.config.channels
        device = self.latent_norm.mean.device
        method = flow_method if isinstance(self.head.process, FlowMatching) else None
        ctx_kvs = by_rows(lambda ctx: None if ctx is None else self.transformer.context_kv(ctx.tokens))
        order_ids = torch.rand(n, N, generator=generator, device=device).argsort(-1)  # reveal order [n, N]
        if order != "random":
            order_ids = torch.arange(N, device=device).expand(n, N)
            order_ids = order_ids.flip(-1) if order == "reverse" else order_ids
        tokens = torch.zeros(n, N, C, device=device)
        known = torch.zeros(n, N, dtype=torch.bool, device=device)
        revealed = 0
        for idx in reveal_in_order(order_ids, steps):                                                  # [n, k]
            revealed += idx.shape[1]
            step = g.at(revealed, N)  # progress: the fraction of tokens known once this step's are drawn
            feats = self.features(step.rows_of(tokens), step.rows_of(~known), step.context, ctx_kvs(step))  # [rows, N, D]
            z = feats.gather(1, step.rows_of(idx)[..., None].expand(-1, -1, feats.shape[-1]))               # [rows, k, D]
            new = self.head.sample(z.reshape(-1, z.shape[-1]), step, scale=step.scale, generator=generator,
                                   temperature=temperature, steps=head_steps, eta=eta, method=method)  # [n*k, C]
            tokens.scatter_(1, idx[..., None].expand(-1, -1, C), new.view(n, -1, C).to(tokens.dtype))
            known.scatter_(1, idx, True)
        out = self.latent_norm.inverse(tokens)
        return out.view(n, *self.config.grid, C)
