import math

import torch

from latentforge.nn.attention import Attention
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.transformer import Transformer


def reference_attention(attn: Attention, x, mask=None, context=None):
    """Plain-matmul multi-head attention with the module's weights."""
    B, T, D = x.shape
    H, Dh = attn.heads, attn.head_dim
    if attn.is_cross:
        q = attn.q(x)
        k, v = attn.kv(context).chunk(2, -1)
    else:
        q, k, v = attn.qkv(x).chunk(3, -1)
    q, k, v = (t.view(B, -1, H, Dh).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(B, T, D))


def test_self_attention_matches_reference_causal_and_padded():
    attn = Attention(16, 4)
    x = torch.randn(2, 7, 16)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    assert torch.allclose(attn(x, causal=True), reference_attention(attn, x, causal), atol=1e-5)
    key_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    got = attn(x, key_mask=key_mask)
    assert torch.allclose(got, reference_attention(attn, x, key_mask[:, None, None, :]), atol=1e-5)


def test_cross_attention_matches_reference():
    attn = Attention(16, 2, context_dim=8)
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    got = attn(x, key_mask=mask, context=ctx)
    assert torch.allclose(got, reference_attention(attn, x, mask[:, None, None, :], ctx), atol=1e-5)
    assert torch.allclose(attn(x, key_mask=mask, context_kv=attn.context_kv(ctx)), got)


def test_kv_cache_token_by_token_equals_full_causal_pass():
    torch.manual_seed(0)
    net = Transformer(32, depth=3, heads=4, context_dim=8).eval()
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 3, 8)
    full = net(x, causal=True, context=ctx)
    caches = net.new_caches(2, 9, x)
    kv = net.context_kv(ctx)
    # a prefill of 4 tokens, then one at a time
    steps = [net(x[:, :4], causal=True, context_kv=kv, caches=caches)]
    steps += [net(x[:, i:i + 1], causal=True, context_kv=kv, caches=caches) for i in range(4, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_grid_position_embedding_is_factorised_raster():
    pe = GridPositionEmbedding((3, 4), 5)
    table = pe()
    assert table.shape == (12, 5)
    row, col = pe.tables
    assert torch.allclose(table[1 * 4 + 2], row[1] + col[2])
