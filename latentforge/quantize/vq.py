"""Vector quantization (VQ-VAE) with the fixes that keep a codebook alive.

- l2-normalised codes and inputs (cosine distance): distances are bounded, codes spread out
  (ViT-VQGAN's factorised, normalised codes);
- k-means initialisation from the first training batch, so training starts with every code
  near the data instead of in empty space;
- dead-code revival: a code whose running usage falls below a threshold is moved onto a
  random encoder output of the current batch (`kmeans_usage` starts the running usage from the
  k-means clusters instead of 1 per code, which a threshold above 1 needs);
- straight-through gradients: the decoder's gradient is copied onto the encoder output;
- losses: codebook term ||sg(z) - e||^2 and commitment beta * ||z - sg(e)||^2.

Options:
- `codebook_update: ema` (VQ-VAE appendix, van den Oord et al. 2017): codes are running means of
  the vectors assigned to them (EMAs of cluster sizes and vector sums, Laplace-smoothed) instead
  of being learned by gradient; no codebook loss, and the codebook is a buffer, not a parameter;
- `rotation_trick` (Fifty et al. 2024, "Restructuring vector quantization with the rotation
  trick"): the decoder still reads e, but the gradient reaches the encoder through a fixed
  rotation and rescaling that takes z onto e, so it carries how z sits relative to its code
  (straight-through copies it unchanged).

Defences against codebook collapse (each off by default):
- `simvq` (Zhu et al. 2024, "Addressing representation collapse in vector quantized models with
  one linear layer"): the codebook C stays frozen and the codes used are C W, with W [D, D]
  learned. A gradient step on W moves every code, not only the ones the batch picked, so codes
  that no vector chose still follow the data;
- `entropy_weight` (MaskGIT / MAGVIT-v2's entropy loss, as in lfq.py): with soft assignments
  p_n = softmax(-d_n / entropy_temperature) over the K squared distances d_n of vector n, the
  loss gets entropy_weight * (mean_n H(p_n) - H(mean_n p_n)): each vector commits to one code
  (first term), and the batch spreads over the whole codebook (second term). Its softmax holds
  N x K floats, in training only.

Grouped (multi-head) VQ, a vector split into groups with a codebook each, is grouped_vq.py.

All distances run in fp32, whatever the autocast context. Shapes: N = B * prod(grid) vectors,
K = codebook_size, D = dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.quantize.base import (
    Quantized,
    Quantizer,
    QuantizerConfig,
    assignment_entropies,
    code_histogram,
    usage_stats,
)
from latentforge.registry import register


@dataclass
class VQConfig(QuantizerConfig):
    name: str = "vq"
    codebook_size: int = 512
    dim: int = 32                  # code vector size (the encoder projects down to it)
    l2_normalize: bool = True
    commitment: float = 0.25       # beta
    kmeans_init: bool = True
    kmeans_iters: int = 10
    # Start each code's running usage (and the EMA statistics) from the vectors k-means gave it in
    # the init batch instead of 1 per code. Needed when dead_threshold > 1 (the peer's 2): a
    # prior of 1 then declares nearly every fresh k-means code dead at the first step.
    kmeans_usage: bool = field(default=False, metadata=ADDED_LATER)
    usage_decay: float = 0.95      # running per-step usage count of each code
    dead_threshold: float = 0.05   # revive a code whose running usage falls below this
    codebook_update: Literal["learned", "ema"] = "learned"
    ema_decay: float = 0.99        # ema: weight of the past in the cluster-size and sum averages
    ema_epsilon: float = 1e-5      # ema: Laplace smoothing of the cluster sizes
    rotation_trick: bool = False
    simvq: bool = field(default=False, metadata=ADDED_LATER)  # codes = C W: C frozen (k-means or random init), W [D, D] learned
    entropy_weight: float = field(default=0.0, metadata=ADDED_LATER)  # weight of the entropy penalty on soft assignments (0: off)
    entropy_temperature: float = field(default=0.01, metadata=ADDED_LATER)  # tau of softmax(-d / tau) over squared distances d

    def __post_init__(self) -> None:
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if not 0.0 < self.usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in (0, 1), got {self.usage_decay}")
        if self.codebook_update not in ("learned", "ema"):
            raise ValueError(f"codebook_update must be 'learned' or 'ema', got {self.codebook_update!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.ema_epsilon <= 0:
            raise ValueError(f"ema_epsilon must be > 0, got {self.ema_epsilon}")
        if self.kmeans_usage and not self.kmeans_init:
            raise ValueError("kmeans_usage=True needs kmeans_init=True: it starts usage from the k-means counts")
        if self.simvq and self.codebook_update == "ema":
            raise ValueError("simvq=True needs codebook_update='learned': SimVQ learns the codes through W by "
                             "gradient, while ema moves each code to its cluster mean directly")
        if self.entropy_weight < 0:
            raise ValueError(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.entropy_temperature <= 0:
            raise ValueError(f"entropy_temperature must be > 0, got {self.entropy_temperature}")

    @classmethod
    def tiny(cls) -> "VQConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(codebook_size=16, dim=4, kmeans_iters=2)


@register("quantizer", "vq", VQConfig)
class VectorQuantizer(Quantizer):
    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        codebook = torch.randn(config.codebook_size, config.dim)  # [K, D]
        if config.codebook_update == "ema":
            # Moved by running means, not by the optimiser: a buffer, so no optimiser (or
            # weight decay) touches it and "every parameter gets a gradient" still holds.
            self.register_buffer("codebook", codebook)
            # Both EMAs start at zero: their ratio is a weighted mean that needs no bias
            # correction, and a code nothing was assigned to yet (count 0) keeps its place.
            self.register_buffer("ema_count", torch.zeros(config.codebook_size))          # [K]
            self.register_buffer("ema_sum", torch.zeros(config.codebook_size, config.dim))  # [K, D]
        elif config.simvq:
            # C is a buffer (no optimiser touches it); W starts at the identity, so the codes
            # start where C (k-means centres, or random) puts them. Random C is drawn at the
            # paper's scale, N(0, 1/D): codes of norm ~1, near encoder outputs.
            self.register_buffer("codebook", codebook * config.dim**-0.5)
            self.code_map = nn.Parameter(torch.eye(config.dim))  # W [D, D]
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("initialized", torch.tensor(not config.kmeans_init))
        self.register_buffer("usage", torch.ones(config.codebook_size))
        # The host's copy of `initialized` once it is known to be True (it never goes back,
        # except by loading a state dict). Reading the buffer is a device sync and, under
        # torch.compile, a graph break; this flag lets every step after the first skip the read.
        self._known_initialized = not config.kmeans_init

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded `initialized` is read again on the next training step

    def needs_init(self) -> bool:
        """True while k-means has not run: the next training forward runs it, eagerly (its
        data-dependent loops cannot be compiled; the Trainer's first step is eager)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return not self._known_initialized

    @property
    def size(self) -> int:
        return self.config.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    def _embeddings(self) -> Tensor:
        """The code vectors [K, D] that inputs are matched to and replaced by (fp32)."""
        e = self.codebook.float()
        if self.config.simvq:
            e = e @ self.code_map.float()  # [K, D]
        return F.normalize(e, dim=-1) if self.config.l2_normalize else e

    def lookup(self, codes: Tensor) -> Tensor:
        """codes [B, *grid] -> code vectors [B, *grid, dim]."""
        return F.embedding(codes, self._embeddings())

    def distances(self, flat: Tensor) -> Tensor:
        """Squared distances [N, K] from each row of flat [N, dim] to every code (fp32)."""
        e = self._embeddings()
        return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of flat [N, dim] (fp32)."""
        return self.distances(flat).argmin(dim=1)

    def entropy_terms(self, dist_sq: Tensor) -> tuple[Tensor, Tensor]:
        """Mean per-vector entropy and entropy of the batch-mean assignment, from dist_sq [N, K];
        the soft assignment is p_n = softmax(-dist_sq_n / entropy_temperature) (fp32)."""
        return assignment_entropies(-dist_sq / self.config.entropy_temperature)

    def forward(self, z: Tensor) -> Quantized:
        """z [B, *grid, dim] -> Quantized with codes [B, *grid]."""
        cfg = self.config
        with torch.autocast(z.device.type, enabled=False):
            dtype = z.dtype
            z = z.float()
            if cfg.l2_normalize:
                z = F.normalize(z, dim=-1)
            flat = z.reshape(-1, z.shape[-1])  # [N, dim]
            if self.training and self.needs_init():
                self._kmeans_init(flat.detach())
            dist_sq = self.distances(flat)               # [N, K]
            codes = dist_sq.argmin(dim=1)                # [N]
            e = self._embeddings()[codes].view_as(z)     # [B, *grid, D]
            losses: dict[str, Tensor] = {}
            if cfg.codebook_update == "learned":
                losses["codebook"] = F.mse_loss(e, z.detach())
            losses["commitment"] = cfg.commitment * F.mse_loss(z, e.detach())
            entropy_stats: dict[str, Tensor] = {}
            # A training device, like LFQ's: eval skips it (the codes do not depend on it).
            if self.training and cfg.entropy_weight > 0:
                per_vector, codebook = self.entropy_terms(dist_sq)
                losses["entropy"] = cfg.entropy_weight * (per_vector - codebook)
                entropy_stats = {"entropy_position": per_vector.detach(), "entropy_codebook": codebook.detach()}
            counts = code_histogram(codes, self.size)
            if self.training:
                if cfg.codebook_update == "ema":
                    self._ema_update(flat.detach(), codes, counts)
                self._revive_dead(flat.detach(), counts)
            # The decoder reads e either way; only the gradient the encoder gets differs.
            z_q = rotate_onto(z, e) if cfg.rotation_trick else z + (e - z).detach()
            stats = usage_stats(counts) | entropy_stats
        return Quantized(z_q.to(dtype), codes.view(z.shape[:-1]), losses, stats)

    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        """k-means++ seeding then Lloyd's iterations (spherical when codes are normalised).

        k-means++ matters here: image batches are dominated by a few patch types (background),
        and uniformly drawn seeds would spend most of the codebook on them.
        """
        k = self.size
        gen = torch.Generator(device=flat.device).manual_seed(0)
        centres = torch.empty(k, flat.shape[1], device=flat.device, dtype=flat.dtype)
        centres[0] = flat[torch.randint(flat.shape[0], (1,), generator=gen, device=flat.device)]
        nearest_sq = (flat - centres[0]).pow(2).sum(1)
        for i in range(1, k):
            weights = nearest_sq if nearest_sq.sum() > 0 else torch.ones_like(nearest_sq)
            pick = torch.multinomial(weights, 1, generator=gen)
            centres[i] = flat[pick]
            nearest_sq = torch.minimum(nearest_sq, (flat - centres[i]).pow(2).sum(1))
        for _ in range(self.config.kmeans_iters):
            assign = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ centres.t() + centres.pow(2).sum(1)[None]).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty clusters stay
            if self.config.l2_normalize:
                centres = F.normalize(centres, dim=-1)
        self._write_codes(slice(None), centres)
        _broadcast(self.codebook.data)
        self.initialized.fill_(True)
        self._known_initialized = True
        if self.config.kmeans_usage:
            # counts over the global batch, as `_ema_update` and `_revive_dead` keep them
            counts = torch.bincount(self.nearest(flat), minlength=k).to(self.usage.dtype)  # [K]
            _all_reduce(counts)
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            self.usage.copy_(counts / world)
            if self.config.codebook_update == "ema":
                self.ema_count.copy_(counts)
                self.ema_sum.copy_(self.codebook * counts[:, None])

    @torch.no_grad()
    def _write_codes(self, rows: Tensor | slice, vectors: Tensor) -> None:
        """Make the codes at `rows` equal `vectors` [R, D] (what `_embeddings` returns, before any
        normalisation). SimVQ writes C = v W^+ so that C W = v: W is shared by every code and
        must not change for one; the pseudo-inverse keeps this defined if W ever loses rank."""
        if self.config.simvq:
            vectors = vectors.float() @ torch.linalg.pinv(self.code_map.detach().float())  # [R, D]
        self.codebook.data[rows] = vectors.to(self.codebook.dtype)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        """Move each code to the running mean of the vectors assigned to it.

        flat [N, D] (normalised when l2_normalize: the codes become mean directions, which
        `_embeddings` normalises again), codes [N], counts [K].
        """
        cfg = self.config
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat.to(self.ema_sum.dtype))  # [K, D]
        counts = counts.to(self.ema_count.dtype)
        # Data-parallel ranks average over the global batch, so their codebooks stay identical.
        _all_reduce(counts)
        _all_reduce(sums)
        self.ema_count.mul_(cfg.ema_decay).add_(counts, alpha=1 - cfg.ema_decay)
        self.ema_sum.mul_(cfg.ema_decay).add_(sums, alpha=1 - cfg.ema_decay)
        # Laplace smoothing keeps the divisor away from zero for rarely used codes while
        # preserving the total count n.
        n = self.ema_count.sum()
        smoothed = (self.ema_count + cfg.ema_epsilon) / (n + self.size * cfg.ema_epsilon) * n  # [K]
        means = self.ema_sum / smoothed.clamp_min(1e-12)[:, None]  # [K, D]
        assigned = self.ema_count[:, None] > 0
        self.codebook.copy_(torch.where(assigned, means, self.codebook.float()).to(self.codebook.dtype))

    @torch.no_grad()
    def _revive_dead(self, flat: Tensor, counts: Tensor) -> None:
        cfg = self.config
        # Every rank must take the same decision, or a broadcast below would wait forever:
        # usage is tracked on the counts summed over ranks (per-rank batch averaged).
        counts = counts.float()
        _all_reduce(counts)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.usage.mul_(cfg.usage_decay).add_(counts / world, alpha=1 - cfg.usage_decay)
        # How many codes died is data: this is a device sync each step and, under torch.compile,
        # a graph break. A fixed-shape rewrite (every code draws a candidate, torch.where keeps the
        # dead ones') would write the learned codebook inside the graph, after the forward saved it
        # for the backward, which AOTAutograd's version check refuses.
        dead = (self.usage < cfg.dead_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        picks = torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)
        self._write_codes(dead, flat[picks])
        _broadcast(self.codebook.data)  # rank 0's picks win everywhere
        self.usage[dead] = 2 * max(cfg.dead_threshold, 0.5)  # a grace period to attract data
        if self.config.codebook_update == "ema":
            # Forget the old cluster, or the next update would pull the code back to it.
            self.ema_count[dead] = 0.0
            self.ema_sum[dead] = 0.0


# ----------------------------------------------------------------------------------------------
# Rotation trick
# ----------------------------------------------------------------------------------------------
# With u = z/|z|, q = e/|e| and r = (u + q)/|u + q|, the matrix R = I - 2 r r^T + 2 q u^T is the
# product of two Householder reflections, (I - 2 q q^T)(I - 2 r r^T), hence a rotation, and
# R u = q. When u = -q, r is 0 and R = I - 2 q q^T: a reflection, still orthogonal, still R u = q.


def rotation_matrix(z: Tensor, e: Tensor) -> Tensor:
    """The rotation taking z/|z| to e/|e|, as explicit matrices: z, e [..., D] -> R [..., D, D].

    The quantizer applies it without building the matrix (`rotate_onto`); this is for checks.
    """
    u = F.normalize(z, dim=-1)
    q = F.normalize(e, dim=-1)
    r = F.normalize(u + q, dim=-1)
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    return eye - 2 * r[..., :, None] * r[..., None, :] + 2 * q[..., :, None] * u[..., None, :]


def rotate_onto(z: Tensor, e: Tensor) -> Tensor:
    """z, e [..., D] -> a tensor equal to e whose gradient w.r.t. z is (|e|/|z|) R^T g.

    The scale and R are treated as constants (stop-gradient), so the encoder gets the
    decoder's gradient rotated the way z would have to turn to become e.
    """
    zd, ed = z.detach(), e.detach()
    u = F.normalize(zd, dim=-1)
    q = F.normalize(ed, dim=-1)
    r = F.normalize(u + q, dim=-1)
    z_norm = zd.norm(dim=-1, keepdim=True)  # [..., 1]
    # |e|/|z| would explode for z ~ 0 (where no direction exists): fall back to scale 1 there.
    scale = torch.where(z_norm > 1e-6, ed.norm(dim=-1, keepdim=True) / z_norm.clamp_min(1e-6), 1.0)
    rz = z - 2 * r * (r * z).sum(-1, keepdim=True) + 2 * q * (u * z).sum(-1, keepdim=True)  # R z
    out = scale * rz
    # Forward value exactly e (float rounding, and z = 0 where no rotation exists); the
    # correction is a constant, so the gradient is untouched.
    return out + (ed - out).detach()


def _broadcast(t: Tensor) -> None:
    """Keep codebooks identical across data-parallel ranks after a data-dependent reset."""
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, src=0)


def _all_reduce(t: Tensor) -> None:
    """Sum t over data-parallel ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
