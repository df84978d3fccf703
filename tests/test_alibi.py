"""ALiBi and P15's RoPE x ALiBi (nn/alibi.py) in the shared transformer and the AR generator."""

import math

import pytest
import torch
from helpers import randomize

from latentforge.config import identity
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.heads import code_nll
from latentforge.generators.samplers import causal_decode
from latentforge.nn.alibi import alibi_bias, geometric_slopes, harmonic_slopes
from latentforge.nn.attention import Attention
from latentforge.nn.rope import GridRoPE, apply_rope, sequence_rope
from latentforge.nn.transformer import Transformer

RELATIVE = ["rope", "alibi", "rope_alibi"]


def test_slopes_are_the_geometric_and_harmonic_ladders():
    assert torch.equal(geometric_slopes(8), torch.tensor([2.0 ** -k for k in range(1, 9)]))
    assert torch.equal(geometric_slopes(4), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256]))
    assert torch.allclose(harmonic_slopes(3), torch.tensor([1.0, 1 / 2, 1 / 3]))


def test_bias_is_minus_slope_times_distance():
    slopes = torch.tensor([0.5, 0.25])
    want = -torch.tensor([[[0.0, 0.5, 1.0], [0.5, 0.0, 0.5], [1.0, 0.5, 0.0]],
                          [[0.0, 0.25, 0.5], [0.25, 0.0, 0.25], [0.5, 0.25, 0.0]]])
    assert torch.equal(alibi_bias(slopes, 3, 3), want)
    # one query after 3 cached keys sits at position 3: distances 3, 2, 1, 0 -> -slope * (i - j)
    assert torch.equal(alibi_bias(slopes, 1, 4, offset=3), -slopes[:, None, None] * torch.tensor([3.0, 2, 1, 0]))


def test_sequence_rope_equals_the_grid_table_rows():
    cos, sin = GridRoPE((20,), 8, 100.0)()
    c, s = sequence_rope(5, 7, 8, 100.0)
    assert torch.equal(c, cos[5:12]) and torch.equal(s, sin[5:12])


def reference(attn: Attention, x, slopes, allowed, rope=None):
    """softmax(Q K^T / sqrt(Dh) - m_h |i - j|, disallowed keys -inf) V, by hand."""
    B, T, D = x.shape
    H, Dh = attn.heads, attn.head_dim
    q, k, v = (t.view(B, T, H, Dh).transpose(1, 2) for t in attn.qkv(x).chunk(3, -1))
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    i = torch.arange(T)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh) - slopes[:, None, None] * (i[:, None] - i[None, :]).abs()
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, T, D))


@pytest.mark.parametrize("use_rope", [False, True])
def test_attention_with_alibi_matches_the_formula(use_rope):
    attn = Attention(16, 4)
    x = torch.randn(2, 6, 16)
    slopes = harmonic_slopes(4) if use_rope else geometric_slopes(4)
    rope = sequence_rope(0, 6, 4) if use_rope else None
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    got = attn(x, causal=True, alibi=slopes, rope=rope)
    assert torch.allclose(got, reference(attn, x, slopes, causal, rope), atol=1e-5)
    # bidirectional with padded keys: the bias is symmetric, the padding still wins
    key_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    got = attn(x, key_mask=key_mask, alibi=slopes, rope=rope)
    assert torch.allclose(got, reference(attn, x, slopes, key_mask[:, None, None, :], rope), atol=1e-5)
    with pytest.raises(ValueError, match="cross-attention"):
        Attention(16, 4, context_dim=8)(x, context=torch.randn(2, 3, 8), alibi=slopes)


@pytest.mark.parametrize("position", RELATIVE)
def test_kv_cache_steps_equal_the_full_causal_pass(position):
    torch.manual_seed(0)
    net = Transformer(32, depth=2, heads=4, context_dim=8, position=position).eval()
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 3, 8)
    full = net(x, causal=True, context=ctx)
    caches, kv = net.new_caches(2, 9, x), net.context_kv(ctx)
    steps = [net(x[:, :4], causal=True, context_kv=kv, caches=caches)]  # a prefill, then one at a time
    steps += [net(x[:, i:i + 1], causal=True, context_kv=kv, caches=caches) for i in range(4, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert not any(name.startswith("alibi") for name in net.state_dict())  # no new weights, none saved


def tiny(position: str, grid=(12,), vocab=16) -> ARGenerator:
    return ARGenerator(ARConfig(grid=grid, vocab_size=vocab, dim=32, depth=2, heads=4, position=position))


@pytest.mark.parametrize("position", RELATIVE)
def test_generator_decoding_step_by_step_equals_teacher_forcing(position):
    model = randomize(tiny(position))
    codes = torch.randint(16, (3, 12))
    want = model.logits(codes, None)  # [3, 12, V], one causal pass

    got = []

    def emit(i, h):  # feed the true code, as teacher forcing does
        got.append(model.head(h))
        return model.token_emb(codes[:, i])[:, None] if i + 1 < 12 else None

    causal_decode(model.transformer, model.bos.expand(3, 1, -1), 12, emit)
    assert torch.allclose(torch.stack(got, 1), want, atol=1e-4)
    a = model.sample(3, generator=torch.Generator().manual_seed(3), use_cache=True)
    b = model.sample(3, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a, b)


def test_position_option_keeps_old_fingerprints_and_checks_the_order():
    assert "position" not in identity(ARConfig.tiny())
    assert identity(ARConfig(grid=(4, 4), vocab_size=8, position="alibi"))["position"] == "alibi"
    assert "pos.tables.0" not in tiny("alibi").state_dict()  # relative positions: no table
    with pytest.raises(ValueError, match="raster"):
        ARConfig(grid=(4, 4), order="random", position="rope")
    with pytest.raises(ValueError, match="position must be"):
        ARConfig(grid=(4, 4), position="sinusoid")


def local_rule(n: int, T: int, V: int, generator: torch.Generator, noise: float = 0.1) -> torch.Tensor:
    """x_t = (x_{t-1} + x_{t-2}) mod V, replaced by a uniform token with probability `noise`: a rule
    that reads two tokens back, the same at every position and length. [n, T] int64."""
    x = torch.randint(V, (n, T), generator=generator)
    keep = torch.rand(n, T, generator=generator) >= noise
    for t in range(2, T):
        x[:, t] = torch.where(keep[:, t], (x[:, t - 1] + x[:, t - 2]) % V, x[:, t])
    return x


def test_alibi_extrapolates_from_64_to_256_tokens():
    """Trained at 64 tokens, evaluated at 256: the loss stays where it was (the rule is local and
    ALiBi's bias depends on distance only), while learned positions cannot run past 64 at all.
    (RoPE and RoPE x ALiBi side by side, longer: benchmarks/positions.py.)"""
    V, data = 8, torch.Generator().manual_seed(0)
    model = ARGenerator(ARConfig(grid=(64,), vocab_size=V, dim=32, depth=2, heads=4, position="alibi"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        loss = model.loss(local_rule(32, 64, V, data))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = torch.Generator().manual_seed(1)
    with torch.no_grad():
        nll = {T: float(code_nll(model.logits(z, None), z)) for T in (64, 256) for z in [local_rule(32, T, V, test)]}
    assert nll[64] < math.log(V) - 0.7, nll  # it learned the rule (uniform: 2.08 nats; floor ~0.52)
    assert nll[256] < nll[64] + 0.1, nll
    learned = ARGenerator(ARConfig(grid=(64,), vocab_size=V, dim=32, depth=2, heads=4))
    with pytest.raises(ValueError, match="learned positions cover"):
        learned.logits(local_rule(2, 256, V, test), None)
