"""A point-set autoencoder in the manner of 3DShape2VecSet: surface points -> a set of M latent
vectors -> an occupancy field, read back as surface points.

Legend: B shapes, P surface points, M latent tokens, Q query points, D width, C latent channels.

    points [B, P, 3] -> Fourier embedding [B, P, D]
      -> M queries: the embeddings of M farthest-point samples of the input (so the latents sit
         spread over the surface), cross-attending to all P embeddings -> [B, M, D]
      -> bottleneck on the M tokens (KL-Gaussian by default, any quantizer) -> [B, M, C]
      -> Linear to D, `depth` self-attention blocks over the M tokens -> [B, M, D]
    query xyz [B, Q, 3] -> Fourier embedding, cross-attention to the M tokens (queries do not see
      each other), Linear -> occupancy logits [B, Q]

Training: binary cross-entropy on the data's occupancy queries (half uniform in the cube, half near
the surface) plus the bottleneck's terms. Decoding for the modality: occupancy on a `decode_grid`^3
lattice, marching cubes at probability 0.5, P points drawn uniformly by area on the mesh (a shape
that never crosses 0.5 decodes as P points at the origin, and is counted in `empty_decodes`).

The latents are a set: `LatentSpec(grid=(M,), ordered=False)`; the FPS queries make token i "the
i-th farthest sample", an order no generator should rely on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ADDED_LATER
from latentforge.nn.geometry import FourierPointEmbedding, farthest_point_sample, gather_points, grid_points, level_set_points
from latentforge.nn.transformer import CrossAttentionBlock, Transformer, init_transformer_weights
from latentforge.quantize.base import Quantized, QuantizerConfig
from latentforge.quantize.gaussian import GaussianConfig
from latentforge.registry import lookup, register
from latentforge.tokenizers.base import Tokenizer, TokenizerConfig, latent_spec


@dataclass
class PointSetConfig(TokenizerConfig):
    layout = "points"
    batch_keys = ("queries", "occupancy")
    name: str = "pointset"
    points: int = 2048                     # P (set from the data)
    latents: int = 64                      # M tokens
    dim: int = 128                         # D
    heads: int = 4
    depth: int = 4                         # self-attention blocks over the latents (decoder side)
    bands: int = 8                         # Fourier frequencies per coordinate
    decode_grid: int = 48                  # lattice side when decoding to points
    decode_chunk: int = 16384              # query points per decoder call when decoding
    # MAR-3D's multi-resolution ("pyramid") training: each step encodes with a token count drawn
    # from `latents` and these, so one model encodes and decodes sets of any of those sizes (the
    # low- and high-resolution stages of a cascade share it); empty: always `latents`
    train_latents: tuple[int, ...] = field(default=(), metadata=ADDED_LATER)
    quantizer: QuantizerConfig = field(default_factory=lambda: GaussianConfig(dim=64, latent_channels=32,
                                                                              kl_weight=1e-4))

    def __post_init__(self) -> None:
        if not 1 <= self.latents <= self.points:
            raise ValueError(f"latents must be in 1..points ({self.points}), got {self.latents}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by {self.heads} heads")
        self.train_latents = tuple(self.train_latents)
        bad = [m for m in self.train_latents if not 1 <= m <= self.points]
        if bad:
            raise ValueError(f"train_latents must be in 1..points ({self.points}), got {bad}")
        if self.decode_grid < 8:
            raise ValueError(f"decode_grid must be >= 8, got {self.decode_grid}")

    @classmethod
    def tiny(cls) -> "PointSetConfig":
        return cls(points=64, latents=8, dim=32, heads=2, depth=1, bands=4, decode_grid=12,
                   quantizer=GaussianConfig(dim=8, latent_channels=4))


@register("tokenizer", "pointset", PointSetConfig)
class PointSetTokenizer(Tokenizer):
    """Point sets [B, P, 3] <-> M latent tokens."""

    def __init__(self, config: PointSetConfig) -> None:
        super().__init__()
        self.config = config
        D, q = config.dim, config.quantizer
        self.embed = FourierPointEmbedding(D, config.bands)
        self.gather = CrossAttentionBlock(D, config.heads, D)
        self.to_bottleneck = nn.Linear(D, q.dim)
        self.quantizer = lookup("quantizer", q.name)[1](q)
        self.from_bottleneck = nn.Linear(q.dim, D)          # every bottleneck hands back [.., dim]
        self.blocks = Transformer(D, config.depth, config.heads)
        init_transformer_weights(self.blocks, config.depth)
        self.query_embed = FourierPointEmbedding(D, config.bands)
        self.read = CrossAttentionBlock(D, config.heads, D)
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 1))
        self.spec = latent_spec(self.quantizer, (config.latents,), ordered=False)

    def _check(self, x: Tensor) -> None:
        P = self.config.points
        if x.dim() != 3 or x.shape[1:] != (P, 3):
            raise ValueError(f"expected point sets [B, {P}, 3], got {list(x.shape)}")
        # reads the points off the device: eager only, so that a compiled loss stays one graph
        if not torch.compiler.is_compiling() and not torch.isfinite(x).all():
            raise ValueError("point sets with NaN or infinite coordinates")

    def quantize(self, x: Tensor, latents: int | None = None) -> Quantized:
        """x [B, P, 3] -> the bottleneck's output on M tokens (M = `latents`, by default the config's:
        the FPS queries let one model encode a set of any size, see `train_latents`)."""
        self._check(x)
        M = self.config.latents if latents is None else latents
        if not 1 <= M <= x.shape[1]:
            raise ValueError(f"latents must be in 1..{x.shape[1]}, got {M}")
        tokens = self.embed(x)                                                        # [B, P, D]
        centres = farthest_point_sample(x.detach().float(), M)                        # [B, M]
        queries = gather_points(tokens, centres)                                      # [B, M, D]
        return self.quantizer(self.to_bottleneck(self.gather(queries, tokens)))

    def latent_field(self, z_q: Tensor) -> Tensor:
        """The decoder's tokens [B, M, D] from the bottleneck's output [B, M, dim]."""
        return self.blocks(self.from_bottleneck(z_q))

    def occupancy_logits(self, field_tokens: Tensor, xyz: Tensor) -> Tensor:
        """Logits [B, Q] of query points xyz [B, Q, 3] given the decoder's tokens [B, M, D]."""
        return self.head(self.read(self.query_embed(xyz), field_tokens))[..., 0]

    @torch.no_grad()
    def decode_latents(self, z_q: Tensor) -> Tensor:
        """[B, M, dim] -> surface points [B, P, 3] (marching cubes of the decoded occupancy)."""
        cfg = self.config
        tokens = self.latent_field(z_q)
        lattice = grid_points(cfg.decode_grid).to(z_q.device)                        # [R^3, 3]
        probs = torch.cat([torch.sigmoid(self.occupancy_logits(tokens, lattice[i: i + cfg.decode_chunk].expand(
            len(z_q), -1, -1)).float()) for i in range(0, len(lattice), cfg.decode_chunk)], 1)
        rng = np.random.default_rng(0)
        out = np.zeros((len(z_q), cfg.points, 3), np.float32)
        empty = 0
        for b, grid in enumerate(probs.view(len(z_q), *(cfg.decode_grid,) * 3).cpu().numpy()):
            pts = level_set_points(grid, 0.5, cfg.points, rng)
            if pts is None:
                empty += 1
            else:
                out[b] = pts
        self.empty_decodes = empty
        return torch.from_numpy(out).to(z_q.device)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch: "points" [B, P, 3], "queries" [B, Q, 3], "occupancy" bool [B, Q] -> 'loss', the
        occupancy BCE, the bottleneck's terms, and the queries' accuracy and IoU."""
        for key in ("queries", "occupancy"):
            if key not in batch:
                raise ValueError(f"the point-set tokenizer trains on occupancy: the batch has no {key!r} "
                                 f"(it has {', '.join(batch)})")
        sizes = (self.config.latents, *self.config.train_latents)
        M = sizes[int(torch.randint(len(sizes), ()))] if self.training and len(sizes) > 1 else sizes[0]
        q = self.quantize(batch["points"], M)
        logits = self.occupancy_logits(self.latent_field(q.z_q), batch["queries"].float())
        target = batch["occupancy"].float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), target)
        pred = logits.detach() > 0
        truth = target > 0.5
        iou = ((pred & truth).sum(1).float() / (pred | truth).sum(1).clamp_min(1).float()).mean()
        return {"loss": bce + sum(q.losses.values(), torch.zeros((), device=bce.device)), "occupancy_bce": bce,
                **q.losses, "occupancy_acc": (pred == truth).float().mean(), "occupancy_iou": iou, **q.stats}
