"""Pre-norm transformer block (self-attention, optional cross-attention, MLP) and a stack of them.

Every generator and conditioning encoder is built from these; families differ in masking
(causal or bidirectional), conditioning (cross-attention now; adaLN comes with DiT) and heads.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.alibi import geometric_slopes, harmonic_slopes
from latentforge.nn.attention import Attention, KVCache
from latentforge.nn.kv_quant import QuantizedKVCache, Staircase, new_kv_cache
from latentforge.nn.matformer import nested_units
from latentforge.nn.rope import sequence_rope


class MLP(nn.Module):
    """fc -> GELU -> proj. `nested` fractions of the hidden units (MatFormer, nn/matformer.py) make
    the first m units a submodel; `width` is the number of hidden units a forward pass uses."""

    def __init__(self, dim: int, hidden: int, nested: Sequence[float] = ()) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(hidden, dim)
        self.units = nested_units(hidden, nested)  # () when not nested
        self.nested = tuple(float(f) for f in nested)
        self.hidden = hidden
        self.width = hidden

    def forward(self, x: Tensor) -> Tensor:
        m = self.width
        if m == self.hidden:  # the whole MLP (fc may be wrapped, e.g. by LoRA: no slicing then)
            return self.proj(self.act(self.fc(x)))
        # a submodel: the first m hidden units (rows of fc, columns of proj); proj's bias is whole
        h = self.act(F.linear(x, self.fc.weight[:m], self.fc.bias[:m]))  # [..., m]
        return F.linear(h, self.proj.weight[:, :m], self.proj.bias)


class TransformerBlock(nn.Module):
    """x += SelfAttn(LN x); [x += CrossAttn(LN x, context)]; x += MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None,
                 nested_widths: Sequence[float] = (), *, hash_bits: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, hash_bits=hash_bits)
        self.cross_norm = nn.LayerNorm(dim) if context_dim else None
        self.cross = Attention(dim, heads, context_dim=context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), nested_widths)

    def forward(self, x: Tensor, *, causal: bool = False, key_mask: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: tuple[Tensor, Tensor] | None = None, cache: KVCache | None = None,
                attn_mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                alibi: Tensor | None = None, kv_index: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), causal=causal, key_mask=key_mask, cache=cache, attn_mask=attn_mask,
                          rope=rope, alibi=alibi, kv_index=kv_index)
        if self.cross is not None:
            if context is None and context_kv is None:
                raise ValueError("this block cross-attends: pass a context")
            x = x + self.cross(self.cross_norm(x), key_mask=context_mask, context=context, context_kv=context_kv)
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """x += CrossAttn(LN x, LN context); x += MLP(LN x): queries read a context without attending to
    each other (3DShape2VecSet's encoder and occupancy decoder: a query point's answer must not
    depend on which other points are asked)."""

    def __init__(self, dim: int, heads: int, context_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.cross = Attention(dim, heads, context_dim=context_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.cross(self.norm(x), context=self.context_norm(context))
        return x + self.mlp(self.norm2(x))


# Relative positions the stack applies in self-attention itself, over the 1D sequence index
# (tokens at cache.length, cache.length + 1, ... when decoding with a cache):
#   none: the caller adds positions to the tokens (a learned table), or the tokens are a set;
#   rope: RoPE (nn/rope.py); alibi: ALiBi, geometric slopes (nn/alibi.py);
#   rope_alibi: P15's factored RoPE x ALiBi, harmonic slopes 1/h.
Position = Literal["none", "rope", "alibi", "rope_alibi"]

# Self-attention kernel: softmax (SDPA), or P30 EcoFormer's binary-hash linear attention
# (nn/hashed_attention.py; `fit_hashes` fits its hash to the softmax attention of a batch).
AttentionKind = Literal["softmax", "hashed"]


class Transformer(nn.Module):
    """A stack of `TransformerBlock`s with a final LayerNorm. x [B, T, D] -> [B, T, D].

    nested_widths: MatFormer fractions of every block's MLP (nn/matformer.py sets the widths run).
    position: relative positions applied in self-attention (see `Position`); adds no parameters.
    attention: self-attention kernel (see `AttentionKind`); "hashed" uses `hash_bits`-bit codes and
        adds buffers (the hash) but no parameters.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 context_dim: int | None = None, nested_widths: Sequence[float] = (), *,
                 position: Position = "none", rope_base: float = 10000.0,
                 attention: AttentionKind = "softmax", hash_bits: int = 16) -> None:
        super().__init__()
        if position not in typing.get_args(Position):
            raise ValueError(f"position must be one of {typing.get_args(Position)}, got {position!r}")
        if attention not in typing.get_args(AttentionKind):
            raise ValueError(f"attention must be one of {typing.get_args(AttentionKind)}, got {attention!r}")
        bits = hash_bits if attention == "hashed" else 0
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, context_dim, nested_widths,
                                                     hash_bits=bits)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.position, self.rope_base, self.head_dim = position, rope_base, dim // heads
        slopes = {"alibi": geometric_slopes, "rope_alibi": harmonic_slopes}.get(position)
        # derived from the head count, not saved: checkpoints stay what they were
        self.register_buffer("alibi_slopes", None if slopes is None else slopes(heads), persistent=False)

    def new_caches(self, batch: int, max_len: int, like: Tensor,
                   kind: str | Staircase = "full") -> list[KVCache | QuantizedKVCache]:
        """One self-attention cache per block; `kind` picks full precision or quantized (nn/kv_quant.py)."""
        return [new_kv_cache(kind, batch, b.attn.heads, max_len, b.attn.head_dim, like.device, like.dtype)
                for b in self.blocks]

    def context_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-block cross-attention keys/values of a fixed context, for repeated decoding steps."""
        return [b.cross.context_kv(context) for b in self.blocks]

    def forward(self, x: Tensor, *, causal: bool = False, key_mask: Tensor | None = None,
                context: Tensor | None = None, context_mask: Tensor | None = None,
                context_kv: list[tuple[Tensor, Tensor]] | None = None,
                caches: list[KVCache] | None = None, attn_mask: Tensor | None = None,
                kv_index: Tensor | None = None) -> Tensor:
        """kv_index [B, S]: every block's self-attention reads keys/values of these tokens only (P18)."""
        offset = caches[0].length if caches else 0  # x's first position in the sequence
        rope = None
        if self.position in ("rope", "rope_alibi"):
            rope = sequence_rope(offset, x.shape[1], self.head_dim, self.rope_base, x.device)  # [T, Dh/2] each
        for i, block in enumerate(self.blocks):
            x = block(x, causal=causal, key_mask=key_mask, context=context, context_mask=context_mask,
                      context_kv=None if context_kv is None else context_kv[i],
                      cache=None if caches is None else caches[i], attn_mask=attn_mask,
                      rope=rope, alibi=self.alibi_slopes, kv_index=kv_index)
        return self.norm(x)


def init_transformer_weights(module: nn.Module, depth: int) -> None:
    """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2*depth)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2 and "norm" not in name:
            residual = name.endswith(("proj.weight", "mlp.proj"))  # mlp.proj: the experts' stacked weights
            std = 0.02 / math.sqrt(2 * depth) if residual else 0.02
            nn.init.normal_(p, std=std)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
