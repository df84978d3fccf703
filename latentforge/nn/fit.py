"""FIT, Far-reaching Interleaved Transformers (Chen & Li; P23): local layers inside groups of data
tokens, interleaved with global layers over a few latent tokens per group.

Legend: B batch, L = t * n data tokens, t groups, n data tokens per group, m latents per group,
D data width, Dl latent width.

The data tokens are split into t groups of n consecutive tokens (for an image: contiguous
sub-images, `grid_to_groups`), and each group owns m latents, initialised from a learned [t, m, Dl]
table. A layer spec such as "(2)2(2)" lists blocks: "(k)" is k local layers, a bare number g is g
global layers. One block runs
  1. local: `TransformerBlock`s on each group's data tokens, groups folded into the batch [B*t, n, D];
  2. read: each group's latents cross-attend to their own group's data tokens;
  3. global: `TransformerBlock`s over all t*m latents [B, t*m, Dl] (chunk-causal: group g's latents
     see the latents of groups <= g, so group g's output never depends on a later group);
  4. write: each group's data tokens cross-attend to their own group's latents.
Steps 2-4 run only where the block has global layers, and the last block has none (the output is
the data tokens: global layers after the last write would reach nothing).

Cost per layer: local O(L n D), global O((t m)^2 Dl). With n fixed it is linear in L until the
latent set grows large; with n ~ L^(2/3) the whole stack is O(L^(4/3)).

Positions are the caller's, as for `Transformer(position="none")`: add them to the tokens (the
paper shares a within-group embedding across groups; the latent table tells groups apart).
Train with a learning-rate warm-up: at width 64 and AdamW 1e-3 without one, FIT collapsed to a
constant output in our runs (benchmarks/fit.py uses 100 warm-up steps).
"""

from __future__ import annotations

import dataclasses
import re

import torch
from einops import rearrange
from torch import Tensor, nn

from latentforge.nn.transformer import CrossAttentionBlock, TransformerBlock


def parse_layer_spec(spec: str) -> tuple[tuple[int, int], ...]:
    """"(2)2(2)" -> ((2, 2), (2, 0)): (local layers, global layers) per block.

    A block is "(k)" (k local layers) optionally followed by a number (global layers); a bare number
    at the start is a block with no local layers. The last block may not have global layers.
    """
    compact = spec.replace(" ", "")
    if not compact or not re.fullmatch(r"(?:\(\d+\)\d*|\d+)(?:\(\d+\)\d*)*", compact):
        raise ValueError(f"layer spec {spec!r} is not a sequence of '(local)global' blocks, e.g. '(2)2(2)'")
    blocks = []
    for local, global_ in re.findall(r"(?:\((\d+)\))?(\d*)", compact):
        if local or global_:
            blocks.append((int(local or 0), int(global_ or 0)))
    if blocks[-1][1]:
        raise ValueError(f"layer spec {spec!r} ends with global layers that no data token would read: "
                         "end with a local block, e.g. '(2)2(2)' or '(2)2(0)'")
    return tuple(blocks)


