"""adaLN-Zero: a transformer block modulated by a conditioning vector (DiT, Peebles & Xie 2023).

Legend: B batch, T tokens, D width, Dc width of the conditioning vector c, S context tokens.

Each block reads a per-example vector c [B, Dc] (diffusion time + pooled condition) and regresses
from it six vectors [B, D]: a shift, a scale and a gate for self-attention and for the MLP:
    x += gate_a * SelfAttn(LN(x) * (1 + scale_a) + shift_a)
    x += CrossAttn(LN(x), context)                        (optional; unmodulated, as in PixArt)
    x += gate_m * MLP(LN(x) * (1 + scale_m) + shift_m)
c may also be one vector per token [B, T, Dc] (P4 ARLON's semantic injection: a coarse video
latent, upsampled to the token grid, modulates each token's norms), giving six [B, T, D] maps.
The LayerNorms have no affine parameters: the modulation replaces them. "Zero" is the init:
the regression layer starts at zero (gates = 0) and the cross-attention output projection too,
so every block starts as the identity and the network grows its residual branches from there,
which DiT found trains markedly better than plain adaLN or in-context conditioning.

`AdaLNFinal` is the matching output layer: a modulated LayerNorm (shift/scale from c) and a
zero-initialised linear map, so a fresh model predicts exactly 0.
"""

from __future__ import annotations

from torch import Tensor, nn

from latentforge.nn.attention import Attention
from latentforge.nn.moe import ExpertChoiceMLP
from latentforge.nn.transformer import MLP


def per_token(v: Tensor) -> Tensor:
    """A modulation vector per example [B, D] -> [B, 1, D]; one per token [B, T, D] stays."""
    return v[:, None] if v.dim() == 2 else v


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [B, T, D] shifted and scaled per example (shift, scale [B, D]) or per token ([B, T, D])."""
    return x * (1 + per_token(scale)) + per_token(shift)


def _modulation(cond_dim: int, dim: int, n: int) -> nn.Sequential:
    """c [B, Dc] -> n vectors of width dim, zero at init (the "Zero" of adaLN-Zero)."""
    layer = nn.Linear(cond_dim, n * dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return nn.Sequential(nn.SiLU(), layer)


class AdaLNBlock(nn.Module):
    """Self-attention and MLP modulated by c, optional cross-attention to a context."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None,
                 context_dim: int | None = None, experts: int = 0, expert_top_k: float = 1.0, *,
                 eps: float = 1e-5, mlp_eps: float | None = None) -> None:
        super().__init__()
        # eps: the norms' epsilon (DiT uses 1e-6); mlp_eps, when given, the MLP norm's alone
        # (diffusers' DiT port keeps 1e-6 before attention but its config's norm_eps before the MLP)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.attn = Attention(dim, heads)
        self.cross_norm = nn.LayerNorm(dim) if context_dim else None
        self.cross = Attention(dim, heads, context_dim=context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=eps if mlp_eps is None else mlp_eps)
        hidden = int(dim * mlp_ratio)
        # experts > 0: a mixture-of-experts MLP (P20) in place of the dense one
        self.mlp = ExpertChoiceMLP(dim, hidden, experts, expert_top_k) if experts else MLP(dim, hidden)
        self.modulation = _modulation(cond_dim or dim, dim, 6)
        self.zero_init()

    def zero_init(self) -> None:
        """Make the block the identity: gates come from the zeroed modulation; the cross-attention
        branch has no gate, so its output projection starts at zero instead (PixArt-alpha).
        Call again after any whole-model re-initialisation."""
        for p in self.modulation[1].parameters():
            nn.init.zeros_(p)
        if self.cross is not None:
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)

    def forward(self, x: Tensor, c: Tensor, *, key_mask: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, context_kv: tuple[Tensor, Tensor] | None = None,
                rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x [B, T, D], c [B, Dc] (or one vector per token, [B, T, Dc]: P4's semantic injection) -> [B, T, D].

        Args:
            key_mask: [B, T] bool, True where a token may be attended.
            context / context_kv: the context [B, S, Dc'] or its precomputed keys and values.
            context_mask: [B, S] bool, True where a context token is real.
            rope: rotary tables of x's positions for self-attention (nn/rope.py).
        """
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c).chunk(6, dim=-1)  # 6 x [B, D]
        x = x + per_token(gate_a) * self.attn(modulate(self.norm1(x), shift_a, scale_a), key_mask=key_mask, rope=rope)
        if self.cross is not None:
            if context is None and context_kv is None:
                raise ValueError("this block cross-attends: pass a context")
            x = x + self.cross(self.cross_norm(x), key_mask=context_mask, context=context, context_kv=context_kv)
        return x + per_token(gate_m) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class AdaLNFinal(nn.Module):
    """Modulated LayerNorm then a linear map to the output width; outputs 0 at init. [B, T, D] -> [B, T, O]."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
        self.modulation = _modulation(cond_dim or dim, dim, 2)
        self.linear = nn.Linear(dim, out_dim)
        self.zero_init()

    def zero_init(self) -> None:
        for p in [*self.modulation[1].parameters(), *self.linear.parameters()]:
            nn.init.zeros_(p)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
