"""Gaussian (KL-VAE) bottleneck, with a standard normal prior or the ARD prior of P11.

    z [B, *grid, dim] --linear--> mean, log-variance [B, *grid, C]      (C = latent_channels)
    latent = mean + exp(logvar / 2) * eps   in training,   = mean   in eval
    z_q    = linear(latent)  [B, *grid, dim]                           (what the decoder reads)

The codes a generator models are the latents themselves ([B, *grid, C] floats); `lookup` maps
generated latents back to decoder inputs.

Priors (`prior`):
- "standard": N(0, I), the KL-VAE of latent diffusion.
- "ard": N(0, diag(alpha)) with per-dimension variances estimated from the encoded data
  (automatic relevance determination, P11). The empirical-Bayes maximiser of
  E_q[log N(z; 0, alpha)] over the data is alpha_d = E[mu_d^2 + sigma_d^2], the second moment of
  the aggregate posterior. P11's code re-estimates it once per epoch from 10k encodings and holds
  it fixed in between; here it is a running average over training steps, kept in a buffer, so no
  gradient flows into the prior and the KL only shapes the encoder.

Relevance. Under ARD the KL to N(0, alpha) is unchanged when a latent dimension is rescaled
(alpha follows the scale), so alpha alone cannot say which dimensions are in use. P11 reads
relevance off the spread of the posterior means over the data; we normalise that spread by alpha:

    relevance_d = Var_x(mu_d) / alpha_d  in [0, 1]

the share of the dimension's total variance that depends on the input. An unused dimension has
mu_d = 0 for every input (relevance 0); a well-used one has Var(mu_d) >> sigma_d^2 (relevance
near 1). The default threshold 0.5 is Var(mu) = E[sigma^2], i.e. a signal-to-noise ratio of 1, or
about 0.35 nats through the dimension seen as a Gaussian channel. `active_dims` is the older,
scale-dependent count of Burda et al. (batch variance of the mean above 0.01).

Legend: B batch, C latent channels, N = B * prod(grid) positions. The KL and the log-variances
run in fp32 whatever the autocast context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig
from latentforge.registry import register


@dataclass
class GaussianConfig(QuantizerConfig):
    name: str = "gaussian"
    dim: int = 32                     # encoder output channels the bottleneck reads
    latent_channels: int = 4          # C: channels of the latent a generator models
    prior: Literal["standard", "ard"] = "standard"
    # Tokenizers add the KL (nats per position) to a per-element mean reconstruction error. The
    # ELBO with Gaussian pixel noise of variance s^2 weights them as 2 s^2 * positions / elements;
    # at 4x4 downsampling of RGB (48 elements per position) 1e-3 is s ~ 0.15 on [-1, 1] images: a
    # KL strong enough to switch off unused dimensions (which ARD needs to find them) yet small
    # next to reconstruction. Latent diffusion's 1e-6 per element is nearly a plain autoencoder.
    kl_weight: float = 1e-3
    logvar_range: tuple[float, float] = (-30.0, 20.0)  # clamp, as LDM does: exp() stays finite
    ard_decay: float = 0.99           # running average of the moments, per training step
    ard_floor: float = 1e-4           # smallest prior variance: keeps the KL's 1/alpha finite
    relevance_threshold: float = 0.5  # Var(mu)/alpha above this = relevant (SNR 1, see above)
    active_threshold: float = 0.01    # batch Var(mu) above this = active (Burda et al. 2016)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if self.prior not in ("standard", "ard"):
            raise ValueError(f"prior must be 'standard' or 'ard', got {self.prior!r}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        lo, hi = self.logvar_range
        if not lo < hi:
            raise ValueError(f"logvar_range must be (low, high) with low < high, got {self.logvar_range}")
        if not 0.0 <= self.ard_decay < 1.0:
            raise ValueError(f"ard_decay must be in [0, 1), got {self.ard_decay}")
        if self.ard_floor <= 0:
            raise ValueError(f"ard_floor must be > 0, got {self.ard_floor}")
        if not 0.0 < self.relevance_threshold < 1.0:
            raise ValueError(f"relevance_threshold must be in (0, 1), got {self.relevance_threshold}")

    @classmethod
    def tiny(cls) -> "GaussianConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=4, latent_channels=2)


def gaussian_kl(mean: Tensor, logvar: Tensor, prior_var: Tensor | float = 1.0) -> Tensor:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, prior_var)) in nats (broadcasts prior_var)."""
    prior_var = torch.as_tensor(prior_var, dtype=mean.dtype, device=mean.device)
    return 0.5 * ((mean.square() + logvar.exp()) / prior_var - 1.0 - logvar + prior_var.log())


