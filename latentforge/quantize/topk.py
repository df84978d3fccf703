"""Sparse TopK bottleneck: a TopK sparse autoencoder (Gao et al. 2024), optionally variational (P29).

    pre    = W_enc z + b_enc                      [B, *grid, F]     (F = features, the dictionary)
    kept   = top-k of pre per position, and pre > 0 (ReLU on the kept ones, zero elsewhere)
    mean   = pre on kept, 0 elsewhere             [B, *grid, F]     (sparse: at most k nonzeros)
    z_q    = W_dec code + b_dec                   [B, *grid, dim]   (W_dec columns unit-norm)

Variational (vSAE, P29): each kept activation is the mean of a Gaussian with a learned
log-variance; in training the code is a sample mean + sigma * eps on the kept features (the mean in
eval), and a KL to N(0, 1) on the kept features joins the loss with weight `kl_weight`. P29's
finding is negative: the KL pushes kept means toward zero and leaves more dead features than the
plain TopK baseline (`variational: false`), which is deterministic.

The codes are the sparse feature vectors [B, *grid, F] (floats). Feature usage is tracked in
training: a feature is dead once it has not been kept at any position for `dead_window`
consecutive training steps (Gao et al. count dead latents the same way, over a token window).

Choices:
- decoder columns are normalised to unit length in the forward pass: otherwise the decoder could
  grow a column and shrink its activation for free, which makes the KL (and activation sizes)
  meaningless;
- the encoder starts as the transpose of the decoder (Gao et al.): features begin as their own
  best detectors, which keeps many alive early on;
- the log-variance starts at -2 (sigma ~ 0.37) and is clamped to [-6, 2], as in the vSAE code.

Legend: B batch, F features, N = B * prod(grid) positions. Selection and KL run in fp32 (bf16
rounding creates ties in the top-k and errors in exp(logvar)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.quantize.base import Quantized, Quantizer, QuantizerConfig
from latentforge.quantize.gaussian import gaussian_kl
from latentforge.registry import register


@dataclass
class TopKConfig(QuantizerConfig):
    name: str = "topk"
    dim: int = 32                    # encoder output channels the bottleneck reads
    features: int = 256              # F: dictionary size
    k: int = 16                      # kept features per position
    variational: bool = True         # vSAE (P29); false = plain TopK SAE, deterministic
    kl_weight: float = 1e-3          # on the KL in nats per position, summed over kept features
    logvar_init: float = -2.0
    logvar_range: tuple[float, float] = (-6.0, 2.0)
    dead_window: int = 500           # training steps without firing after which a feature is dead

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.features < 1:
            raise ValueError(f"features must be >= 1, got {self.features}")
        if not 1 <= self.k <= self.features:
            raise ValueError(f"k must be in [1, features={self.features}], got {self.k}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        lo, hi = self.logvar_range
        if not lo < hi:
            raise ValueError(f"logvar_range must be (low, high) with low < high, got {self.logvar_range}")
        if not lo <= self.logvar_init <= hi:
            raise ValueError(f"logvar_init {self.logvar_init} lies outside logvar_range {self.logvar_range}")
        if self.dead_window < 1:
            raise ValueError(f"dead_window must be >= 1, got {self.dead_window}")

    @classmethod
    def tiny(cls) -> "TopKConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(dim=4, features=16, k=2)


@register("quantizer", "topk", TopKConfig)
class TopKBottleneck(Quantizer):
    discrete = False

    def __init__(self, config: TopKConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.Linear(config.dim, config.features)
        self.decoder = nn.Linear(config.features, config.dim)
        with torch.no_grad():
            w = F.normalize(torch.randn(config.dim, config.features), dim=0)  # unit columns [dim, F]
            self.decoder.weight.copy_(w)
            self.decoder.bias.zero_()
            self.encoder.weight.copy_(w.t())
            self.encoder.bias.zero_()
        if config.variational:
            self.to_logvar = nn.Linear(config.dim, config.features)
            # Zero weights: every feature starts with the same sigma, learned from there.
            nn.init.zeros_(self.to_logvar.weight)
            nn.init.constant_(self.to_logvar.bias, config.logvar_init)
        # Training steps since each feature was last kept at some position [F].
        self.register_buffer("idle_steps", torch.zeros(config.features, dtype=torch.long))

    @property
    def latent_channels(self) -> int:
        return self.config.features

    def dead_features(self) -> Tensor:
        """Boolean mask [F]: features not kept at any position in the last `dead_window` steps."""
        return self.idle_steps >= self.config.dead_window

    def _check(self, t: Tensor, channels: int, what: str) -> None:
        if t.dim() < 2 or t.shape[-1] != channels:
            raise ValueError(f"topk bottleneck expects {what} [B, *grid, {channels}], got {list(t.shape)}")

    def _decoder_weight(self) -> Tensor:
        return F.normalize(self.decoder.weight.float(), dim=0)  # unit-norm columns [dim, F]

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> Quantized:
        """z [B, *grid, dim] -> Quantized(z_q [B, *grid, dim], codes = sparse features [B, *grid, F]).

        Args:
            z: encoder outputs, channels-last.
            generator: optional RNG for the variational noise (training only).
        """
        cfg = self.config
        self._check(z, cfg.dim, "encoder outputs")
        dtype = z.dtype
        with torch.autocast(z.device.type, enabled=False):
            x = z.float()
            pre = F.linear(x, self.encoder.weight.float(), self.encoder.bias.float())  # [B, *grid, F]
            top = pre.topk(cfg.k, dim=-1).indices                                       # [B, *grid, k]
            kept = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, top, True)
            kept &= pre > 0                                      # ReLU on the kept ones
            # where(), not a product with the mask: the gradient reaches the kept entries only
            mean = torch.where(kept, pre, torch.zeros_like(pre))
            code, losses, stats = mean, {}, {}
            if cfg.variational:
                logvar = F.linear(x, self.to_logvar.weight.float(), self.to_logvar.bias.float())
                logvar = logvar.clamp(*cfg.logvar_range)
                if self.training:
                    eps = torch.randn(pre.shape, generator=generator, device=pre.device, dtype=pre.dtype)
                    code = torch.where(kept, mean + (0.5 * logvar).exp() * eps, torch.zeros_like(pre))
                # KL(N(mean, sigma^2) || N(0, 1)) on kept features only: the others are exact zeros
                kl_elem = gaussian_kl(mean, logvar)
                kl = torch.where(kept, kl_elem, torch.zeros_like(kl_elem)).sum(-1).mean()
                losses["kl"] = cfg.kl_weight * kl
                stats["kl_nats"] = kl.detach()
            z_q = F.linear(code, self._decoder_weight(), self.decoder.bias.float())     # [B, *grid, dim]
        fired = kept.reshape(-1, cfg.features).any(0)                                   # [F]
        if self.training:
            self._update_usage(fired)
        dead = self.dead_features().sum()
        stats.update({
            "l0": kept.sum(-1).float().mean(),
            "feature_usage": fired.float().mean(),     # fraction of features kept in this batch
            "dead_features": dead.float(),
            "living_features": (cfg.features - dead).float(),
        })
        return Quantized(z_q.to(dtype), code, losses, stats)

    def lookup(self, codes: Tensor) -> Tensor:
        """Feature vectors [B, *grid, F] (e.g. generated) -> decoder inputs [B, *grid, dim]."""
        self._check(codes, self.config.features, "feature codes")
        w = self._decoder_weight().to(codes.dtype)
        return F.linear(codes, w, self.decoder.bias.to(codes.dtype))

    @torch.no_grad()
    def _update_usage(self, fired: Tensor) -> None:
        if dist.is_available() and dist.is_initialized():
            # a feature fired if it fired on any rank; keeps the counters identical across ranks
            fired = fired.to(torch.uint8)
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
            fired = fired.bool()
        self.idle_steps.add_(1).masked_fill_(fired, 0)