@dataclasses.dataclass
class FITConfig:
    """A FIT stack. `tokens` = groups * group_size is the sequence length it runs on."""

    dim: int = 64                # D, data token width
    heads: int = 4               # data-token attention heads (local layers, write)
    groups: int = 16             # t
    group_size: int = 64         # n, data tokens per group
    latents: int = 8             # m, latents per group
    latent_dim: int = 128        # Dl
    latent_heads: int = 4        # latent attention heads (read, global)
    layers: str = "(2)2(2)"      # the layer spec, see `parse_layer_spec`
    mlp_ratio: float = 4.0
    chunk_causal: bool = False   # latents of group g see only groups <= g (FITAR)

    def __post_init__(self) -> None:
        self.blocks = parse_layer_spec(self.layers)
        for name in ("dim", "heads", "groups", "group_size", "latents", "latent_dim", "latent_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def tokens(self) -> int:
        return self.groups * self.group_size

    @property
    def global_layers(self) -> int:
        return sum(g for _, g in self.blocks)


# ---------------------------------------------------------------------------------------------
# Images: groups are contiguous sub-images, not raster chunks
# ---------------------------------------------------------------------------------------------

def grid_to_groups(x: Tensor, group_hw: tuple[int, int]) -> Tensor:
    """[B, H, W, D] -> [B, L, D]: sub-images of gh x gw, in raster order of sub-images, each in
    raster order inside; the first n = gh * gw tokens are group 0 (the top-left sub-image)."""
    gh, gw = group_hw
    return rearrange(x, "b (th gh) (tw gw) d -> b (th tw gh gw) d", gh=gh, gw=gw)


def groups_to_grid(x: Tensor, grid_hw: tuple[int, int], group_hw: tuple[int, int]) -> Tensor:
    """Inverse of `grid_to_groups`: [B, L, D] -> [B, H, W, D]."""
    (h, w), (gh, gw) = grid_hw, group_hw
    return rearrange(x, "b (th tw gh gw) d -> b (th gh) (tw gw) d", th=h // gh, tw=w // gw, gh=gh, gw=gw)


def sub_image_order(grid_hw: tuple[int, int], group_hw: tuple[int, int]) -> Tensor:
    """[L] raster indices in group order: raster_tokens[:, order] == grid_to_groups(grid) for
    raster_tokens [B, H*W, D]; `order.argsort()` maps back. For callers holding raster sequences."""
    h, w = grid_hw
    if h % group_hw[0] or w % group_hw[1]:
        raise ValueError(f"grid {grid_hw} is not tiled by sub-images of {group_hw}")
    raster = torch.arange(h * w).view(1, h, w, 1)
    return grid_to_groups(raster, group_hw).view(-1)


# ---------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------

class FITBlock(nn.Module):
    """Local layers on the data tokens; with global layers: read, global, write (write skipped
    in the last block)."""

    def __init__(self, cfg: FITConfig, local: int, global_: int, write: bool) -> None:
        super().__init__()
        self.groups = cfg.groups
        self.local = nn.ModuleList(TransformerBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(local))
        self.read = CrossAttentionBlock(cfg.latent_dim, cfg.latent_heads, cfg.dim, cfg.mlp_ratio) if global_ else None
        self.global_ = nn.ModuleList(TransformerBlock(cfg.latent_dim, cfg.latent_heads, cfg.mlp_ratio)
                                     for _ in range(global_))
        self.write = CrossAttentionBlock(cfg.dim, cfg.heads, cfg.latent_dim, cfg.mlp_ratio) if global_ and write else None

    def forward(self, x: Tensor, z: Tensor, latent_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B*t, n, D] data tokens, z [B*t, m, Dl] latents, both with groups folded into the batch."""
        for layer in self.local:
            x = layer(x)                                          # [B*t, n, D]
        if self.read is None:
            return x, z
        z = self.read(z, context=x)                               # [B*t, m, Dl]
        bt, m, dl = z.shape
        z_all = z.reshape(bt // self.groups, self.groups * m, dl)  # [B, t*m, Dl]
        for layer in self.global_:
            z_all = layer(z_all, attn_mask=latent_mask)
        z = z_all.reshape(bt, m, dl)                              # [B*t, m, Dl]
        if self.write is not None:
            x = self.write(x, context=z)                          # [B*t, n, D]
        return x, z


class FIT(nn.Module):
    """FIT backbone: x [B, L, D] -> [B, L, D] with L = groups * group_size (a stand-in for
    `Transformer`; token l belongs to group l // group_size). Ends with a LayerNorm, as `Transformer`."""

    def __init__(self, cfg: FITConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.latent_init = nn.Parameter(torch.randn(cfg.groups, cfg.latents, cfg.latent_dim) * 0.02)
        last = len(cfg.blocks) - 1
        self.blocks = nn.ModuleList(FITBlock(cfg, local, global_, write=i < last)
                                    for i, (local, global_) in enumerate(cfg.blocks))
        self.norm = nn.LayerNorm(cfg.dim)
        mask = None
        if cfg.chunk_causal:
            group = torch.arange(cfg.groups).repeat_interleave(cfg.latents)  # [t*m] group of each latent
            mask = group[:, None] >= group[None, :]                         # [t*m, t*m] query sees key
        self.register_buffer("latent_mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.cfg
        B, L, D = x.shape
        if L != cfg.tokens:
            raise ValueError(f"FIT runs on {cfg.groups} groups x {cfg.group_size} = {cfg.tokens} tokens, got {L}")
        x = x.reshape(B * cfg.groups, cfg.group_size, D)                               # [B*t, n, D]
        z = self.latent_init.to(x.dtype).expand(B, -1, -1, -1).reshape(B * cfg.groups, cfg.latents, -1)
        for block in self.blocks:
            x, z = block(x, z, self.latent_mask)
        return self.norm(x.reshape(B, L, D))
