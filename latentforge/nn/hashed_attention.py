"""EcoFormer (P30) attention: kernelised binary hashes of queries and keys, linear in length.

Legend: B batch, H heads, T query length, S key length, Dh head size, m anchors, b bits.

Queries and keys are L2-normalised per head and mapped to b-bit codes in {-1, +1}:

    phi(x) = exp(-|x - a_j|^2 / (2 sigma)) - mvec     centred RBF features against m anchors, [m]
    h(x)   = sign(A^T phi(x))                        [b]; backward: clipped straight-through

The similarity sim(q, k) = h(q) . h(k) + (b + 1) = b - 2 Hamming + (b + 1) lies in [1, 2b + 1], so it
is positive and factorises through the codes; attention is then

    out_t = (h_t^T (sum_s h_s v_s^T) + (b + 1) sum_s v_s) / (h_t . sum_s h_s + S (b + 1))

in O((T + S) b Dh): no [T, S] matrix is built. Causal attention uses prefix sums of the same terms
(an [S, b, Dh] running sum, still linear). The official code adds (b + 1) v_t (the query's own value)
in the numerator but S (b + 1) in the denominator; we implement the consistent sum above.

The hash is not learned by backprop: anchors, sigma, mvec and A are buffers. `request_fit()` makes the
next forward fit them to that batch's softmax attention (the paper fits once, at the first forward of
fine-tuning), by kernel supervised hashing (KSH): target S = +1 on each query's top-k keys by
softmax score, -1 on its bottom-k, 0 elsewhere; bits are fitted greedily one at a time against the
residual R <- R - y_q y_k^T. Departures from the official `train_hashing_weight_woeig`, for a small
CPU fit: Adam (lr 0.1, 100 steps per bit) on a tanh relaxation instead of Nesterov SGD on a sigmoid
one, a subsample of at most `fit_queries` query rows per sequence, and a bit is kept when its binary
codes agree with the residual (y_q^T R y_k > 0) rather than when the full binarised loss drops,
because with a sparse S the full loss is dominated by the unlabelled pairs and almost never drops.
An unfitted module hashes with random anchors on the unit sphere and a random Gaussian A: the
"random projection" baseline.

Queries and keys keep their own projections (the paper shares one Q/K projection) so that the hash
can be swapped into a trained softmax model; both are hashed by the same function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def binary_codes(z: Tensor) -> Tensor:
    """sign(z) in {-1, +1} (0 -> +1); gradient of the clipped identity clamp(z, -1, 1)."""
    hard = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    soft = z.clamp(-1.0, 1.0)
    return soft + (hard - soft).detach()


def linear_hashed_attention(hq: Tensor, hk: Tensor, v: Tensor, *, causal: bool = False,
                            key_mask: Tensor | None = None) -> Tensor:
    """Attention with weights h_t . h_s + (b + 1), computed without a [T, S] matrix.

    Args:
        hq: query codes [B, H, T, b] in {-1, +1}.
        hk: key codes [B, H, S, b].
        v: values [B, H, S, Dh].
        causal: query t sees keys s <= t (needs T == S).
        key_mask: [B, S] bool, True where a key may be attended.
    Returns: [B, H, T, Dh].
    """
    bits = hq.shape[-1]
    offset = bits + 1.0
    ones = torch.ones_like(v[..., :1])                        # [B, H, S, 1] counts keys
    if key_mask is not None:
        keep = key_mask[:, None, :, None].to(v.dtype)        # [B, 1, S, 1]
        hk, v, ones = hk * keep, v * keep, ones * keep
    if not causal:
        kv = hk.transpose(-1, -2) @ v                         # [B, H, b, Dh]
        num = hq @ kv + offset * v.sum(-2, keepdim=True)      # [B, H, T, Dh]
        den = hq @ hk.sum(-2).unsqueeze(-1) + offset * ones.sum(-2, keepdim=True)  # [B, H, T, 1]
        return num / den
    if hq.shape[-2] != hk.shape[-2]:
        raise ValueError("causal hashed attention needs as many queries as keys (no KV cache)")
    # prefix sums over keys: memory S * b * Dh, linear in length
    kv = torch.cumsum(hk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)     # [B, H, S, b, Dh]
    num = (hq.unsqueeze(-2) @ kv).squeeze(-2) + offset * torch.cumsum(v, dim=-2)  # [B, H, T, Dh]
    den = (hq * torch.cumsum(hk, dim=-2)).sum(-1, keepdim=True) + offset * torch.cumsum(ones, dim=-2)
    return num / den


def quadratic_hashed_attention(hq: Tensor, hk: Tensor, v: Tensor, *, causal: bool = False,
                               key_mask: Tensor | None = None) -> Tensor:
    """The same attention written out with its [T, S] weight matrix: the reference for tests."""
    w = hq @ hk.transpose(-1, -2) + (hq.shape[-1] + 1.0)      # [B, H, T, S], every entry in [1, 2b+1]
    if key_mask is not None:
        w = w * key_mask[:, None, None, :].to(w.dtype)
    if causal:
        w = w.tril()
    return (w @ v) / w.sum(-1, keepdim=True)


class HashedAttention(nn.Module):
    """Hash queries and keys per head and attend linearly. q, k, v [B, H, T|S, Dh] -> [B, H, T, Dh]."""

    def __init__(self, heads: int, head_dim: int, bits: int = 16, anchors: int = 25, *, topk: int = 10,
                 fit_steps: int = 100, fit_queries: int = 256) -> None:
        super().__init__()
        self.bits, self.topk, self.fit_steps, self.fit_queries = bits, topk, fit_steps, fit_queries
        # random start: anchors on the unit sphere (where normalised q, k live), sigma = their mean
        # squared distance (2 for random directions), uncentred features, Gaussian projection
        self.register_buffer("anchors", F.normalize(torch.randn(heads, anchors, head_dim), dim=-1))
        self.register_buffer("sigma", torch.full((heads,), 2.0))
        self.register_buffer("mvec", torch.zeros(heads, anchors))
        self.register_buffer("A", torch.randn(heads, anchors, bits))
        self.fit_next = False

    def request_fit(self) -> None:
        """Fit the hash to the softmax attention of the next forward's batch (then hash as usual)."""
        self.fit_next = True

    def features(self, x: Tensor) -> Tensor:
        """Centred RBF features of normalised x [B, H, N, Dh] against the anchors -> [B, H, N, m]."""
        x = F.normalize(x.float(), dim=-1)
        # |x - a|^2 = 2 - 2 x.a on the unit sphere: no [B, H, N, m, Dh] difference tensor
        d2 = (2 - 2 * x @ self.anchors.transpose(-1, -2)).clamp_min(0)  # [B, H, N, m]
        return torch.exp(-d2 / (2 * self.sigma[:, None, None])) - self.mvec[:, None, :]

    def codes(self, x: Tensor) -> Tensor:
        """b-bit codes of x [B, H, N, Dh] -> [B, H, N, b] in {-1, +1}."""
        return binary_codes(self.features(x) @ self.A)  # [B, H, N, m] @ [H, m, b]

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                key_mask: Tensor | None = None) -> Tensor:
        if self.fit_next:
            self.fit(q, k)
            self.fit_next = False
        # the sums over S grow with length: keep them in fp32 even under autocast
        with torch.autocast(q.device.type, enabled=False):
            out = linear_hashed_attention(self.codes(q), self.codes(k), v.float(), causal=causal,
                                          key_mask=key_mask)
        return out.to(v.dtype)

    @torch.no_grad()
    def fit(self, q: Tensor, k: Tensor, generator: torch.Generator | None = None) -> None:
        """KSH fit of anchors, sigma, mvec and A to the softmax attention of q, k [B, H, N, Dh]."""
        B, H, N, Dh = k.shape
        q, k = q.detach().float(), k.detach().float()
        gen = dict(generator=generator, device=k.device)
        rows = torch.randperm(q.shape[2], **gen)[: self.fit_queries]
        q = q[:, :, rows]                                                   # [B, H, n, Dh]
        # target: +1 on each query's top-k keys by softmax score, -1 on its bottom-k, 0 elsewhere
        scores = q @ k.transpose(-1, -2)                                    # [B, H, n, N]
        top = min(self.topk, N // 2)
        target = torch.zeros_like(scores)
        target.scatter_(-1, scores.topk(top, dim=-1).indices, 1.0)
        target.scatter_(-1, scores.topk(top, dim=-1, largest=False).indices, -1.0)
        # anchors: m tokens drawn from the keys and queries of the batch, per head
        pool = F.normalize(torch.cat([q, k], dim=2), dim=-1).transpose(0, 1).reshape(H, -1, Dh)  # [H, P, Dh]
        pick = torch.randint(pool.shape[1], (H, self.anchors.shape[1]), **gen)
        self.anchors.copy_(torch.gather(pool, 1, pick[..., None].expand(-1, -1, Dh)))
        self.sigma.copy_((2 - 2 * pool @ self.anchors.transpose(-1, -2)).clamp_min(0).mean((1, 2)))  # [H]
        self.mvec.zero_()
        self.mvec.copy_(torch.cat([self.features(q), self.features(k)], dim=2).mean((0, 2)))
        fq, fk = self.features(q), self.features(k)                         # [B, H, n|N, m]
        residual = self.bits * target
        for bit in range(self.bits):
            a = self._fit_bit(fq, fk, residual, generator)                  # [H, m]
            yq = torch.where(fq @ a[:, :, None] >= 0, 1.0, -1.0)            # [B, H, n, 1]
            yk = torch.where(fk @ a[:, :, None] >= 0, 1.0, -1.0)            # [B, H, N, 1]
            self.A[:, :, bit] = a
            residual = residual - yq @ yk.transpose(-1, -2)

    @torch.enable_grad()
    def _fit_bit(self, fq: Tensor, fk: Tensor, residual: Tensor, generator: torch.Generator | None) -> Tensor:
        """One bit: maximise tanh(fq a)^T R tanh(fk a) per head; keep the random start if the fit's
        binary codes do not agree with the residual."""
        H, m = fq.shape[1], fq.shape[-1]
        start = torch.randn(H, m, generator=generator, device=fq.device)
        a = start.clone().requires_grad_(True)
        opt = torch.optim.Adam([a], lr=0.1)
        for _ in range(self.fit_steps):
            zq, zk = fq @ a[:, :, None], fk @ a[:, :, None]                 # [B, H, n|N, 1]
            # relax sign by tanh at the projections' own scale, so a's norm cannot sharpen it
            scale = torch.cat([zq, zk], dim=2).std(dim=(0, 2, 3)).detach().clamp_min(1e-6)[:, None, None]
            yq, yk = torch.tanh(2 * zq / scale), torch.tanh(2 * zk / scale)
            loss = -(yq.transpose(-1, -2) @ residual @ yk).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        a = a.detach()
        agree = (torch.sign(fq @ a[:, :, None]).transpose(-1, -2) @ residual
                 @ torch.sign(fk @ a[:, :, None])).sum(0).flatten()          # [H]
        return torch.where((agree > 0)[:, None], a, start)


def fit_hashes(model: nn.Module, forward: Callable[[], object]) -> int:
    """Fit every hash in `model` during one call of `forward` (e.g. `lambda: model(x)`), each layer
    to the attention it computes then, after the earlier layers already hash (the paper's fit at
    the first forward). Returns the number of hashed layers."""
    hashed = [m for m in model.modules() if isinstance(m, HashedAttention)]
    for m in hashed:
        m.request_fit()
    with torch.no_grad():
        forward()
    return len(hashed)
