"""LaVin-DiT's joint diffusion transformer at small scale (P12): one model for many image-to-image
tasks, the task chosen in context by example (input, target) pairs.

Legend: B batch, N context pairs, C channels, H = W = frame side, p patch, n = (H/p)^2 tokens a frame,
P = p^2 C values a token, D width, Fr = 2N + 2 frames, S = Fr n tokens, F rotated pairs a head.

Frames (pixels, or latents of any channel count: the model only patchifies them):
    condition stream   [in_1, out_1, ..., in_N, out_N, query]   2N + 1 frames -> [B, (2N+1) n, D]
    target stream      the noisy answer x_t                      1 frame      -> [B, n, D]
Both streams run through `depth` two-stream blocks (nn/joint_attention.py): separate QKV / output
projections, SwiGLU MLPs and scale-only adaLN per stream, ONE joint attention over all S tokens.
The condition stream is modulated by c + prompt embedding and the target stream by c + answer
embedding, c the flow time's embedding. Absent pairs (a batch mixing 1-3 pairs pads the front) are
masked out of attention as keys, so the model sees exactly the pairs it was given.

Positions: 3D RoPE over (frame, row, column), frames stacked along T in the order above (the target
frame last, T = 2N + 1), the head dimension split over the three axes. In training a random temporal
offset in [0, `temporal_offset`) is added to every T position of an example (LaVin-DiT's detail for
T = 1 images). Because RoPE only sees differences, a shift common to all of an example's tokens
leaves attention unchanged up to rounding: the offset is kept for fidelity, and the tests check the
invariance it implies. Not in LaVin-DiT: a learned (row, column) table added to every frame's tokens
(`frame_positions`), since a flip sends column j to W - 1 - j, a relative offset that depends on j.

Flow matching (noise.py's FlowMatching, t = 0 data, t = 1 noise): x_t = (1 - t) x + t eps, the model
predicts the velocity eps - x, logit-normal t, plain MSE. Sampling integrates the ODE with Euler
(20 steps). Classifier-free guidance uses LaVin-DiT's null condition, the query alone (every pair
masked out): training drops the pairs of a `context_drop` share of examples. One Euler step from
t = 1 returns the model's estimate of the posterior mean E[x | context, query], the MSE-optimal
answer (a rough one: logit-normal training rarely draws t near 1).

`two_stream=False` is the one-stream ablation: both streams share every block weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from latentforge.generators.noise import FlowMatching, denoise
from latentforge.nn.adaln import AdaLNFinal
from latentforge.nn.embeddings import GridPositionEmbedding, TimestepEmbedding
from latentforge.nn.joint_attention import JointAttentionBlock
from latentforge.nn.rope import axis_pairs, rope_tables


@dataclass
class LaVinConfig:
    channels: int = 3
    size: int = 16                 # frame side (pixels or latent cells)
    patch: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    two_stream: bool = True        # False: the one-stream ablation (tied block weights)
    # positions are small (frames < 40, rows/columns < 8): a low base keeps every frequency useful
    rope_base: float = 100.0
    temporal_offset: int = 32      # training's random RoPE offset along T, in [0, temporal_offset)
    # a learned (row, column) table added to every frame's tokens: RoPE alone is relative, and a flip
    # maps column j to column W - 1 - j, an offset that depends on where j is (not in LaVin-DiT)
    frame_positions: bool = True
    context_drop: float = 0.1      # share of training examples shown no pairs (the CFG null condition)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    sample_steps: int = 20
    guidance: float = 1.0          # CFG scale against the query-only null condition (1 = off)

    def __post_init__(self) -> None:
        if self.size % self.patch:
            raise ValueError(f"frame side {self.size} is not a multiple of the patch {self.patch}")
        if self.dim % self.heads or (self.dim // self.heads) < 6:
            raise ValueError(f"{self.heads} heads of width {self.dim} leave no room for 3D RoPE (head size >= 6)")
        if self.temporal_offset < 1:
            raise ValueError(f"temporal_offset must be >= 1 (1 = no offset), got {self.temporal_offset}")

    @property
    def grid(self) -> int:
        return self.size // self.patch

    @property
    def patch_dim(self) -> int:
        return self.patch ** 2 * self.channels

    @classmethod
    def tiny(cls) -> LaVinConfig:
        return cls(size=8, patch=4, dim=32, depth=2, heads=2, sample_steps=4)


class LaVinDiT(nn.Module):
    def __init__(self, config: LaVinConfig) -> None:
        super().__init__()
        self.config = c = config
        self.cond_embed = nn.Linear(c.patch_dim, c.dim)
        self.target_embed = nn.Linear(c.patch_dim, c.dim)
        self.frame_position = GridPositionEmbedding((c.grid, c.grid), c.dim) if c.frame_positions else None
        self.time = TimestepEmbedding(c.dim, scale=FlowMatching.time_scale)
        self.prompt = nn.Parameter(torch.randn(c.dim) * 0.02)   # added to c for the condition stream
        self.answer = nn.Parameter(torch.randn(c.dim) * 0.02)   # ... and for the target stream
        self.blocks = nn.ModuleList(JointAttentionBlock(c.dim, c.heads, c.mlp_ratio, shared=not c.two_stream)
                                    for _ in range(c.depth))
        self.final = AdaLNFinal(c.dim, c.patch_dim)
        self.flow = FlowMatching(c.logit_mean, c.logit_std)
        self.rope_pairs = axis_pairs(c.dim // c.heads, 3)

    # --- tokens and positions ---------------------------------------------------------------------------

    def patchify(self, frames: Tensor) -> Tensor:
        """[..., C, H, W] -> [..., n, P]."""
        p = self.config.patch
        return rearrange(frames, "... c (h p) (w q) -> ... (h w) (p q c)", p=p, q=p)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """[B, n, P] -> [B, C, H, W]."""
        p, g = self.config.patch, self.config.grid
        return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=g, w=g, p=p, q=p)

    def rope(self, frames: int, offset: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos, sin of the joint sequence's (frame, row, column) positions: [S, F], or [B, S, F] with
        a per-example offset [B] added to the frame index."""
        g = self.config.grid
        axes = [torch.arange(k, dtype=torch.float64, device=device) for k in (frames, g, g)]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # [S, 3]
        if offset is None:
            return rope_tables(coords, self.rope_pairs, self.config.rope_base)
        shifted = coords[None].repeat(len(offset), 1, 1)                                # [B, S, 3]
        shifted[..., 0] += offset.to(torch.float64)[:, None]
        cos, sin = rope_tables(shifted.flatten(0, 1), self.rope_pairs, self.config.rope_base)
        return cos.unflatten(0, shifted.shape[:2]), sin.unflatten(0, shifted.shape[:2])

    # --- the network ------------------------------------------------------------------------------------------

    def forward(self, context: Tensor, pair_mask: Tensor, query: Tensor, x_t: Tensor, t: Tensor, *,
                offset: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """The velocity [B, C, H, W] at x_t.

        Args:
            context: example pairs [B, N, 2, C, H, W] (input, target); pair_mask [B, N] bool, True for real pairs.
            query: [B, C, H, W]; x_t: the noisy answer [B, C, H, W]; t: flow times [B].
            offset: int [B], added to every frame index of an example's RoPE positions.
            attn_mask: [S, S] bool over the joint sequence (condition tokens first), True where allowed.
        """
        B, N = pair_mask.shape
        n = self.config.grid ** 2
        frames = torch.cat([context.flatten(1, 2), query[:, None]], 1)                # [B, 2N + 1, C, H, W]
        xc = self.cond_embed(self.patchify(frames)).flatten(1, 2)                      # [B, (2N + 1) n, D]
        xt = self.target_embed(self.patchify(x_t))                                     # [B, n, D]
        if self.frame_position is not None:
            xc = xc + self.frame_position().repeat(2 * N + 1, 1)                       # every frame alike
            xt = xt + self.frame_position()
        c = self.time(t)                                                               # [B, D]
        cc, ct = c + self.prompt, c + self.answer
        rope = self.rope(2 * N + 2, offset, x_t.device)
        always = torch.ones(B, 2 * n, dtype=torch.bool, device=x_t.device)             # query and target
        key_mask = torch.cat([pair_mask.repeat_interleave(2 * n, 1), always], 1)       # [B, S]
        for block in self.blocks:
            xc, xt = block(xc, xt, cc, ct, rope=rope, key_mask=key_mask, attn_mask=attn_mask)
        return self.unpatchify(self.final(xt, ct))

    # --- training and sampling ----------------------------------------------------------------------------------

    def loss(self, context: Tensor, pair_mask: Tensor, query: Tensor, target: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching MSE of one batch (images in [-1, 1]); drops the pairs of a `context_drop`
        share of examples (CFG's null condition) and draws each example's RoPE offset."""
        B, dev, c = target.shape[0], target.device, self.config
        keep = torch.rand(B, generator=generator, device=dev) >= c.context_drop
        pair_mask = pair_mask & keep[:, None]
        t = self.flow.sample_time(B, device=dev, generator=generator)
        noise = torch.randn(target.shape, generator=generator, device=dev, dtype=target.dtype)
        offset = torch.randint(c.temporal_offset, (B,), generator=generator, device=dev)
        v = self(context, pair_mask, query, self.flow.noisy(target, noise, t), t, offset=offset)
        return F.mse_loss(v.float(), self.flow.target(target, noise).float())

    @torch.no_grad()
    def sample(self, context: Tensor, pair_mask: Tensor, query: Tensor, *, steps: int | None = None,
               guidance: float | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Answers [B, C, H, W] by the Euler ODE from noise drawn with `generator`. steps=1 gives the
        posterior mean. guidance != 1 mixes in the query-only velocity: v0 + s (v - v0)."""
        steps = steps or self.config.sample_steps
        scale = self.config.guidance if guidance is None else guidance
        noise = torch.randn(query.shape, generator=generator, device=query.device, dtype=query.dtype)
        null = torch.zeros_like(pair_mask)

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            v = self(context, pair_mask, query, x, t)
            if scale == 1.0:
                return v
            v0 = self(context, null, query, x, t)
            return v0 + scale * (v - v0)

        return denoise(self.flow, velocity, noise, steps, method="euler")
