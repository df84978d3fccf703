"""Axial attention (P13, Ho et al. 2019): attend along one axis of a 2D grid at a time.

Legend: B batch, H rows, W columns, N = H*W tokens, D width, L context length.

Row attention lets every token attend to the tokens of its own row (the columns fold into the
batch: [B, H, W, D] -> [B*H, W, D]); column attention to the tokens of its own column
([B, H, W, D] -> [B*W, H, D]). Either can be causal along its axis. A row layer followed by a
column layer gives every token a path to every other token, at attention cost O(N*(H+W)*D)
instead of full attention's O(N^2*D).

`AxialBlock` is the pre-norm residual block of `nn/transformer.py` with the self-attention
replaced by one axial attention:
    x += AxialAttn(LN x); [x += CrossAttn(LN x, context)]; x += MLP(LN x)
Cross-attention (to a condition) sees the whole grid as one sequence of N queries.

Both take an optional `KVCache` for incremental decoding. The cache holds keys of the folded
batch, so a column cache has B*W rows (one per column) and grows by a row per call, and a row
cache has B*H rows and grows by tokens within the rows given.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from latentforge.nn.attention import Attention, KVCache
from latentforge.nn.transformer import MLP

Axis = Literal["row", "column"]


class AxialAttention(nn.Module):
    """Self-attention within each row (axis="row") or each column (axis="column") of [B, H, W, D]."""

    def __init__(self, dim: int, heads: int, axis: Axis, causal: bool = False) -> None:
        super().__init__()
        if axis not in ("row", "column"):
            raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
        self.axis = axis
        self.causal = causal
        self.attn = Attention(dim, heads)

    def new_cache(self, batch: int, grid: tuple[int, int], like: Tensor) -> KVCache:
        """A cache for decoding `batch` grids of shape `grid` along this layer's axis."""
        H, W = grid
        folded, length = (batch * H, W) if self.axis == "row" else (batch * W, H)
        return KVCache(folded, self.attn.heads, length, self.attn.head_dim, like.device, like.dtype)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """x [B, H, W, D] -> [B, H, W, D]. With a cache, x holds only the new rows (column axis)
        or the new columns (row axis); they attend to the cached ones too."""
        B, H, W, D = x.shape
        if self.axis == "row":
            out = self.attn(x.reshape(B * H, W, D), causal=self.causal, cache=cache)  # [B*H, W, D]
            return out.view(B, H, W, D)
        cols = x.transpose(1, 2).reshape(B * W, H, D)                                 # [B*W, H, D]
        out = self.attn(cols, causal=self.causal, cache=cache)
        return out.view(B, W, H, D).transpose(1, 2)                                    # [B, H, W, D]


class AxialBlock(nn.Module):
    """Pre-norm residual block around one axial attention, optional cross-attention, and an MLP."""

    def __init__(self, dim: int, heads: int, axis: Axis, causal: bool = False, mlp_ratio: float = 4.0,
                 context_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = AxialAttention(dim, heads, axis, causal)
        self.cross_norm = nn.LayerNorm(dim) if context_dim else None
        self.cross = Attention(dim, heads, context_dim=context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, *, context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None, cache: KVCache | None = None) -> Tensor:
        """x [B, H, W, D] -> [B, H, W, D]; context [B, L, Dc] with mask [B, L] (True = real)."""
        x = x + self.attn(self.norm1(x), cache=cache)
        if self.cross is not None:
            if context is None and context_kv is None:
                raise ValueError("this block cross-attends: pass a context")
            B, H, W, D = x.shape
            q = self.cross_norm(x).reshape(B, H * W, D)  # every grid token queries the context
            out = self.cross(q, key_mask=context_mask, context=context, context_kv=context_kv)
            x = x + out.view(B, H, W, D)
        return x + self.mlp(self.norm2(x))


class AxialStack(nn.Module):
    """Axial blocks in a given order, then a LayerNorm. `layout` lists (axis, causal) per block,
    e.g. [("row", False), ("column", True)] * depth for P13's upper-context stack."""

    def __init__(self, dim: int, heads: int, layout: list[tuple[Axis, bool]], mlp_ratio: float = 4.0,
                 context_dim: int | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AxialBlock(dim, heads, axis, causal, mlp_ratio, context_dim)
                                    for axis, causal in layout)
        self.norm = nn.LayerNorm(dim)

    def new_caches(self, batch: int, grid: tuple[int, int], like: Tensor, axis: Axis) -> list[KVCache | None]:
        """Caches for the blocks attending along `axis` (None for the others, which see whole lines)."""
        return [b.attn.new_cache(batch, grid, like) if b.attn.axis == axis else None for b in self.blocks]

    def context_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-block cross-attention keys/values of a fixed context, for repeated decoding steps."""
        return [b.cross.context_kv(context) for b in self.blocks]

    def forward(self, x: Tensor, *, context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: list[tuple[Tensor, Tensor]] | None = None,
                caches: list[KVCache | None] | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, context=context, context_mask=context_mask,
                      context_kv=None if context_kv is None else context_kv[i],
                      cache=None if caches is None else caches[i])
        return self.norm(x)


def attention_flops(grid: tuple[int, int], dim: int, axis: Axis | None) -> int:
    """FLOPs of the score and weighted-sum products of one attention layer over an (H, W) grid
    (2 FLOPs per multiply-add, projections excluded, masked entries counted as computed):
    full attention (axis None) 4*N^2*D, row attention 4*N*W*D, column attention 4*N*H*D."""
    H, W = grid
    N = H * W
    keys = {None: N, "row": W, "column": H}[axis]
    return 4 * N * keys * dim

