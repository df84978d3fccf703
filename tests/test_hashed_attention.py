"""P30 EcoFormer: binary-hash linear attention (latentforge/nn/hashed_attention.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from latentforge.nn.attention import Attention, KVCache
from latentforge.nn.hashed_attention import HashedAttention, fit_hashes, linear_hashed_attention, quadratic_hashed_attention
from latentforge.nn.transformer import Transformer


def _qkv(seed: int, B: int = 2, H: int = 3, N: int = 40, Dh: int = 8) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, Dh, generator=g) for _ in range(3))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_form_equals_quadratic_form(causal: bool, masked: bool) -> None:
    q, k, v = _qkv(0)
    hash_ = HashedAttention(heads=3, head_dim=8, bits=16)
    hq, hk = hash_.codes(q), hash_.codes(k)
    key_mask = None
    if masked:
        key_mask = torch.rand(2, 40, generator=torch.Generator().manual_seed(1)) > 0.4
        key_mask[:, 0] = True  # every causal query keeps a key
    fast = linear_hashed_attention(hq, hk, v, causal=causal, key_mask=key_mask)
    slow = quadratic_hashed_attention(hq, hk, v, causal=causal, key_mask=key_mask)
    assert fast.shape == (2, 3, 40, 8)
    assert torch.allclose(fast, slow, atol=1e-5)
    # and the quadratic form is the stated one: weights h_t . h_s + (b + 1), normalised
    w = (hq @ hk.transpose(-1, -2) + 17.0)[0, 0]
    if masked:
        w = w * key_mask[0]
    if causal:
        w = w.tril()
    assert torch.allclose(slow[0, 0, 5], (w[5] @ v[0, 0]) / w[5].sum(), atol=1e-5)


def test_codes_are_plus_minus_one_with_b_bits_and_pass_gradients() -> None:
    q, _, _ = _qkv(2)
    q.requires_grad_(True)
    for bits in (4, 16):
        h = HashedAttention(heads=3, head_dim=8, bits=bits).codes(q)
        assert h.shape == (2, 3, 40, bits)
        assert set(h.unique().tolist()) == {-1.0, 1.0}
    h.sum().backward()  # the clipped straight-through estimator reaches q
    assert q.grad is not None and q.grad.abs().sum() > 0


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_cost_is_linear_no_n_by_n_tensor(causal: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(16, heads=2, hash_bits=8).eval()
    largest = {}
    for n in (1024, 8192):
        x = torch.randn(1, n, 16)
        with torch.no_grad(), _LargestOutput() as probe:
            attn(x, causal=causal)
        largest[n] = probe.largest
        assert probe.largest < n * n // 4  # nowhere near one [N, N] matrix, let alone one per head
    # every intermediate grows with N, not N^2: 8x the tokens, 8x the largest tensor
    assert largest[8192] <= 8 * largest[1024]


def _clustered(seed: int, N: int = 256, H: int = 2, Dh: int = 16, C: int = 4) -> tuple[torch.Tensor, ...]:
    """Tokens in C clusters: a query's softmax attention picks its own cluster, whose values share a mean."""
    g = torch.Generator().manual_seed(seed)
    centers, values = torch.randn(H, C, Dh, generator=g), torch.randn(H, C, Dh, generator=g)
    label = torch.randint(C, (N,), generator=g)
    q = 2 * (centers[:, label] + 0.3 * torch.randn(H, N, Dh, generator=g))[None]  # [1, H, N, Dh]
    k = 2 * (centers[:, label] + 0.3 * torch.randn(H, N, Dh, generator=g))[None]
    v = (values[:, label] + 0.1 * torch.randn(H, N, Dh, generator=g))[None]
    return q, k, v


def _centred_cosine(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> float:
    # both outputs are averages of v: compare what they add to the plain mean of v
    mean = v.mean(2, keepdim=True)
    return F.cosine_similarity((a - mean).flatten(), (b - mean).flatten(), dim=0).item()


def test_fitted_hash_tracks_softmax_better_than_random() -> None:
    for seed in (0, 1):
        q, k, v = _clustered(seed)
        softmax = F.scaled_dot_product_attention(q, k, v)
        torch.manual_seed(seed)
        hashed = HashedAttention(heads=2, head_dim=16, bits=16, anchors=25)
        random_cos = _centred_cosine(hashed(q, k, v), softmax, v)
        hashed.fit(q, k, generator=torch.Generator().manual_seed(seed))
        fitted_cos = _centred_cosine(hashed(q, k, v), softmax, v)
        assert fitted_cos > 0.8, (seed, fitted_cos)
        assert fitted_cos > random_cos + 0.2, (seed, fitted_cos, random_cos)


def test_transformer_option_defaults_to_softmax_and_hashed_trains() -> None:
    torch.manual_seed(0)
    softmax = Transformer(32, 2, 4)
    assert not any("hashed" in key for key in softmax.state_dict())  # checkpoints unchanged
    hashed = Transformer(32, 2, 4, attention="hashed", hash_bits=8)
    # a softmax model's weights load into the hashed one; only the hash buffers are new
    missing = hashed.load_state_dict(softmax.state_dict(), strict=False).missing_keys
    assert missing and all(".attn.hashed." in key for key in missing)
    x = torch.randn(2, 24, 32)
    assert fit_hashes(hashed, lambda: hashed(x)) == 2
    hashed(x).square().mean().backward()
    assert all(p.grad is not None for p in hashed.parameters())
    with pytest.raises(ValueError, match="attention must be"):
        Transformer(32, 2, 4, attention="linear")


def test_hashed_causal_sees_only_the_past_and_refuses_cache_and_alibi() -> None:
    torch.manual_seed(0)
    model = Transformer(32, 2, 4, attention="hashed", hash_bits=8).eval()
    x = torch.randn(1, 20, 32)
    y = x.clone()
    y[:, 12:] = torch.randn(1, 8, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, causal=True)[:, :12], model(y, causal=True)[:, :12], atol=1e-5)
        assert not torch.allclose(model(x)[:, :12], model(y)[:, :12], atol=1e-3)
    attn = model.blocks[0].attn
    with pytest.raises(ValueError, match="no cache"):
        attn(x, causal=True, cache=KVCache(1, 4, 20, 8, x.device, x.dtype))
    with pytest.raises(ValueError, match="no cache"):
        attn(x, alibi=torch.ones(4))
    with pytest.raises(ValueError, match="self-attention only"):
        Attention(32, 4, context_dim=16, hash_bits=8)
