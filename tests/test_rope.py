"""Rotary position embedding on grids (nn/rope.py) and P16's 3D-RoPE DiT over video latents."""

import math

import pytest
import torch

from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.nn.attention import Attention
from latentforge.nn.rope import GridRoPE, apply_rope, axis_pairs


def test_head_dimension_is_split_over_the_axes():
    assert axis_pairs(64, 2) == (16, 16)
    assert axis_pairs(64, 3) == (10, 11, 11)   # time gets the smaller share
    assert axis_pairs(8, 1) == (4,)
    with pytest.raises(ValueError, match="even head size"):
        axis_pairs(7, 1)
    with pytest.raises(ValueError, match="too small"):
        axis_pairs(4, 3)


def test_one_axis_matches_the_complex_rotation_formula():
    """1D RoPE is multiplication of each pair (as a complex number) by exp(i * pos * base^(-j/F))."""
    N, Dh, base = 7, 8, 100.0
    cos, sin = GridRoPE((N,), Dh, base)()
    x = torch.randn(2, 3, N, Dh)
    F = Dh // 2
    freqs = base ** (-torch.arange(F, dtype=torch.float64) / F)
    phase = torch.polar(torch.ones(N, F, dtype=torch.float64), torch.arange(N, dtype=torch.float64)[:, None] * freqs)
    want = torch.view_as_real(torch.view_as_complex(x.double().unflatten(-1, (F, 2)).contiguous()) * phase).flatten(-2)
    assert torch.allclose(apply_rope(x, cos, sin).double(), want, atol=1e-5)


def test_scores_depend_only_on_the_offset_between_positions():
    """On a (T, H, W) grid, q.k after rotation is unchanged when both positions move by the same offset."""
    grid, Dh = (4, 5, 6), 24
    cos, sin = GridRoPE(grid, Dh)()
    q, k = torch.randn(Dh), torch.randn(Dh)

    def score(a, b):
        ia, ib = (a[0] * grid[1] + a[1]) * grid[2] + a[2], (b[0] * grid[1] + b[1]) * grid[2] + b[2]
        rq = apply_rope(q.view(1, 1, 1, Dh), cos[ia:ia + 1], sin[ia:ia + 1])
        rk = apply_rope(k.view(1, 1, 1, Dh), cos[ib:ib + 1], sin[ib:ib + 1])
        return float((rq * rk).sum())

    base = score((0, 1, 2), (2, 3, 1))
    assert math.isclose(base, score((1, 2, 4), (3, 4, 3)), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(base, score((0, 1, 2), (3, 3, 1)), rel_tol=1e-3)  # another time offset
    assert not math.isclose(base, score((0, 1, 2), (2, 4, 1)), rel_tol=1e-3)  # another height offset
    # rotation keeps lengths
    x = torch.randn(1, 2, math.prod(grid), Dh)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-4)


def test_kept_tokens_get_their_own_rows():
    rope = GridRoPE((2, 3, 4), 12)
    keep = torch.tensor([[5, 0, 23], [1, 2, 3]])
    cos, sin = rope(keep)
    assert cos.shape == (2, 3, 6) and torch.equal(cos[0, 0], rope.cos[5]) and torch.equal(sin[1, 2], rope.sin[3])
    x = torch.randn(2, 1, 3, 12)
    assert torch.allclose(apply_rope(x, cos, sin)[0, :, 0], apply_rope(x[:1, :, :1], rope.cos[5:6], rope.sin[5:6])[0, :, 0])


def test_attention_with_rope_is_equivariant_to_shifting_the_sequence():
    """Without absolute positions, rotary self-attention on a window of a longer sequence gives the same
    outputs wherever the window sits."""
    attn = Attention(16, 2)
    rope = GridRoPE((12,), 8)
    x = torch.randn(1, 5, 16)
    a = attn(x, rope=(rope.cos[0:5], rope.sin[0:5]))
    b = attn(x, rope=(rope.cos[6:11], rope.sin[6:11]))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, attn(x), atol=1e-3)


def test_rope_dit_on_video_latents_patches_the_image_plane_and_learns():
    """P16's DiT: (T, H, W) latents, 2x2 spatial patches (time kept), full 3D attention with 3D RoPE and
    no position table; it must fit a fixed set of clips (flow loss well below its start)."""
    torch.manual_seed(0)
    cfg = DiTConfig(grid=(3, 4, 4), channels=2, patch=2, dim=48, depth=2, heads=2, position="rope")
    assert cfg.patch_grid == (3, 2, 2)
    model = DiTGenerator(cfg)
    assert not hasattr(model, "pos") and model.rope.pairs == (4, 4, 4)
    z = torch.randn(4, 3, 4, 4, 2)
    tokens = model.patchify(z)
    assert tokens.shape == (4, 12, 8)
    assert torch.equal(tokens[:, 7], z[:, 1, 2:4, 2:4].reshape(4, -1))  # t=1, row 1, col 1
    assert torch.equal(model.unpatchify(tokens), z)
    model.latent_norm.fit(z)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    fixed = [(torch.randn(4, 3, 4, 4, 2, generator=g), torch.rand(4, generator=g) * 0.98 + 0.01) for _ in range(4)]
    with torch.no_grad():
        first = sum(float(model.loss(z, noise=n, t=t)["loss"]) for n, t in fixed) / 4
    for step in range(150):
        n, t = fixed[step % 4]
        opt.zero_grad()
        model.loss(z, noise=n, t=t)["loss"].backward()
        opt.step()
    with torch.no_grad():
        last = sum(float(model.loss(z, noise=n, t=t)["loss"]) for n, t in fixed) / 4
    assert last < 0.5 * first, (first, last)
    out = model.eval().sample(2, generator=torch.Generator().manual_seed(1), steps=4)
    assert out.shape == (2, 3, 4, 4, 2)


def test_rope_dit_with_deferred_masking_rotates_the_kept_tokens_by_their_own_positions():
    """P20's masking keeps K of N tokens after the mixer: the backbone must see each kept token's grid
    position, so its output for a kept token equals the unmasked backbone's when nothing else is dropped."""
    torch.manual_seed(0)
    cfg = DiTConfig(grid=(2, 2, 2), channels=2, dim=32, depth=1, heads=2, position="rope", mask_ratio=0.0)
    model = DiTGenerator(cfg)
    for p in model.parameters():  # zero-initialised gates would hide the attention
        torch.nn.init.normal_(p, std=0.2)
    tokens, t = torch.randn(1, 8, 2), torch.tensor([0.3])
    cond = model._prepare(None)
    full = model._forward(tokens, t, cond)
    keep = torch.randperm(8)[None]  # every token kept, in another order
    shuffled = model._forward(tokens, t, cond, keep)
    assert torch.allclose(full, shuffled, atol=1e-5)
