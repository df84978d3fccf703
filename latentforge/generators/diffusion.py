"""Diffusion transformer (DiT) over continuous latents: flow matching (P16) or DDPM, with P20's
deferred masking for cheap training.

Legend: B batch, grid the latent grid, C latent channels, p patch size, N patch tokens,
P = p^k * C values per patch (k = grid rank), D width, L context tokens, K kept tokens.

Training (`loss`), for latents z [B, *grid, C]:
    x = latent_norm(z)                              per-channel normalisation fitted on data
    t, eps ~ the noise process (noise.py)          flow: logit-normal t in (0, 1); DDPM: t in [0, T)
    x_t = noisy(x, eps, t) -> patchify -> [B, N, P] -> linear + grid position (+ layout map) -> [B, N, D]
    c = TimestepEmbedding(t) + Linear(masked mean of the context tokens)                      [B, D]
        (`cross_attention: false` keeps only this path, as the original class-conditional DiT)
    patch mixer (P20): `patch_mixer_depth` adaLN blocks on all N tokens
    masking (P20): keep a random K = round((1 - mask_ratio) N) tokens per example         [B, K, D]
    backbone: `depth` adaLN-Zero blocks (nn/adaln.py): self-attention + MLP modulated by c,
              cross-attention to the context tokens; with `moe_experts` (P20) every other
              block's MLP is an expert-choice mixture of experts (nn/moe.py)
    dropped positions get the mask token (only so the output has every patch)            [B, N, D]
    final adaLN layer + linear -> [B, N, P]: the velocity eps - x (flow) or eps (DDPM)
    loss = MSE to the target, averaged over the kept patches only
Masking runs only in training mode; the mixer lets every kept token carry information from the
dropped ones, which is what makes P20's "deferred" masking better than dropping tokens up front.
MicroDiT then fine-tunes briefly with mask_ratio 0 (set it on the config between the stages).

Sampling (`sample`) starts from Gaussian noise drawn with the caller's torch.Generator and
integrates the flow ODE (Euler, Heun or DPM-Solver++(2M)) or runs DDIM / DPM-Solver++(2M)
(`noise.denoise`), every model call made through the run's `Guidance` (classifier-free guidance on
the velocity / noise of the [cond; null] rows; a `GuidanceSchedule` reads each call's noise level,
and calls outside its interval run the cond rows alone); the result is un-normalised back to
latent scale. DDIM and DPM-Solver++ clip their x0 guesses to the largest normalised latent seen
when `latent_norm` was fitted.
The context's pooled vector and cross-attention keys/values are computed once per sampling run.

Grids may be 1D, 2D or 3D; patches larger than 1 cover p x p cells of the last two axes (the
image plane: a video's (T, H, W) grid becomes T x H/p x W/p tokens). A conditioner's spatial map
(P1's layout, on the latent grid) is averaged over each patch before it is added to the inputs.

Long videos (P4 ARLON's ingredients, `context_frames`, `guide_channels`): on a (T, H, W) grid the
first k latent frames may be given clean (a share `context_p` of training examples gets them, and
the loss skips them; sampling takes them as `prefix`, so a clip continues the previous chunk's
last frames), and a guide map [B, *grid, Cg] (the coarse latent an AR model drew, upsampled to the
grid) turns the per-example adaLN vector into one per token: each token's norms are modulated by
the guide at its place ("semantic injection"). Training adds Gaussian noise of std `guide_noise`
to the guide (ARLON's uncertainty sampling), so the model tolerates the AR model's mistakes.

Positions: a learned factorised table added to the inputs (DiT), or P16 Step-Video's 3D RoPE
(`position: rope`, nn/rope.py): no table, the head dimension split over the grid's axes and
queries and keys rotated in every self-attention, so full attention over the spatio-temporal
tokens sees relative offsets in time, height and width; or DiT's fixed 2D sine-cosine table
(`position: sincos`), which peers/dit.py uses to load published DiT weights exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from latentforge.conditioning.base import Context
from latentforge.config import ADDED_LATER
from latentforge.generators.base import Generator, GeneratorConfig
from latentforge.generators.guidance import Guidance, by_rows
from latentforge.generators.noise import DDPM, FlowMatching, denoise
from latentforge.nn.adaln import AdaLNBlock, AdaLNFinal
from latentforge.nn.embeddings import GridPositionEmbedding, SinCosPositionEmbedding, TimestepEmbedding
from latentforge.nn.rope import GridRoPE
from latentforge.nn.transformer import init_transformer_weights
from latentforge.registry import register


@dataclass
class DiTConfig(GeneratorConfig):
    latents = "continuous"
    name: str = "dit"
    channels: int = 4                    # latent channels C, from the tokenizer's LatentSpec
    patch: int = 1                       # p x p patches of the last two grid axes become one token
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    objective: Literal["flow", "ddpm"] = "flow"
    shift: float = 1.0                   # flow time shift; RAE uses sqrt(prod(grid) * channels / 4096)
    logit_mean: float = 0.0              # flow training times: sigmoid(N(logit_mean, logit_std^2))
    logit_std: float = 1.0
    ddpm_steps: int = 1000
    ddpm_schedule: Literal["linear", "cosine"] = "linear"
    patch_mixer_depth: int = 0           # P20: blocks on all patches before masking
    mask_ratio: float = 0.0              # P20: fraction of patch tokens dropped in training
    cross_attention: bool = True         # False: the context reaches the blocks only pooled, through adaLN
    moe_experts: int = 0                 # P20: > 0 puts expert-choice MoE MLPs in every other backbone block
    moe_top_k: float = 1.0               # experts per token on average (expert capacity T * k / E)
    # rope: P16's 3D RoPE; sincos: DiT's fixed 2D sine-cosine table (a saved buffer, so a checkpoint's loads as given)
    position: Literal["learned", "rope", "sincos"] = field(default="learned", metadata=ADDED_LATER)
    rope_base: float = field(default=10000.0, metadata=ADDED_LATER)
    guide_channels: int = field(default=0, metadata=ADDED_LATER)       # P4: per-token guide map width (0: none)
    guide_noise: float = field(default=0.0, metadata=ADDED_LATER)      # P4: std of training noise on the guide
    context_frames: int = field(default=0, metadata=ADDED_LATER)       # leading latent frames given clean
    context_p: float = field(default=0.5, metadata=ADDED_LATER)        # share of training examples given them
    # P6 RAE's DDT head: a wide, shallow stack after the trunk that re-embeds x_t and is modulated per
    # token by SiLU(trunk output + time/condition vector); 0 = the final layer reads the trunk
    head_width: int = field(default=0, metadata=ADDED_LATER)
    head_depth: int = field(default=2, metadata=ADDED_LATER)
    # what an exact DiT (Peebles & Xie) or diffusers DiT port needs (peers/dit.py): the LayerNorm epsilon of the
    # blocks and the final layer (DiT: 1e-6), the MLP norm's alone when set (diffusers: its config's norm_eps),
    # and the timestep embedding's frequency spacing (nn/embeddings.py; DiT 0, diffusers 1)
    norm_eps: float = field(default=1e-5, metadata=ADDED_LATER)
    mlp_norm_eps: float | None = field(default=None, metadata=ADDED_LATER)
    time_freq_shift: float = field(default=0.0, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.objective not in ("flow", "ddpm"):
            raise ValueError(f"objective must be 'flow' or 'ddpm', got {self.objective!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.moe_experts < 0 or (self.moe_experts and not 0 < self.moe_top_k <= self.moe_experts):
            raise ValueError(f"need moe_experts >= 0 and 0 < moe_top_k <= moe_experts, "
                             f"got {self.moe_experts}, {self.moe_top_k}")
        if self.patch < 1:
            raise ValueError(f"patch must be >= 1, got {self.patch}")
        if self.patch > 1 and (len(self.grid) < 2 or any(n % self.patch for n in self.grid[-2:])):
            raise ValueError(f"patch {self.patch} needs a 2D or 3D grid whose last two sizes it divides, "
                             f"got grid {tuple(self.grid)}")
        if self.position not in ("learned", "rope", "sincos"):
            raise ValueError(f"position must be 'learned', 'rope' or 'sincos', got {self.position!r}")
        if self.position == "sincos" and (len(self.patch_grid) != 2 or self.dim % 4):
            raise ValueError(f"sincos positions need a 2D patch grid and dim divisible by 4, got patch grid "
                             f"{self.patch_grid}, dim {self.dim}")
        if self.head_width < 0 or (self.head_width and (self.head_depth < 1 or self.head_width % self.heads)):
            raise ValueError(f"head_width must be 0 or a multiple of heads ({self.heads}) with head_depth >= 1, "
                             f"got {self.head_width}, {self.head_depth}")
        if self.guide_channels < 0 or self.guide_noise < 0:
            raise ValueError(f"guide_channels and guide_noise must be >= 0, got {self.guide_channels}, {self.guide_noise}")
        if self.context_frames:
            if len(self.grid) != 3 or not 0 < self.context_frames < self.grid[0]:
                raise ValueError(f"context_frames {self.context_frames} needs a (T, H, W) grid with more frames, "
                                 f"got grid {tuple(self.grid)}")
            if not 0 < self.context_p <= 1 or self.mask_ratio > 0:
                raise ValueError(f"context_frames needs 0 < context_p <= 1 and no token masking, got context_p "
                                 f"{self.context_p}, mask_ratio {self.mask_ratio}")

    @classmethod
    def tiny(cls) -> DiTConfig:
        """Builds and samples in well under a second (tests)."""
        return cls(grid=(4, 4), channels=2, dim=32, depth=2, heads=2)

    @property
    def patch_grid(self) -> tuple[int, ...]:
        lead = len(self.grid) - 2 if self.patch > 1 else len(self.grid)
        return tuple(self.grid[:lead]) + tuple(n // self.patch for n in self.grid[lead:])


class _Condition(NamedTuple):
    """What the blocks read from a context, computed once per loss call or sampling run."""

    vector: Tensor | None                   # [B, D] pooled context, added to the time embedding
    kv: list[tuple[Tensor, Tensor]] | None  # per block cross-attention keys and values
    mask: Tensor | None                     # [B, L] context mask
    spatial: Tensor | None                  # [B, N, D] layout map pooled to patches


@register("generator", "dit", DiTConfig)
class DiTGenerator(Generator):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.build_conditioner(config.dim)
        D, C = config.dim, config.channels
        self.patch_dim = config.patch ** 2 * C
        if config.objective == "flow":
            self.process: FlowMatching | DDPM = FlowMatching(config.logit_mean, config.logit_std, config.shift)
        else:
            self.process = DDPM(config.ddpm_steps, config.ddpm_schedule)
        self.build_latent_norm()

        self.in_proj = nn.Linear(self.patch_dim, D)
        if config.position == "rope":
            self.rope = GridRoPE(config.patch_grid, D // config.heads, config.rope_base)
        elif config.position == "sincos":
            self.pos = SinCosPositionEmbedding(config.patch_grid, D)
        else:
            self.pos = GridPositionEmbedding(config.patch_grid, D)
        self.time_emb = TimestepEmbedding(D, scale=self.process.time_scale, freq_shift=config.time_freq_shift)
        self.context_proj = None if self.conditioner is None else nn.Linear(self.context_dim, D)
        cross_dim = self.context_dim if config.cross_attention else None
        args = (D, config.heads, config.mlp_ratio, D, cross_dim)
        eps = {"eps": config.norm_eps, "mlp_eps": config.mlp_norm_eps}
        self.mixer = nn.ModuleList(AdaLNBlock(*args, **eps) for _ in range(config.patch_mixer_depth))
        # MicroDiT alternates dense and MoE MLPs: blocks 1, 3, 5, ... get the experts
        self.blocks = nn.ModuleList(AdaLNBlock(*args, experts=config.moe_experts if i % 2 else 0,
                                               expert_top_k=config.moe_top_k, **eps) for i in range(config.depth))
        # fills dropped positions after the backbone; the loss skips them, so it gets no gradient
        # (as in MicroDiT) and exists only to give the output every patch
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        # P4's semantic injection: the guide's patch -> a per-token addition to the adaLN vector
        self.guide_proj = nn.Linear(config.patch ** 2 * config.guide_channels, D) if config.guide_channels else None
        W = config.head_width or D
        self.head = DDTHead(config, self.patch_dim) if config.head_width else None
        self.final = AdaLNFinal(W, self.patch_dim, W, eps=config.norm_eps)

        total = config.depth + config.patch_mixer_depth
        init_transformer_weights(self.mixer, total)
        init_transformer_weights(self.blocks, total)
        for block in [*self.mixer, *self.blocks]:
            block.zero_init()
        nn.init.normal_(self.time_emb.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_emb.mlp[2].weight, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    # ------------------------------------------------------------------ latent layout and scale

    def _check(self, z: Tensor) -> None:
        want = (*self.config.grid, self.config.channels)
        if not z.is_floating_point() or tuple(z.shape[1:]) != want:
            raise ValueError(f"expected float latents [B, {', '.join(map(str, want))}], got {z.dtype} {list(z.shape)}")

    def patchify(self, z: Tensor) -> Tensor:
        """[B, *grid, C] -> [B, N, P] patch tokens in raster order."""
        p = self.config.patch
        if p == 1:
            return z.reshape(z.shape[0], -1, z.shape[-1])
        return rearrange(z, "b ... (h p) (w q) c -> b (... h w) (p q c)", p=p, q=p)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, N, P] -> [B, *grid, C]; the inverse of patchify."""
        p = self.config.patch
        if p == 1:
            return x.reshape(x.shape[0], *self.config.grid, -1)
        return rearrange(x.reshape(x.shape[0], *self.config.patch_grid, -1), "b ... h w (p q c) -> b ... (h p) (w q) c",
                         p=p, q=p)

    def _pool_spatial(self, spatial: Tensor) -> Tensor:
        """A map on the latent grid [B, prod(grid), D] -> its mean over each patch [B, N, D]."""
        p = self.config.patch
        if p == 1:
            return spatial
        grid = spatial.reshape(spatial.shape[0], *self.config.grid, -1)
        return reduce(grid, "b ... (h p) (w q) d -> b (... h w) d", "mean", p=p, q=p)

    # ------------------------------------------------------------------ network

    def _prepare(self, context: Context | None) -> _Condition:
        if context is None or self.conditioner is None:
            return _Condition(None, None, None, None)
        mask = context.mask
        weights = mask.to(context.tokens.dtype)[..., None]                              # [B, L, 1]
        pooled = (context.tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)      # [B, Dc]
        kv = ([block.cross.context_kv(context.tokens) for block in [*self.mixer, *self.blocks]]
              if self.config.cross_attention else None)
        spatial = self.spatial_inputs(context)
        spatial = None if spatial is None else self._pool_spatial(spatial)
        return _Condition(self.context_proj(pooled), kv, mask, spatial)

    def _forward(self, tokens: Tensor, t: Tensor, cond: _Condition, keep: Tensor | None = None,
                 guide: Tensor | None = None) -> Tensor:
        """Noisy patch tokens [B, N, P] at times t [B] -> model output [B, N, P].

        keep [B, K] (int64 token indices) runs the backbone on those tokens only; guide [B, N, Pg]
        (the guide map's patch tokens) modulates each token's blocks.
        """
        B, N, _ = tokens.shape
        h = self.in_proj(tokens)                                        # [B, N, D]
        rope = self.rope() if self.config.position == "rope" else None
        if rope is None:
            h = h + self.pos()
        if cond.spatial is not None:
            h = h + cond.spatial
        c = self.time_emb(t)                                            # [B, D]
        if cond.vector is not None:
            c = c + cond.vector
        if self.guide_proj is not None:
            if guide is None:
                raise ValueError("this DiT is guided (guide_channels > 0): pass a guide map")
            c = c[:, None] + self.guide_proj(guide)                     # [B, N, D]: one vector per token
        c_all = c
        kv = [None] * (len(self.mixer) + len(self.blocks)) if cond.kv is None else cond.kv
        for block, block_kv in zip(self.mixer, kv):
            h = block(h, c, context_mask=cond.mask, context_kv=block_kv, rope=rope)
        if keep is not None:
            index = keep[..., None].expand(-1, -1, h.shape[-1])
            h = h.gather(1, index)                                      # [B, K, D]
            rope = None if rope is None else self.rope(keep)            # the kept tokens' positions
            if c.dim() == 3:
                c = c.gather(1, index)
        for block, block_kv in zip(self.blocks, kv[len(self.mixer):]):
            h = block(h, c, context_mask=cond.mask, context_kv=block_kv, rope=rope)
        if keep is not None:
            h = self.mask_token.to(h.dtype).expand(B, N, -1).scatter(1, index, h)  # [B, N, D]
        if self.head is not None:
            h, c_all = self.head(tokens, h, c_all)                       # [B, N, W] each
        return self.final(h, c_all)

    def predict(self, x: Tensor, t: Tensor, context: Context | None = None) -> Tensor:
        """Model output for normalised noisy latents x [B, *grid, C] at times t [B], no masking:
        the velocity (flow) or the noise (DDPM), [B, *grid, C]."""
        self._check(x)
        return self.unpatchify(self._forward(self.patchify(x), t, self._prepare(context)))

    def _keep(self, B: int, N: int, device: torch.device) -> Tensor | None:
        """Random token indices [B, K] that survive P20's masking (None: keep all)."""
        if not self.training or self.config.mask_ratio == 0:
            return None
        K = max(1, round((1 - self.config.mask_ratio) * N))
        return torch.rand(B, N, device=device).argsort(dim=1)[:, :K]

    # ------------------------------------------------------------------ training

    def loss(self, z: Tensor, context: Context | None = None, *, noise: Tensor | None = None,
             t: Tensor | None = None, guide: Tensor | None = None) -> dict[str, Tensor]:
        """Denoising loss for latents z [B, *grid, C].

        Args:
            noise: eps [B, *grid, C] in normalised units (drawn when None); for tests.
            t: times [B] (float in (0, 1) for flow, int64 in [0, T) for DDPM; drawn when None).
            guide: the guide map [B, *grid, Cg] of a guided DiT (`guide_channels`).
        """
        err, counted = self._patch_errors(z, context, noise, t, training=True, guide=guide)
        loss = err.mean() if counted is None else (err * counted).sum() / counted.sum()
        return self.add_condition_losses({"loss": loss}, context)

    def errors(self, z: Tensor, context: Context | None, noise: Tensor, t: Tensor,
               guide: Tensor | None = None) -> Tensor:
        """Per-example denoising error [B] (mean squared over the grid) for given noise and times,
        the condition kept and no token masking: what Diffusion-DPO compares between a policy and
        its reference (generators/dpo.py)."""
        return self._patch_errors(z, context, noise, t, training=False, guide=guide)[0].mean(-1)

    def _context_tokens(self) -> int:
        """Patch tokens of the leading context frames (raster order: time slowest)."""
        return self.config.context_frames * math.prod(self.config.patch_grid[1:])

    def _guide_tokens(self, guide: Tensor | None, training: bool) -> Tensor | None:
        """A guide map [B, *grid, Cg] -> patch tokens [B, N, p^2 Cg], noised in training (P4)."""
        if self.guide_proj is None or guide is None:
            return None
        want = (*self.config.grid, self.config.guide_channels)
        if tuple(guide.shape[1:]) != want:
            raise ValueError(f"expected a guide map [B, {', '.join(map(str, want))}], got {list(guide.shape)}")
        guide = guide.float()
        if training and self.config.guide_noise > 0:
            guide = guide + self.config.guide_noise * torch.randn_like(guide)
        return self.patchify(guide)

    def _patch_errors(self, z: Tensor, context: Context | None, noise: Tensor | None, t: Tensor | None,
                      training: bool, guide: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Squared error of the model's output per patch token, [B, N], and which errors count
        ([B, N] floats; None: all). `training` masks tokens (P20: [B, K] kept ones) and drops
        conditions for guidance, in that order of random draws, then gives context frames (their
        errors do not count: they are inputs) and noises the guide."""
        self._check(z)
        x = self.latent_norm(z.float())
        B = x.shape[0]
        noise = torch.randn_like(x) if noise is None else noise
        t = self.process.sample_time(B, device=x.device) if t is None else t
        x_t = self.process.noisy(x, noise, t)
        target = self.process.target(x, noise)
        tokens = self.patchify(x_t)
        keep = self._keep(B, tokens.shape[1], x.device) if training else None
        cond = self._prepare(self.drop_condition(context) if training else context)
        given = None
        if training and self.config.context_frames:
            k = self._context_tokens()
            given = torch.rand(B, device=x.device) < self.config.context_p        # [B]
            clean = self.patchify(x)
            tokens = torch.cat([torch.where(given[:, None, None], clean[:, :k], tokens[:, :k]), tokens[:, k:]], 1)
        out = self._forward(tokens, t, cond, keep, self._guide_tokens(guide, training))
        err = (out.float() - self.patchify(target).float()).pow(2).mean(-1)  # per patch [B, N]
        counted = None
        if given is not None:
            counted = torch.ones_like(err)
            counted[:, :k] = (~given).to(err.dtype)[:, None]
        if keep is not None:
            err = err.gather(1, keep)  # dropped patches carry only the mask token: no loss there
        return err, counted

    # ------------------------------------------------------------------ sampling

    def draw(self, guidance: Guidance, *, generator: torch.Generator | None = None, steps: int = 50,
             method: str | None = None, eta: float = 0.0, prefix: Tensor | None = None,
             guide: Tensor | None = None) -> Tensor:
        """Latent grids [n, *grid, C].

        Args:
            steps: model evaluations (flow: ODE steps; Heun adds one per step but the last).
            method: "euler" (default), "heun" or "dpmpp_2m" for flow; "ddim" (the default) or
                "dpmpp_2m" (DPM-Solver++(2M), noise.py) for DDPM.
            eta: DDIM noise, 0 deterministic, 1 ancestral (uses `generator`).
            prefix: latents [n, context_frames, H, W, C] the samples start with (a DiT with
                `context_frames`): every model call sees them clean, and the result holds them.
            guide: the guide map [n, *grid, Cg] of a guided DiT (`guide_channels`).
        """
        conds = by_rows(self._prepare)  # the context's features, per row layout (a schedule's unguided steps: cond only)
        ref = self.latent_norm.mean
        inputs = [self._guide_tokens(guide, training=False)] if self.guide_proj is not None else []
        if self.guide_proj is not None and guide is None:
            raise ValueError("this DiT is guided (guide_channels > 0): pass guide=")
        k, given = 0, None
        if prefix is not None:
            want = (guidance.n, self.config.context_frames, *self.config.grid[1:], self.config.channels)
            if not self.config.context_frames or tuple(prefix.shape) != want:
                raise ValueError(f"prefix must be latents [{', '.join(map(str, want))}] for a DiT with context_frames; "
                                 f"got {list(prefix.shape)} (context_frames {self.config.context_frames})")
            k = self._context_tokens()
            given = self.patchify(self.latent_norm(prefix.float().to(ref.device)))[:, :k]  # [n, k, P]

        def model(x: Tensor, t: Tensor) -> Tensor:
            if given is not None:  # the context frames are inputs: the model always sees them clean
                x = torch.cat([given.to(x.dtype), x[:, k:]], 1)
            step = guidance.at(self.process.progress(t))  # a schedule's scale at this noise level
            cond = conds(step)

            def net(xs: Tensor, ts: Tensor, *extra: Tensor) -> Tensor:
                return self._forward(xs, ts, cond, guide=extra[0] if extra else None)

            return step(net, x, t, *inputs)

        noise = torch.randn(guidance.n, *self.config.grid, self.config.channels, generator=generator,
                            device=ref.device, dtype=torch.float32)
        noise = self.patchify(noise)  # [n, N, P]: the ODE runs on patch tokens
        bound = float(self.latent_norm.bound)
        x = denoise(self.process, model, noise, steps, method=method, eta=eta, generator=generator,
                    clip_x0=bound if math.isfinite(bound) else None)
        out = self.latent_norm.inverse(self.unpatchify(x)).to(ref.dtype)
        if prefix is not None:
            out[:, :self.config.context_frames] = prefix.to(out)  # exactly the given frames
        return out


class DDTHead(nn.Module):
    """RAE's DiT^DH head: x_t's patch tokens re-embedded at width W, run through `head_depth` adaLN
    blocks modulated per token by s = Linear(SiLU(trunk output + c)), the trunk's summary of each
    token. Returns the head's tokens and s [B, N, W] for the final layer."""

    def __init__(self, config: DiTConfig, patch_dim: int) -> None:
        super().__init__()
        W = config.head_width
        self.embed = nn.Linear(patch_dim, W)
        self.pos = GridPositionEmbedding(config.patch_grid, W)
        self.cond = nn.Linear(config.dim, W)
        self.blocks = nn.ModuleList(AdaLNBlock(W, config.heads, config.mlp_ratio, W) for _ in range(config.head_depth))
        init_transformer_weights(self.blocks, config.head_depth)
        for block in self.blocks:
            block.zero_init()

    def forward(self, tokens: Tensor, trunk: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        s = self.cond(F.silu(trunk + (c[:, None] if c.dim() == 2 else c)))  # [B, N, W]
        x = self.embed(tokens) + self.pos()                                  # [B, N, W]
        for block in self.blocks:
            x = block(x, s)
        return x, s


def flow_shift(grid: tuple[int, ...], channels: int, base: int = 4096) -> float:
    """RAE's dimension-dependent flow time shift sqrt(prod(grid) * channels / base) (notes.md, pitfall 1)."""
    return math.sqrt(math.prod(grid) * channels / base)

