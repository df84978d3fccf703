"""Multi-head attention on `F.scaled_dot_product_attention`, with an optional KV cache.

Legend: B batch, T query length, S key length, H heads, Dh head size, D model width.
One module serves self-attention (causal or not) and cross-attention to a context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.alibi import alibi_bias
from latentforge.nn.hashed_attention import HashedAttention
from latentforge.nn.rope import apply_rope


class KVCache:
    """Pre-allocated keys/values of one self-attention layer, filled left to right."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.k = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, H, T, Dh] after the cached ones; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (speculative decoding rolls back rejected drafts);
        the next append overwrites them."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a KV cache of {self.length} positions to {length}")
        self.length = length


class Attention(nn.Module):
    """Self- or cross-attention. `context_dim` set means cross-attention (keys from the context).

    hash_bits > 0 replaces softmax self-attention by EcoFormer's binary-hash attention
    (nn/hashed_attention.py): linear in length, no KV cache, ALiBi or attn_mask.
    head_dim set: heads of that size, so the inner width heads * head_dim may differ from `dim`
    (a structurally pruned layer that kept some heads, nn/vib_prune.py); default dim // heads.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, bias: bool = True, *,
                 hash_bits: int = 0, hash_anchors: int = 25, head_dim: int | None = None) -> None:
        super().__init__()
        if head_dim is None and dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads if head_dim is None else head_dim
        inner = heads * self.head_dim
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, inner, bias=bias)
            self.kv = nn.Linear(context_dim, 2 * inner, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * inner, bias=bias)
        self.proj = nn.Linear(inner, dim, bias=bias)
        if hash_bits and self.is_cross:
            raise ValueError("hashed attention is implemented for self-attention only")
        self.hashed = HashedAttention(heads, self.head_dim, hash_bits, hash_anchors) if hash_bits else None

    def _split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, Dh]

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a context [B, S, Dc]; computed once per sampling run and reused."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x: Tensor, *, causal: bool = False, key_mask: Tensor | None = None,
                context: Tensor | None = None, context_kv: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, rope: tuple[Tensor, Tensor] | None = None,
                attn_mask: Tensor | None = None, alibi: Tensor | None = None,
                kv_index: Tensor | None = None) -> Tensor:
        """x [B, T, D] -> [B, T, D].

        Args:
            causal: self-attention only sees earlier positions (and cached ones).
            key_mask: [B, S] bool, True where a key may be attended (padding mask).
            context / context_kv: the context [B, S, Dc] or its precomputed keys and values.
            cache: self-attention KV cache; new keys are appended, queries see all cached keys.
            rope: self-attention's rotary tables (cos, sin) of x's positions, [T, Dh/2] or
                [B, T, Dh/2] (nn/rope.py): queries and keys are rotated before the product.
            attn_mask: [T, S] bool, True where query t may attend key s (a block-causal pattern),
                combined with key_mask.
            alibi: self-attention's ALiBi slopes [H] (nn/alibi.py): each head's scores get
                -slope * |i - j|, with queries at positions after the cached keys.
            kv_index: [B, S] int64, self-attention only: every query attends to the keys and values
                of these tokens alone (P18 MP3's context subset: their current hidden states); the
                cost falls with S. Not combined with a cache, masks or ALiBi.
        """
        B, T, D = x.shape
        if self.is_cross:
            q = self._split(self.q(x))
            k, v = context_kv if context_kv is not None else self.context_kv(context)
            offset = 0
            if alibi is not None:
                raise ValueError("ALiBi biases self-attention by token distance; cross-attention has none")
        else:
            q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            offset = cache.length if cache is not None else 0
            if cache is not None:
                k, v = cache.append(k, v)
            if kv_index is not None:
                if cache is not None or causal or key_mask is not None or attn_mask is not None or alibi is not None:
                    raise ValueError("kv_index restricts keys to a token subset; it takes no cache, causal mask, "
                                     "key_mask, attn_mask or ALiBi")
                rows = kv_index[:, None, :, None].expand(-1, self.heads, -1, self.head_dim)  # [B, H, S, Dh]
                k, v = k.gather(2, rows), v.gather(2, rows)
        if self.hashed is not None:
            if cache is not None or attn_mask is not None or alibi is not None:
                raise ValueError("hashed attention supports causal and key_mask only (no cache, attn_mask, ALiBi)")
            out = self.hashed(q, k, v, causal=causal, key_mask=key_mask)  # [B, H, T, Dh]
            return self.proj(out.transpose(1, 2).reshape(B, T, -1))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, S]
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask & attn_mask
        is_causal = False
        if causal and T > 1:
            if offset == 0 and mask is None and alibi is None:
                is_causal = True  # lets SDPA pick its fused causal kernel
            else:
                S = k.shape[2]
                allowed = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=offset)
                mask = allowed if mask is None else mask & allowed
        if alibi is not None:
            # one float mask carries both: the distance bias where a key is allowed, -inf elsewhere
            bias = alibi_bias(alibi.float(), T, k.shape[2], offset)  # [H, T, S]
            if mask is not None:
                bias = torch.where(mask, bias, float("-inf"))        # [B or 1, H, T, S]
            mask = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.proj(out.transpose(1, 2).reshape(B, T, -1))