@register("quantizer", "gaussian", GaussianConfig)
class GaussianBottleneck(Quantizer):
    discrete = False

    def __init__(self, config: GaussianConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.to_moments = nn.Linear(config.dim, 2 * c)     # -> [mean | logvar]
        self.from_latent = nn.Linear(c, config.dim)
        # Running moments of the aggregate posterior, updated in training for both priors (the
        # ARD prior uses alpha; under the standard prior they are diagnostics). alpha starts at 1,
        # so an ARD model starts as a standard VAE.
        self.register_buffer("alpha", torch.ones(c))        # E[mu^2 + sigma^2]  [C]
        self.register_buffer("mean_spread", torch.zeros(c))  # Var_x(mu)        [C]

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    # ------------------------------------------------------------------ prior and relevance

    def prior_variance(self) -> Tensor:
        """Per-dimension prior variance [C]: ones, or the ARD estimate alpha (floored)."""
        if self.config.prior == "ard":
            return self.alpha.float().clamp_min(self.config.ard_floor)
        return torch.ones_like(self.alpha, dtype=torch.float32)

    def relevance(self) -> Tensor:
        """Var_x(mu_d) / alpha_d [C] from the running moments; 0 = unused, near 1 = used."""
        return (self.mean_spread.float() / self.alpha.float().clamp_min(self.config.ard_floor)).clamp(0, 1)

    def relevant_dims(self) -> Tensor:
        """Boolean mask [C] of the latent dimensions the data use (see the module docstring)."""
        return self.relevance() > self.config.relevance_threshold

    # ------------------------------------------------------------------ forward

    def _check(self, t: Tensor, channels: int, what: str) -> None:
        if t.dim() < 2 or t.shape[-1] != channels:
            raise ValueError(f"gaussian bottleneck expects {what} [B, *grid, {channels}], got {list(t.shape)}")

    def moments(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, *grid, dim] -> mean, logvar [B, *grid, C], both fp32."""
        self._check(z, self.config.dim, "encoder outputs")
        with torch.autocast(z.device.type, enabled=False):
            # fp32 projection: a bf16 log-variance error becomes a relative error in sigma after exp
            h = F.linear(z.float(), self.to_moments.weight.float(), self.to_moments.bias.float())
            mean, logvar = h.chunk(2, dim=-1)
            return mean, logvar.clamp(*self.config.logvar_range)

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> Quantized:
        """z [B, *grid, dim] -> Quantized(z_q [B, *grid, dim], codes = latents [B, *grid, C]).

        Args:
            z: encoder outputs, channels-last.
            generator: optional RNG for the reparameterisation noise (training only).
        """
        cfg = self.config
        c = cfg.latent_channels
        dtype = z.dtype
        mean, logvar = self.moments(z)  # [B, *grid, C] fp32
        with torch.autocast(z.device.type, enabled=False):
            if self.training:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                latent = mean + (0.5 * logvar).exp() * eps
            else:
                latent = mean
            # The prior is the one estimated before this step: like P11's per-epoch estimate it
            # is a constant of the step, not a function of the batch being scored.
            kl_per_dim = gaussian_kl(mean, logvar, self.prior_variance()).reshape(-1, c).mean(0)  # [C]
            kl = kl_per_dim.sum()  # per position: summed over channels, averaged over positions
            second, spread = _data_moments(mean.detach().reshape(-1, c), logvar.detach().reshape(-1, c))
            if self.training:
                self._update(second, spread)
            z_q = F.linear(latent, self.from_latent.weight.float(), self.from_latent.bias.float())
        stats = {
            "kl_nats": kl.detach(),
            "kl_per_dim": kl_per_dim.detach(),
            "alpha": self.alpha.detach().clone(),
            "relevant_dims": self.relevant_dims().sum().float(),
            "active_dims": (spread > cfg.active_threshold).sum().float(),
        }
        codes = latent if self.training else mean
        return Quantized(z_q.to(dtype), codes, {"kl": cfg.kl_weight * kl}, stats)

    def lookup(self, latents: Tensor) -> Tensor:
        """Latents [B, *grid, C] (e.g. sampled by a generator) -> decoder inputs [B, *grid, dim]."""
        self._check(latents, self.config.latent_channels, "latents")
        return self.from_latent(latents)

    @torch.no_grad()
    def _update(self, second: Tensor, spread: Tensor) -> None:
        # alpha <- decay * alpha + (1 - decay) * E[mu^2 + sigma^2]: the closed-form prior update
        w = 1.0 - self.config.ard_decay
        self.alpha.lerp_(second.to(self.alpha.dtype), w)
        self.mean_spread.lerp_(spread.to(self.mean_spread.dtype), w)


@torch.no_grad()
def _data_moments(mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """E[mu^2 + sigma^2] and Var(mu) per dimension [C] over positions mean, logvar [N, C].

    Under data parallelism the sums are reduced over ranks, so every rank holds the same prior.
    """
    n = torch.tensor(float(mean.shape[0]), device=mean.device)
    sums = torch.stack([mean.sum(0), mean.square().sum(0), logvar.exp().sum(0)])  # [3, C]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(n)
    m1, m2, var = sums / n
    return m2 + var, (m2 - m1.square()).clamp_min(0)
