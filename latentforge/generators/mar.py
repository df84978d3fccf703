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
2. Head. A residual MLP (MAR's SimpleMLPAdaLN) denoises one token: input x_t [M, C]; each block is
   x += gate * MLP(LN(x) * (1 + scale) + shift) with (shift, scale, gate) from SiLU(z_i + emb(t)),
   zero-initialised so that the head starts as the identity with a zero output. It predicts the
   noise eps (DDPM, cosine schedule, as MAR) or the velocity eps - x (flow matching), both from
   `noise.py`.
3. Training. Per example: a random order and a mask ratio r ~ N(1, 0.25^2) truncated to
   [mask_ratio_min, 1]; the first ceil(r N) tokens of the order are masked. The loss is the head's
   denoising MSE on masked tokens only, each target repeated R times with fresh noise and times
   (the head is cheap, the transformer pass is not: R draws per pass reduce the loss's variance).
   A plain MSE head would regress to the conditional mean and blur multimodal tokens (notes.md
   pitfall 4); the diffusion head samples from the distribution instead.
4. Sampling. All tokens start unknown; a random order (from the torch.Generator) fixes which are
   revealed when. At step k of K the number still unknown falls to floor(N cos(pi/2 (k+1)/K))
   (MaskGIT's cosine, at least one revealed per step, all at the last); each newly revealed token
   is drawn by the head from its z_i in `head_steps` DDIM (or Euler/Heun) steps. Classifier-free
   guidance runs the batch as [cond; uncond] and mixes the head's eps (or velocity) with `guide`;
   the "linear" schedule grows the scale from 1 to cfg_scale with the fraction of tokens revealed
   (MAR, after Muse), since early tokens set the global layout where strong guidance hurts
   diversity most. `temperature` scales the head sampler's initial noise x_T (see `_draw`).

Latents are normalised per channel with the buffers latent_mean / latent_std (`fit_normalization`)
so the head's noise scale of 1 matches the data; samples are returned in the tokenizer's units.
Reference: github.com/LTH14/mar (models/mar.py, models/diffloss.py), read for its mechanism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.noise import DDPM, FlowMatching
from latentforge.generators.sampling import guide
from latentforge.nn.embeddings import GridPositionEmbedding, TimestepEmbedding
from latentforge.nn.transformer import MLP, Transformer, init_transformer_weights
from latentforge.registry import register

# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def truncated_normal(n: int, mean: float, std: float, low: float, high: float, *,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """[n] draws of N(mean, std^2) restricted to [low, high], by inverse-CDF (exact, no rejection)."""
    lo, hi = (torch.special.ndtr(torch.tensor((v - mean) / std, dtype=torch.float64)) for v in (low, high))
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    x = mean + std * torch.special.ndtri(lo.to(u.device) + (hi - lo).to(u.device) * u)
    return x.clamp(low, high).float()


def reveal_schedule(num_tokens: int, steps: int) -> list[int]:
    """Tokens revealed at each of `steps` sampling steps (MaskGIT's cosine; MAR's clamps).

    After step k the number still unknown is floor(N cos(pi/2 (k+1)/K)), kept >= 1 and at least
    one below the previous count until the last step, which reveals everything left. With more
    steps than tokens some steps reveal nothing (and are skipped by the sampler).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    masked, out = num_tokens, []
    for k in range(steps):
        if k == steps - 1:
            nxt = 0
        else:
            nxt = max(1, min(masked - 1, math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))))
        out.append(masked - nxt)
        masked = nxt
    return out


# ----------------------------------------------------------------------------------------------
# Per-token diffusion head
# ----------------------------------------------------------------------------------------------


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class HeadBlock(nn.Module):
    """x += gate * MLP(adaLN(x)), with (shift, scale, gate) from the condition y."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, width)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.ada(y).chunk(3, dim=-1)  # 3 x [M, W]
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


class DiffusionHead(nn.Module):
    """Denoiser of one token given its transformer feature: (x_t [M, C], t [M], z [M, D]) -> [M, C]."""

    def __init__(self, channels: int, cond_dim: int, width: int, depth: int, time_scale: float) -> None:
        super().__init__()
        self.in_proj = nn.Linear(channels, width)
        self.time_emb = TimestepEmbedding(width, scale=time_scale)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.blocks = nn.ModuleList(HeadBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, channels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in self.time_emb.mlp[0], self.time_emb.mlp[2]:
            nn.init.normal_(lin.weight, std=0.02)
        # adaLN-Zero (DiT): every block starts as the identity and the output at zero
        for lin in [b.ada[-1] for b in self.blocks] + [self.out_ada[-1], self.out]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        y = self.time_emb(t) + self.cond_proj(z)  # [M, W]
        h = self.in_proj(x)
        for block in self.blocks:
            h = block(h, y)
        shift, scale = self.out_ada(y).chunk(2, dim=-1)
        return self.out(modulate(self.out_norm(h), shift, scale))  # [M, C]


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


@dataclass
class MARConfig(GeneratorConfig):
    name: str = "mar"
    channels: int = 16                 # C, from the tokenizer's LatentSpec
    dim: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    head_width: int = 256
    head_depth: int = 3                # residual adaLN blocks in the diffusion head
    head_objective: Literal["ddpm", "flow"] = "ddpm"
    diffusion_steps: int = 1000        # DDPM's T (training times)
    noise_schedule: Literal["linear", "cosine"] = "cosine"
    diffusion_batch_mul: int = 4       # R: noise draws per masked token per step
    mask_ratio_min: float = 0.7
    mask_ratio_std: float = 0.25       # of the truncated normal centred at 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head_objective not in ("ddpm", "flow"):
            raise ValueError(f"head_objective must be 'ddpm' or 'flow', got {self.head_objective!r}")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if self.mask_ratio_std <= 0 or self.diffusion_batch_mul < 1 or self.channels < 1:
            raise ValueError("mask_ratio_std must be > 0, diffusion_batch_mul and channels >= 1")


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
        if config.head_objective == "ddpm":
            self.process: DDPM | FlowMatching = DDPM(config.diffusion_steps, config.noise_schedule)
            time_scale = 1000.0 / config.diffusion_steps  # integer times, brought to [0, 1000)
        else:
            self.process = FlowMatching()
            time_scale = 1000.0  # t in (0, 1)
        self.head = DiffusionHead(C, D, config.head_width, config.head_depth, time_scale)
        self.register_buffer("latent_mean", torch.zeros(C))
        self.register_buffer("latent_std", torch.ones(C))

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    # ------------------------------------------------------------------ latents

    @torch.no_grad()
    def fit_normalization(self, z: Tensor) -> None:
        """Set the per-channel mean and std from a sample of latents [B, *grid, C]."""
        flat = z.detach().float().reshape(-1, z.shape[-1])
        self.latent_mean.copy_(flat.mean(0))
        self.latent_std.copy_(flat.std(0).clamp_min(1e-6))

    def _flatten(self, z: Tensor) -> Tensor:
        grid, C = tuple(self.config.grid), self.config.channels
        if not z.is_floating_point() or tuple(z.shape[1:]) != grid + (C,):
            raise ValueError(f"expected float latents [B, {', '.join(map(str, grid + (C,)))}], "
                             f"got {z.dtype} {list(z.shape)}")
        return ((z - self.latent_mean) / self.latent_std).reshape(z.shape[0], -1, C)  # [B, N, C]

    # ------------------------------------------------------------------ training

    def sample_mask_ratio(self, n: int, *, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> Tensor:
        """[n] mask ratios from the truncated normal centred at 1 on [mask_ratio_min, 1]."""
        cfg = self.config
        return truncated_normal(n, 1.0, cfg.mask_ratio_std, cfg.mask_ratio_min, 1.0, generator=generator, device=device)

    def random_mask(self, batch: int, *, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> Tensor:
        """[B, N] bool, True where masked: the first ceil(r N) tokens of a random order per example."""
        N = self.config.num_tokens
        count = torch.ceil(self.sample_mask_ratio(batch, generator=generator, device=device) * N - 1e-6)
        rank = torch.rand(batch, N, generator=generator, device=device).argsort(-1).argsort(-1)
        return rank < count[:, None]

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

    def predict(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """The head's eps (DDPM) or velocity (flow) for noisy tokens x_t [M, C] at times t [M].

        DDPM: eps = sqrt(1 - abar) x_t + sqrt(abar) F(x_t, t, z). The skip makes eps exact at pure
        noise, where DDIM's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) would otherwise multiply
        the head's error by 1 / sqrt(abar_{T-1}) (~2e4 for the cosine schedule) in the first step;
        the loss is still the eps MSE, and x0 = sqrt(abar) x_t - sqrt(1 - abar) F (F is -v).
        """
        out = self.head(x_t, t, z)
        if isinstance(self.process, DDPM):
            abar = self.process.alpha_bar.to(t.device)[t].to(x_t.dtype)[:, None]  # [M, 1]
            out = (1 - abar).sqrt() * x_t + abar.sqrt() * out
        return out

    def head_loss(self, z: Tensor, target: Tensor, mask: Tensor, *, noise: Tensor | None = None,
                  t: Tensor | None = None) -> Tensor:
        """Denoising loss of the head on masked tokens only, each repeated R times.

        Args:
            z: transformer features [B, N, D]; target: normalised tokens [B, N, C]; mask: [B, N].
            noise: [R, B, N, C] and t: [R, B, N] (int64 for DDPM, float in (0, 1) for flow)
                override the random draws (for tests); entries at unmasked tokens are unused.
        """
        R, (B, N, C) = self.config.diffusion_batch_mul, target.shape
        if not mask.any():
            raise ValueError("no masked token: the MAR loss is defined on masked tokens only")
        if noise is None:
            noise = torch.randn(R, B, N, C, device=target.device, dtype=target.dtype)
        if t is None:
            t = self.process.sample_time(R * B * N, device=target.device).view(R, B, N)
        sel = mask.expand(R, B, N)                      # [R, B, N]
        x0 = target.expand(R, B, N, C)[sel]             # [R*M, C]
        eps = noise[sel]
        tt = t[sel]
        cond = z.expand(R, *z.shape)[sel]               # [R*M, D]
        pred = self.predict(self.process.noisy(x0, eps, tt), tt, cond)
        goal = eps if isinstance(self.process, DDPM) else FlowMatching.target(x0, eps)
        return (pred.float() - goal.float()).pow(2).mean()

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

    def _draw(self, z: Tensor, cfg_scale: float, guided: bool, *, generator: torch.Generator | None,
              temperature: float, head_steps: int, eta: float, flow_method: Literal["euler", "heun"]) -> Tensor:
        """Draw one token per feature row with the head: z [M, D] (or [2M, D] = [cond; uncond] when
        guided) -> [M, C].

        `temperature` multiplies the sampler's initial noise x_T. For DDIM with eta = 0 and for the
        flow ODE that noise is the only randomness, so tau < 1 concentrates samples toward the
        modes. MAR scales the per-step noise of its ancestral sampler instead; with eta > 0 here the
        per-step noise is not scaled (DDPM.sample has no temperature argument).
        """
        M = z.shape[0] // 2 if guided else z.shape[0]
        noise = temperature * torch.randn(M, self.config.channels, generator=generator, device=z.device)

        def predict(x: Tensor, t: Tensor) -> Tensor:
            if not guided:
                return self.predict(x, t, z).float()
            out = self.predict(torch.cat([x, x]), torch.cat([t, t]), z).float()  # same noise in both halves
            return guide(out, cfg_scale) if cfg_scale != 1.0 else out[:M]

        if isinstance(self.process, DDPM):
            return self.process.sample(predict, noise, head_steps, eta=eta, generator=generator)
        return self.process.sample(predict, noise, head_steps, method=flow_method)

    @torch.no_grad()
    def sample(self, n: int, context: Context | None = None, *, generator: torch.Generator | None = None,
               steps: int = 8, head_steps: int = 50, temperature: float = 1.0, cfg_scale: float = 1.0,
               cfg_schedule: Literal["constant", "linear"] = "linear", eta: float = 0.0,
               flow_method: Literal["euler", "heun"] = "euler") -> Tensor:
        """Draw n latent grids [n, *grid, C] in `steps` masked-generation steps.

        Args:
            steps: K, transformer passes; tokens revealed per pass follow `reveal_schedule`.
            head_steps: denoising steps of the head per revealed token (DDIM or flow ODE).
            temperature: scale of the head's initial noise (1 = the learned distribution).
            cfg_scale: classifier-free guidance on the head's eps / velocity; the batch runs
                [cond; uncond]. cfg_schedule "linear" ramps it from 1 to cfg_scale with the
                fraction of revealed tokens (reaching cfg_scale at the last step), "constant" does not.
            eta: DDIM stochasticity (0 = deterministic); flow_method: "euler" or "heun".
        """
        if self.conditioner is not None and context is None:
            raise ValueError("this generator is conditional: pass a context (see encode_condition)")
        if context is not None and len(context) != n:
            raise ValueError(f"context has {len(context)} rows for n={n} samples")
        if cfg_schedule not in ("constant", "linear"):
            raise ValueError(f"cfg_schedule must be 'constant' or 'linear', got {cfg_schedule!r}")
        ctx = self.guidance_context(context, cfg_scale)
        guided = ctx is not None and len(ctx) == 2 * n
        copies = 2 if guided else 1
        N, C = self.config.num_tokens, self.config.channels
        device = self.latent_mean.device
        ctx_kv = None if ctx is None else self.transformer.context_kv(ctx.tokens)
        order = torch.rand(n, N, generator=generator, device=device).argsort(-1)  # reveal order [n, N]
        tokens = torch.zeros(n, N, C, device=device)
        known = torch.zeros(n, N, dtype=torch.bool, device=device)
        revealed = 0
        for count in reveal_schedule(N, steps):
            if count == 0:
                continue
            feats = self.features(tokens.repeat(copies, 1, 1), ~known.repeat(copies, 1), ctx, ctx_kv)  # [rows, N, D]
            idx = order[:, revealed : revealed + count]                                                # [n, k]
            z = feats.gather(1, idx.repeat(copies, 1)[..., None].expand(-1, -1, feats.shape[-1]))      # [rows, k, D]
            revealed += count
            scale = cfg_scale if cfg_schedule == "constant" else 1 + (cfg_scale - 1) * revealed / N
            new = self._draw(z.reshape(-1, z.shape[-1]), scale, guided, generator=generator,
                             temperature=temperature, head_steps=head_steps, eta=eta, flow_method=flow_method)
            tokens.scatter_(1, idx[..., None].expand(-1, -1, C), new.view(n, count, C).to(tokens.dtype))
            known.scatter_(1, idx, True)
        out = tokens * self.latent_std + self.latent_mean
        return out.view(n, *self.config.grid, C)
