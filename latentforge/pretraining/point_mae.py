"""Point-MAE (P17): masked autoencoding of point-cloud patches.

Legend: B shapes, P points, G groups (patches), k points a group, D width, V visible groups.

    points [B, P, 3] -> G centres by farthest point sampling, each centre's k nearest points,
                        relative to the centre -> patches [B, G, k, 3]
      -> a mini-PointNet per patch (shared MLP, max-pool, the pooled feature concatenated back to
         every point, MLP, max-pool) -> tokens [B, G, D]
      -> mask a random `mask_ratio` of the groups per shape (Point-MAE: 60 %)
      -> encoder: transformer on the V visible tokens only, the centres' position embedding
         (MLP of the xyz) added before every block
      -> decoder: [encoded visible ; one shared mask token per masked group], positions of all
         centres, a shallow transformer; a Linear head reconstructs each masked group's k points
    loss: Chamfer-L2 between each masked group's prediction and its true k points (relative to
          the centre), averaged over the masked groups.

`features` (the probe contract): the encoder on all groups, no masking, max- and mean-pooled
([B, 2D]), as Point-MAE's classification head reads them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from latentforge.config import ADDED_LATER, ModelConfig
from latentforge.nn.geometry import farthest_point_sample, gather_points, knn
from latentforge.nn.transformer import TransformerBlock, init_transformer_weights
from latentforge.registry import register


@dataclass
class PointMAEConfig(ModelConfig):
    kind = "probe"
    name: str = "point_mae"
    groups: int = 32                  # G centres
    group_size: int = 16              # k points a group
    dim: int = 128                    # D
    depth: int = 4                    # encoder blocks
    decoder_depth: int = 2
    heads: int = 4
    mask_ratio: float = 0.6
    # Point-MAE's ablation: the mask tokens enter the encoder (which then runs on all G groups)
    # instead of only the decoder; the same reconstruction target, more encoder compute
    mask_tokens_in_encoder: bool = field(default=False, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.groups < 2 or self.group_size < 1:
            raise ValueError(f"need groups >= 2 and group_size >= 1, got {self.groups}, {self.group_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by {self.heads} heads")

    @property
    def masked(self) -> int:
        """Masked groups a shape: round(mask_ratio x G), at least 1 and leaving 1 visible."""
        return min(self.groups - 1, max(1, round(self.mask_ratio * self.groups)))

    @property
    def feature_dim(self) -> int:
        return 2 * self.dim

    @classmethod
    def tiny(cls) -> "PointMAEConfig":
        return cls(groups=8, group_size=4, dim=16, depth=1, decoder_depth=1, heads=2)


def group_points(points: Tensor, groups: int, size: int) -> tuple[Tensor, Tensor]:
    """(centres [B, G, 3], patches [B, G, k, 3] relative to their centre)."""
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < max(groups, size):
        raise ValueError(f"Point-MAE: expected point sets [B, P >= {max(groups, size)}, 3], got {list(points.shape)}")
    centres = gather_points(points, farthest_point_sample(points.detach(), groups))   # [B, G, 3]
    patches = gather_points(points, knn(points, centres, size))                      # [B, G, k, 3]
    return centres, patches - centres[:, :, None]


class PatchEmbedding(nn.Module):
    """Mini-PointNet: [B, G, k, 3] -> [B, G, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))
        self.second = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, patches: Tensor) -> Tensor:
        f = self.first(patches)                                              # [B, G, k, D]
        pooled = f.max(2, keepdim=True).values.expand_as(f)
        return self.second(torch.cat([f, pooled], -1)).max(2).values


