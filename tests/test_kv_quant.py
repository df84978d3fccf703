"""The quantized and staircase KV caches (nn/kv_quant.py, P15's SAQ) and the samplers' `kv_cache` option."""

import pytest
import torch
from helpers import build_generator, randomize

from latentforge.nn.kv_quant import QuantizedKVCache, Staircase, dequantize, kv_cache_bytes, new_kv_cache, pack, quantize, unpack
from latentforge.nn.transformer import Transformer

CPU = torch.device("cpu")


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_min_max_rounding_error_is_at_most_half_a_step(bits):
    x = torch.randn(3, 2, 50, 16) * torch.rand(3, 2, 50, 1) * 10 + torch.randn(3, 2, 50, 1)
    codes, scale, low = quantize(x, bits)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert scale.dtype == low.dtype == torch.float16
    err = (dequantize(codes, scale, low) - x).abs()
    assert (err <= scale.float() / 2 * (1 + 1e-5)).all()                     # the stored step's half
    # the step is max - low over the top code, low the fp16 min rounded down; fp16 rounds it up by < 1 ulp
    step = (x.amax(-1, keepdim=True) - low.float()) / (2**bits - 1)
    assert (low.float() <= x.amin(-1, keepdim=True)).all() and (scale.float() <= step * (1 + 2**-9)).all()
    assert torch.equal(unpack(pack(codes, bits), bits), codes)
    assert pack(codes, bits).shape[-1] == 16 * bits // 8


def test_staircase_assigns_bits_by_block_age():
    stairs = Staircase(((8, 1), (4, 2), (2, None)), block=4)
    assert [stairs.bits(age) for age in range(6)] == [8, 4, 4, 2, 2, 2]
    cache = QuantizedKVCache(1, 2, 40, 16, CPU, torch.float32, stairs)
    x = torch.randn(1, 2, 19, 16)
    cache.append(x[:, :, :6], x[:, :, :6])                   # a prefill across a block boundary
    assert cache.bits() == [4] * 4 + [8] * 2
    for t in range(6, 19):
        k, v = cache.append(x[:, :, t:t + 1], x[:, :, t:t + 1])
    # 19 tokens = blocks of ages 4, 3, 2, 1, 0 (the newest holds 3 tokens)
    assert cache.bits() == [2] * 8 + [4] * 8 + [8] * 3
    assert k.shape == (1, 2, 19, 16) and cache.length == 19
    # error: each token's range over the widths it went through, half a step of each
    rng = x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)
    path = {8: [8], 4: [8, 4], 2: [8, 4, 2]}
    bound = torch.cat([sum(rng[:, :, t:t + 1] / (2**b - 1) / 2 for b in path[bits]) for t, bits in enumerate(cache.bits())], 2)
    assert ((k - x).abs() <= bound * 1.01 + 1e-6).all()
    assert ((k - x).abs()[:, :, -3:]).max() < ((k - x).abs()[:, :, :8]).max()  # newest is the finest


def test_staircase_holds_what_uniform_4_bits_holds_at_64_tokens():
    """Blocks of 16 at 8, 4, 2, 2 bits average 4 bits: the same bytes as a uniform 4-bit cache."""
    B, H, Dh, S = 1, 2, 16, 64
    x = torch.randn(B, H, S, Dh)
    caches = {name: new_kv_cache(kind, B, H, S, Dh, CPU, torch.float32) for name, kind in
              [("stairs", Staircase(((8, 1), (4, 1), (2, None)), block=16)), ("int4", "int4"),
               ("int8", "int8"), ("full", "full")]}
    for cache in caches.values():
        cache.append(x, x)
    per_token_head = {"stairs": None, "int4": 8 + 4, "int8": 16 + 4, "full": 16 * 4}  # codes + fp16 scale, low
    want_stairs = 2 * B * H * 16 * ((16 + 4) + (8 + 4) + 2 * (4 + 4))                # keys and values
    assert kv_cache_bytes(caches["stairs"]) == want_stairs == 3072
    for name in ("int4", "int8", "full"):
        assert kv_cache_bytes(caches[name]) == 2 * B * H * S * per_token_head[name]
    assert kv_cache_bytes(caches["int4"]) == kv_cache_bytes(caches["stairs"])


def test_quantized_cache_decodes_like_the_full_cache():
    torch.manual_seed(0)
    net = Transformer(32, depth=2, heads=2).eval()
    x = torch.randn(2, 20, 32)
    full = net(x, causal=True)
    errors = {}
    for kind in ("int8", "int4", "int2"):
        caches = net.new_caches(2, 20, x, kind)
        assert all(isinstance(c, QuantizedKVCache) for c in caches)
        steps = torch.cat([net(x[:, i:i + 1], causal=True, caches=caches) for i in range(20)], 1)
        errors[kind] = float((steps - full).abs().max().detach())
    assert errors["int8"] < 0.02 and errors["int8"] < errors["int4"] < errors["int2"], errors


@pytest.mark.parametrize("name", ["autoregressive", "hierarchical"])
def test_samplers_take_the_cache_option(name):
    model = randomize(build_generator(name))
    seed = dict(generator=torch.Generator().manual_seed(0))
    full = model.sample(8, temperature=0, **seed)
    int8 = model.sample(8, temperature=0, kv_cache="int8", **seed)
    assert int8.shape == full.shape
    assert (int8 == full).float().mean() >= 0.9  # greedy samples: the same in (nearly) every position
    assert model.sample(2, kv_cache="staircase", **seed).shape == model.sample(2, **seed).shape
    with pytest.raises(ValueError, match="kv_cache must be"):
        model.sample(2, kv_cache="int3")
