import math

import pytest
import torch
from helpers import graphs, randomize

from latentforge.conditioning.base import Context
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.generators.hierarchical import (
    HierarchicalConfig,
    HierarchicalGenerator,
)
from latentforge.quantize.rvq import ResidualVQ, RVQConfig
from latentforge.registry import lookup


def tiny(conditional=True, grid=(4, 4), vocab=16, levels=3, **kw) -> HierarchicalGenerator:
    cond = SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3) if conditional else None
    cfg = HierarchicalConfig(grid=grid, vocab_size=vocab, levels=levels, dim=32, depth=2, heads=2,
                             depth_dim=24, depth_layers=1, depth_heads=2, conditioner=cond, **kw)
    return HierarchicalGenerator(cfg)


def test_registered_and_loss_terms():
    assert lookup("generator", "hierarchical") == (HierarchicalConfig, HierarchicalGenerator)
    model = tiny(prefix_dropout=0.5)
    model.config.p_uncond = 0.5
    model.train()
    codes = torch.randint(16, (8, 4, 4, 3))
    out = model.loss(codes, model.encode_condition(graphs(8)))
    # zero heads: every level starts uniform, log2(16) = 4 bits per code
    for q in range(3):
        assert math.isclose(out[f"bits_level_{q}"].item(), 4.0, rel_tol=1e-5)
    assert math.isclose(out["bits_per_position"].item(), 12.0, rel_tol=1e-5)
    assert "layout_nll" in out  # the conditioner's own term is added
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    with pytest.raises(ValueError, match="int64 codes"):
        model.loss(torch.randint(16, (2, 4, 4, 2)), model.encode_condition(graphs(2)))


@pytest.mark.parametrize("grid", [(4, 4), (6,), (2, 2, 2)])
def test_sample_shape_dtype_range(grid):
    model = randomize(tiny(conditional=False, grid=grid, vocab=7))
    out = model.sample(3)
    assert out.shape == (3, *grid, 3) and out.dtype == torch.long
    assert out.min() >= 0 and out.max() < 7
    one = randomize(tiny(conditional=False, grid=grid, vocab=7, levels=1))
    assert one.sample(2).shape == (2, *grid)  # depth-1 codes carry no level axis (LatentSpec)


def test_level_prefix_sampling_and_decoding():
    model = randomize(tiny(conditional=False, prefix_dropout=0.3))
    out = model.sample(2, levels_to_sample=2)
    assert out.shape == (2, 4, 4, 2)
    # a residual VQ decodes a level prefix: the sum of the first two levels' code vectors
    rvq = ResidualVQ(RVQConfig(codebook_size=16, dim=8, depth=3)).eval()
    z = rvq.lookup(out)
    ref = rvq.level(0).lookup(out[..., 0]) + rvq.level(1).lookup(out[..., 1])
    assert z.shape == (2, 4, 4, 8) and torch.allclose(z, ref)
    with pytest.raises(ValueError, match="prefix_dropout"):
        randomize(tiny(conditional=False)).sample(2, levels_to_sample=2)
    with pytest.raises(ValueError, match="levels_to_sample"):
        model.sample(2, levels_to_sample=4)


def test_logits_are_causal_over_positions_and_levels():
    model = randomize(tiny(conditional=False))
    codes = torch.randint(16, (2, 16, 3))
    base = model.logits(codes, None)  # [B, N, Q, V]
    assert base.shape == (2, 16, 3, 16)
    j = 9
    for q in range(3):
        changed = codes.clone()
        changed[:, j, q] = (changed[:, j, q] + 1) % 16
        out = model.logits(changed, None)
        # earlier positions see nothing of position j; at position j, levels <= q predict code q
        # and what comes before it, so they must not move either
        assert torch.allclose(base[:, :j], out[:, :j], atol=1e-6)
        assert torch.allclose(base[:, j, : q + 1], out[:, j, : q + 1], atol=1e-6)
        if q + 1 < 3:
            assert not torch.allclose(base[:, j, q + 1], out[:, j, q + 1])
        assert not torch.allclose(base[:, j + 1], out[:, j + 1])


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 5}, {"top_p": 0.8, "temperature": [0.7, 1.0, 0.5]},
                                    {"cfg_scale": 2.0}, {"cfg_scale": [1.0, 3.0], "levels_to_sample": 2}])
