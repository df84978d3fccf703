"""Two-stream joint-attention block (MM-DiT style, as in P12 LaVin-DiT's joint DiT).

Legend: B batch, Sc condition tokens, St target tokens, S = Sc + St, D width, H heads, Dh head size,
F = Dh / 2 rotated pairs, Dc width of the conditioning vectors.

Two token streams, a condition stream xc [B, Sc, D] and a target stream xt [B, St, D], each with
its own weights (QKV and output projections, QK-RMSNorm, SwiGLU MLP, adaLN modulation), meet in
ONE attention over the concatenated tokens, so every token of either stream reads every other:

    per stream s:   h_s = RMSNorm(x_s) * (1 + scale_a,s)            scale-only adaLN (no shift)
                    q_s, k_s, v_s = split(QKV_s(h_s)); q_s, k_s = RMSNorm_q,s(q_s), RMSNorm_k,s(k_s)
    joint:          o = SDPA(rope([q_c; q_t]), rope([k_c; k_t]), [v_c; v_t])   over all S tokens
    per stream s:   x_s += tanh(gate_a,s) * RMSNorm(Out_s(o_s))     sandwich norm, tanh gate
                    x_s += tanh(gate_m,s) * RMSNorm(SwiGLU_s(RMSNorm(x_s) * (1 + scale_m,s)))

The modulation layers start at zero, so tanh(gate) = 0 and a fresh block is the identity.
`shared=True` is the one-stream ablation: both streams are the same `StreamWeights` object (tied
weights); each stream still gets its own conditioning vector (LaVin-DiT modulates the condition by
t + prompt embedding and the target by t + answer embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.nn.adaln import per_token
from latentforge.nn.rope import apply_rope


class SwiGLU(nn.Module):
    """W_out(SiLU(W_gate x) * W_up x): the gated MLP of LLaMA and LaVin-DiT. [..., D] -> [..., D]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden)
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class StreamWeights(nn.Module):
    """Everything one stream owns: norms, QKV / output projections, QK norms, MLP, modulation."""

    def __init__(self, dim: int, heads: int, hidden: int, cond_dim: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        head_dim = dim // heads
        self.attn_norm = nn.RMSNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(head_dim)   # QK-RMSNorm keeps the attention logits bounded
        self.k_norm = nn.RMSNorm(head_dim)
        self.out = nn.Linear(dim, dim)
        self.attn_post_norm = nn.RMSNorm(dim)
        self.mlp_norm = nn.RMSNorm(dim, elementwise_affine=False)
        self.mlp = SwiGLU(dim, hidden)
        self.mlp_post_norm = nn.RMSNorm(dim)
        # c -> (scale_a, gate_a, scale_m, gate_m), zero at init: the block starts as the identity
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 4 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)


class JointAttentionBlock(nn.Module):
    """One two-stream block: per-stream weights, one joint attention. Returns the updated (xc, xt)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None,
                 shared: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        # SwiGLU has three matrices to the plain MLP's two: 2/3 of the hidden width keeps the parameters
        hidden = int(2 * mlp_ratio * dim / 3)
        self.cond = StreamWeights(dim, heads, hidden, cond_dim or dim)
        self.target = self.cond if shared else StreamWeights(dim, heads, hidden, cond_dim or dim)
        self.shared = shared

    def _qkv(self, stream: StreamWeights, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, S, _ = h.shape
        q, k, v = (t.view(B, S, self.heads, self.head_dim).transpose(1, 2)
                   for t in stream.qkv(h).chunk(3, dim=-1))                         # [B, H, S, Dh] each
        return stream.q_norm(q), stream.k_norm(k), v

    def forward(self, xc: Tensor, xt: Tensor, cc: Tensor, ct: Tensor, *,
                rope: tuple[Tensor, Tensor] | None = None, key_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """xc [B, Sc, D], xt [B, St, D]; cc, ct [B, Dc] the streams' conditioning vectors.

        Args:
            rope: rotary tables (cos, sin) of the joint sequence [condition; target], [S, F] or [B, S, F].
            key_mask: [B, S] bool, True where a key may be attended (absent context pairs are False).
            attn_mask: [S, S] or [B, 1, S, S] bool, True where query i may attend key j (combined with key_mask).
        """
        Sc = xc.shape[1]
        streams = (self.cond, self.target)
        mods = [s.modulation(c).chunk(4, dim=-1) for s, c in zip(streams, (cc, ct))]  # per stream 4 x [B, D]
        parts = [self._qkv(s, s.attn_norm(x) * (1 + per_token(m[0])))
                 for s, x, m in zip(streams, (xc, xt), mods)]
        q, k, v = (torch.cat(t, dim=2) for t in zip(*parts))                          # [B, H, S, Dh] each
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None if key_mask is None else key_mask[:, None, None, :]               # [B, 1, 1, S]
        if attn_mask is not None:
            mask = attn_mask if mask is None else mask & attn_mask
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                   # [B, H, S, Dh]
        o = o.transpose(1, 2).flatten(2)                                              # [B, S, D]
        out = []
        for s, x, o_s, (_, gate_a, scale_m, gate_m) in zip(streams, (xc, xt), (o[:, :Sc], o[:, Sc:]), mods):
            x = x + torch.tanh(per_token(gate_a)) * s.attn_post_norm(s.out(o_s))
            h = s.mlp(s.mlp_norm(x) * (1 + per_token(scale_m)))
            out.append(x + torch.tanh(per_token(gate_m)) * s.mlp_post_norm(h))
        return out[0], out[1]