@register("probe", "point_mae", PointMAEConfig)
class PointMAE(nn.Module):
    def __init__(self, config: PointMAEConfig) -> None:
        super().__init__()
        self.config = config
        D = config.dim
        self.embed = PatchEmbedding(D)
        self.position = nn.Sequential(nn.Linear(3, D), nn.GELU(), nn.Linear(D, D))
        self.encoder = nn.ModuleList(TransformerBlock(D, config.heads) for _ in range(config.depth))
        self.encoder_norm = nn.LayerNorm(D)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_position = nn.Sequential(nn.Linear(3, D), nn.GELU(), nn.Linear(D, D))
        self.decoder = nn.ModuleList(TransformerBlock(D, config.heads) for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, 3 * config.group_size)
        init_transformer_weights(self.encoder, config.depth)
        init_transformer_weights(self.decoder, config.decoder_depth)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, tokens: Tensor, centres: Tensor) -> Tensor:
        """Tokens [B, V, D] at centres [B, V, 3] -> encoded [B, V, D]; positions added before every block."""
        pos = self.position(centres)
        x = tokens
        for block in self.encoder:
            x = block(x + pos)
        return self.encoder_norm(x)

    def random_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """[B, G] bool, True for the `masked` groups of each shape (a random subset per shape)."""
        G = self.config.groups
        ranks = torch.rand(batch, G, generator=generator, device=device).argsort(1).argsort(1)
        return ranks < self.config.masked

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """batch["points"] [B, P, 3] -> 'loss' (Chamfer-L2 of the masked groups) and stats."""
        cfg = self.config
        points = batch["points"].float()
        centres, patches = group_points(points, cfg.groups, cfg.group_size)
        B, G = centres.shape[:2]
        mask = self.random_mask(B, points.device, generator)                           # [B, G]
        tokens = self.embed(patches)
        M, V = cfg.masked, G - cfg.masked
        vis_idx = (~mask).nonzero()[:, 1].view(B, V)
        mask_idx = mask.nonzero()[:, 1].view(B, M)
        order = torch.cat([vis_idx, mask_idx], 1)                                      # visible first
        if cfg.mask_tokens_in_encoder:
            tokens = torch.where(mask[..., None], self.mask_token.expand(B, G, -1), tokens)
            x = self.encode(gather_points(tokens, order), gather_points(centres, order))   # [B, G, D]
        else:
            encoded = self.encode(gather_points(tokens, vis_idx), gather_points(centres, vis_idx))
            x = torch.cat([encoded, self.mask_token.expand(B, M, -1)], 1)              # [B, G, D]
        pos = self.decoder_position(gather_points(centres, order))
        for block in self.decoder:
            x = block(x + pos)
        pred = self.head(self.decoder_norm(x[:, V:])).view(B, M, cfg.group_size, 3)   # masked groups
        true = gather_points(patches.flatten(2), mask_idx).view(B, M, cfg.group_size, 3)
        d = torch.cdist(pred.flatten(0, 1).float(), true.flatten(0, 1).float()).square()  # [B M, k, k]
        chamfer = d.min(2).values.mean(1) + d.min(1).values.mean(1)
        # the "predict a mean group" baseline: every masked group as the batch's mean patch
        mean_patch = true.mean((0, 1), keepdim=True).expand_as(true).flatten(0, 1).float()
        d0 = torch.cdist(mean_patch, true.flatten(0, 1).float()).square()
        baseline = (d0.min(2).values.mean(1) + d0.min(1).values.mean(1)).mean().detach()
        return {"loss": chamfer.mean(), "chamfer": chamfer.mean().detach(), "mean_group_chamfer": baseline}

    @torch.no_grad()
    def features(self, shapes: Tensor | np.ndarray, batch: int = 64) -> Tensor:
        """Point sets [N, P, 3] -> float64 [N, 2D]: max and mean of the encoder's outputs, no masking."""
        self.eval()
        x = torch.as_tensor(np.asarray(shapes, np.float32)) if isinstance(shapes, np.ndarray) else shapes.float()
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(x), batch):
            centres, patches = group_points(x[i: i + batch].to(device), self.config.groups, self.config.group_size)
            h = self.encode(self.embed(patches), centres)
            out.append(torch.cat([h.max(1).values, h.mean(1)], -1).double().cpu())
        return torch.cat(out)


def pretrain(model: PointMAE, shapes: Tensor, steps: int, seed: int = 0, batch: int = 32) -> dict[str, float]:
    """Point-MAE's recipe on point sets [N, P, 3]: AdamW 1e-3, weight decay 0.05, cosine to 0, random
    batches; returns the last step's terms and the seconds a step. Leaves the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    out: dict[str, Tensor] = {}
    for _ in range(steps):
        out = model.loss({"points": shapes[torch.randint(0, len(shapes), (batch,), generator=g)]}, generator=g)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        schedule.step()
    model.eval()
    return {"seconds_per_step": (time.perf_counter() - start) / max(steps, 1),
            **{k: float(v) for k, v in out.items() if k != "loss"}}