def test_cached_and_uncached_sampling_give_identical_codes(kwargs):
    torch.manual_seed(1)
    model = randomize(tiny(prefix_dropout=0.2))
    ctx = model.encode_condition(graphs(3))
    a = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), use_cache=True, **kwargs)
    b = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), use_cache=False, **kwargs)
    assert a.shape == (3, 4, 4, kwargs.get("levels_to_sample", 3))
    assert torch.equal(a, b)
    again = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(a, again)
    c = model.sample(3, ctx, generator=torch.Generator().manual_seed(8), **kwargs)
    assert not torch.equal(a, c)


def test_guidance_scale_zero_samples_the_unconditional_model():
    """u + 0 * (c - u) = u: guided sampling at scale 0 must equal sampling from the null context."""
    torch.manual_seed(2)
    model = randomize(tiny())
    ctx = model.encode_condition(graphs(4), generator=torch.Generator().manual_seed(0))
    a = model.sample(4, ctx, generator=torch.Generator().manual_seed(3), cfg_scale=0.0)
    b = model.sample(4, model.conditioner.null(4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # guidance on the fine levels only leaves the very first base code untouched
    c = model.sample(4, ctx, generator=torch.Generator().manual_seed(3), cfg_scale=[1.0, 4.0, 4.0])
    d = model.sample(4, ctx, generator=torch.Generator().manual_seed(3))
    assert torch.equal(c[:, 0, 0, 0], d[:, 0, 0, 0]) and not torch.equal(c, d)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, None)


def test_tiny_model_learns_fine_level_from_base_level():
    """Level 0 is a shifted ramp (c0[i] = (s + i) mod V, s random per example); level 1 is a fixed
    permutation of level 0 at the same position. After 150 Adam steps (batch 16) the sampled level 1 must
    match the permutation of the sampled level 0 on >= 90% of positions."""
    torch.manual_seed(0)
    V, N = 8, 8
    model = tiny(conditional=False, grid=(N,), vocab=V, levels=2, prefix_dropout=0.25)
    perm = torch.randperm(V)

    def batch(b):
        c0 = (torch.randint(V, (b, 1)) + torch.arange(N)) % V
        return torch.stack([c0, perm[c0]], dim=-1)  # [b, N, 2]

    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(150):
        out = model.loss(batch(16))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["bits_level_1"].item() < 0.1  # knowing c0, c1 is determined
    model.eval()
    s = model.sample(64, generator=torch.Generator().manual_seed(0))
    assert (s[..., 1] == perm[s[..., 0]]).float().mean().item() >= 0.9
    # the base level learned the ramp: each next code is the previous one plus 1
    assert ((s[:, 1:, 0] - s[:, :-1, 0]) % V == 1).float().mean().item() >= 0.9
    # and, trained with level-prefix dropout, it follows the ramp from level 0 alone
    s1 = model.sample(64, generator=torch.Generator().manual_seed(1), levels_to_sample=1)
    assert s1.shape == (64, N, 1)
    assert ((s1[:, 1:, 0] - s1[:, :-1, 0]) % V == 1).float().mean().item() >= 0.8


# -- streaming past the training length (motion: 1D grids) ---------------------------------------


def motion_model(**kw) -> HierarchicalGenerator:
    """A motion-like model: T = 6 latent frames of 3-level RVQ codes, class-conditioned."""
    from latentforge.conditioning.class_label import ClassConfig

    torch.manual_seed(0)
    cfg = HierarchicalConfig(grid=(6,), vocab_size=16, levels=3, dim=32, depth=2, heads=2, depth_dim=24,
                             depth_layers=1, depth_heads=2, conditioner=ClassConfig(dim=32, num_classes=3), **kw)
    return randomize(HierarchicalGenerator(cfg))


@pytest.mark.parametrize("kwargs", [{}, {"window_stride": 3}, {"cfg_scale": 2.0, "top_k": 5},
                                    {"levels_to_sample": 2, "window_stride": 5}])
def test_streaming_never_changes_a_generated_prefix(kwargs):
    model = motion_model(prefix_dropout=0.3)
    ctx = model.encode_condition({"label": torch.tensor([0, 2])})
    L = kwargs.get("levels_to_sample", 3)

    def stream(length):
        return model.sample(2, ctx, generator=torch.Generator().manual_seed(4), length=length, **kwargs)

    trained = stream(6)
    assert torch.equal(trained, model.sample(2, ctx, generator=torch.Generator().manual_seed(4), **kwargs))
    double = stream(12)
    assert double.shape == (2, 12, L) and double.dtype == torch.long
    assert double.min() >= 0 and double.max() < 16
    assert torch.equal(double[:, :6], trained)
    longer = stream(17)
    assert torch.equal(longer[:, :12], double)
    assert torch.equal(stream(4), trained[:, :4])  # shorter than trained: a prefix as well
    # the KV-cached windows equal recomputing every window prefix from scratch
    again = model.sample(2, ctx, generator=torch.Generator().manual_seed(4), length=12, use_cache=False, **kwargs)
    assert torch.equal(again, double)


@pytest.mark.parametrize("stride", [1, 2])
def test_streamed_frames_are_what_the_model_predicts_from_the_window(stride):
    """Greedy decoding: frame p past the training length T is the argmax of the teacher-forced logits of
    the window that drew it (the crop of T frames ending at p's window, fed from BOS), at p's position in
    it; so a window sees exactly what training shows the model of a clip cropped there."""
    model = motion_model()
    T = 6
    out = model.sample(3, model.encode_condition({"label": torch.tensor([0, 1, 2])}), temperature=0, length=2 * T + 1,
                       window_stride=stride)
    ctx = model.encode_condition({"label": torch.tensor([0, 1, 2])})
    assert torch.equal(model.logits(out[:, :T], ctx).argmax(-1), out[:, :T])  # the first window: no sliding
    start, drawn = 0, T
    while drawn < out.shape[1]:
        start = drawn - (T - stride)
        window = out[:, start : start + T]
        new = range(T - stride, min(T, out.shape[1] - start))  # the window positions this window drew
        pred = model.logits(window, ctx).argmax(-1)  # [B, T, Q]
        assert torch.equal(pred[:, list(new)], window[:, list(new)]), (start, list(new))
        drawn += len(new)


def test_streaming_errors():
    model = randomize(tiny(conditional=False, grid=(2, 3)))
    with pytest.raises(ValueError, match="1D grid"):
        model.sample(1, length=12)
    model = motion_model()
    ctx = model.encode_condition({"label": torch.tensor([0])})
    with pytest.raises(ValueError, match="window_stride"):
        model.sample(1, ctx, length=12, window_stride=6)
    # a condition that paints a map on the grid (P1's layout) has nothing to say past it
    painted = Context(ctx.tokens, ctx.mask, spatial=torch.randn(1, 6, 32))
    with pytest.raises(ValueError, match="spatial"):
        model.sample(1, painted, length=8)


def test_checkpoints_from_before_the_base_code_scale_load_with_unit_scale():
    # models saved before issue 14 fed the base transformer the code sums at unit scale
    model = HierarchicalGenerator(HierarchicalConfig.tiny())
    assert model.base_code_scale.item() == pytest.approx(0.02)
    old = {k: v for k, v in model.state_dict().items() if k != "base_code_scale"}
    fresh = HierarchicalGenerator(HierarchicalConfig.tiny())
    fresh.load_state_dict(old)
    assert fresh.base_code_scale.item() == 1.0


@pytest.mark.parametrize("P, length", [(2, None), (5, None), (3, 13), (8, 13)])
def test_a_prefix_comes_out_unchanged_and_is_continued_as_the_model_would(P, length):
    """Greedy decoding is a function of the frames before: continuing the first P frames of a
    greedy sample gives that sample back, the prompt untouched, within and past the trained length
    (P = 8 > T = 6: the prompt alone fills the first window)."""
    model = motion_model()
    ctx = model.encode_condition({"label": torch.tensor([0, 1, 2])})
    whole = model.sample(3, ctx, temperature=0, length=length, window_stride=2)
    prompt = whole[:, :P]
    cont = model.sample(3, ctx, temperature=0, length=length, window_stride=2, prefix=prompt)
    assert torch.equal(cont[:, :P], prompt) and torch.equal(cont, whole)
    uncached = model.sample(3, ctx, temperature=0, length=length, window_stride=2, prefix=prompt, use_cache=False)
    assert torch.equal(uncached, whole)
    sampled = model.sample(3, ctx, generator=torch.Generator().manual_seed(0), length=length, window_stride=2,
                           prefix=prompt)
    assert torch.equal(sampled[:, :P], prompt)
    with pytest.raises(ValueError, match="prefix must be codes"):
        model.sample(3, ctx, prefix=whole[:, :6] if length is None else whole)
