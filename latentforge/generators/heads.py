"""Heads: what turns a backbone's per-token features into a loss and into draws.

Legend: B batch, N tokens, D feature width, V codes (vocabulary), C latent channels, W head width,
M tokens handled by a head call (any number of rows).

* `CodeHead`: a linear map to logits over V codes, trained by cross-entropy (`token_nll`,
  `code_nll`) and sampled with `sampling.sample_tokens`. Autoregressive, axial, masked and
  hierarchical generators use it (the hierarchical one, one per RVQ level).
* `DiffusionHead`: MAR's per-token denoiser. A small residual MLP with adaLN reads one noisy
  token x_t [M, C], its time and its backbone feature z [M, D], and predicts the noise (DDPM) or
  the velocity (flow) of a noise process from noise.py; `loss` is its denoising MSE and `sample`
  draws tokens from their features with the process's sampler, through a run's `Guidance`.
DiT's grid denoiser is its adaLN output layer (`nn.adaln.AdaLNFinal`) over the whole grid, driven
by the same noise processes (`noise.denoise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.generators.guidance import Guidance
from latentforge.generators.noise import DDPM, FlowMatching, denoise
from latentforge.nn.embeddings import TimestepEmbedding
from latentforge.nn.transformer import MLP

# ----------------------------------------------------------------------------- codes


class CodeHead(nn.Linear):
    """Features [..., D] -> logits [..., V]. Zero-initialised: every code model starts uniform,
    with loss log V. (A subclass of nn.Linear, so saved weights keep the plain layer's names.)"""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__(dim, vocab_size)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def token_nll(logits: Tensor, codes: Tensor) -> Tensor:
    """Negative log-likelihood (nats, fp32) of each code: logits [..., V], codes [...] -> [...]."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1), reduction="none")
    return nll.view(codes.shape)


def code_nll(logits: Tensor, codes: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood (nats, fp32) of codes [...] under logits [..., V]: over every
    token, or only where mask [...] is True (masked generation scores the hidden tokens)."""
    if mask is None:
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1))
    weight = mask.reshape(-1).float()
    return (token_nll(logits, codes).reshape(-1) * weight).sum() / weight.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------- per-token diffusion


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [M, W] shifted and scaled per row by shift, scale [M, W]."""
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
    """Denoiser of one token given its backbone feature (MAR's SimpleMLPAdaLN + DiffLoss).

    forward(x_t [M, C], t [M], z [M, D]) -> [M, C], the raw network; `predict` adds the DDPM skip.
    """

    def __init__(self, channels: int, cond_dim: int, width: int, depth: int, process: DDPM | FlowMatching) -> None:
        super().__init__()
        self.channels = channels
        self.process = process  # a plain object: its schedule is derived from the config, not saved
        self.in_proj = nn.Linear(channels, width)
        self.time_emb = TimestepEmbedding(width, scale=process.time_scale)
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

    def predict(self, x_t: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """The process's target for noisy tokens x_t [M, C] at times t [M]: eps (DDPM) or velocity (flow).

        DDPM: eps = sqrt(1 - abar) x_t + sqrt(abar) F(x_t, t, z). The skip makes eps exact at pure
        noise, where DDIM's x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) would otherwise multiply
        the head's error by 1 / sqrt(abar_{T-1}) (~2e4 for the cosine schedule) in the first step;
        the loss is still the eps MSE, and x0 = sqrt(abar) x_t - sqrt(1 - abar) F (F is -v).
        """
        out = self(x_t, t, z)
        if isinstance(self.process, DDPM):
            abar = self.process.alpha_bar.to(t.device)[t].to(x_t.dtype)[:, None]  # [M, 1]
            out = (1 - abar).sqrt() * x_t + abar.sqrt() * out
        return out

    def loss(self, z: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Denoising MSE (fp32) of clean tokens x0 [M, C] given features z [M, D], noise [M, C], times t [M]."""
        pred = self.predict(self.process.noisy(x0, noise, t), t, z)
        return (pred.float() - self.process.target(x0, noise).float()).pow(2).mean()

    def sample(self, z: Tensor, guidance: Guidance, *, scale: float | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0, steps: int = 50,
               eta: float = 0.0, method: str | None = None) -> Tensor:
        """Draw one token per feature: z [rows * k, D] laid out like the run's rows -> [n * k, C].

        `temperature` multiplies the sampler's initial noise x_T. For DDIM with eta = 0 and for the
        flow ODE that noise is the only randomness, so tau < 1 concentrates samples toward the
        modes. MAR scales the per-step noise of its ancestral sampler instead; with eta > 0 here the
        per-step noise is not scaled. `scale` overrides the guidance scale (MAR's schedule).
        """
        M = z.shape[0] // 2 if guidance.guided else z.shape[0]
        noise = temperature * torch.randn(M, self.channels, generator=generator, device=z.device)

        def model(x: Tensor, t: Tensor) -> Tensor:
            # both halves of a guided batch denoise the same x_t, each with its own feature
            return guidance(lambda xs, ts: self.predict(xs, ts, z), x, t, scale=scale)

        return denoise(self.process, model, noise, steps, method=method, eta=eta, generator=generator)


class RegressionHead(nn.Module):
    """MAR-3D's ablation of the diffusion head: the same adaLN MLP regressing each token from its
    feature with an MSE loss (no noise, time fixed at 0). A regression predicts the conditional mean,
    so where a token has several likely values its samples collapse between them, which is what the
    diffusion head exists to avoid (P9's check). Same interface as DiffusionHead."""

    def __init__(self, channels: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.net = DiffusionHead(channels, cond_dim, width, depth, FlowMatching())
        self.process = self.net.process          # for the caller's time draws, which this head ignores
        self.channels = channels
        # the token input a denoiser reads is a learned constant here: nothing noisy to read
        self.query = nn.Parameter(torch.randn(1, channels) * 0.02)

    def regress(self, z: Tensor) -> Tensor:
        # repeat, not expand: under no_grad an expanded view of a parameter still claims to need grad,
        # which autograd hooks (FlopCounterMode's module tracker) refuse
        query = self.query.to(z.dtype).repeat(z.shape[0], 1)                # [N, C]
        return self.net(query, torch.zeros(z.shape[0], device=z.device), z)

    def loss(self, z: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return (self.regress(z).float() - x0.float()).pow(2).mean()

    def sample(self, z: Tensor, guidance: Guidance, *, scale: float | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0, steps: int = 50,
               eta: float = 0.0, method: str | None = None) -> Tensor:
        """The regression of every token (deterministic: temperature, steps and eta do not apply)."""
        return guidance.mix(self.regress(z), scale)
