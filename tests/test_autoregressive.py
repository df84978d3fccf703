import json

import pytest
import torch
from helpers import graphs, randomize

from latentforge import from_pretrained, save_pretrained
from latentforge.conditioning.base import Context
from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.generators.autoregressive import ARConfig, ARGenerator, coarse_to_fine_order
from latentforge.generators.sampling import filter_logits, sample_tokens

ORDERS = ["raster", "random", "coarse_to_fine"]


def tiny(conditional=True, grid=(4, 4), vocab=16, order="raster") -> ARGenerator:
    cond = SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3) if conditional else None
    return ARGenerator(ARConfig(grid=grid, vocab_size=vocab, dim=32, depth=2, heads=2, conditioner=cond, order=order))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=5), dict(top_p=0.8, temperature=0.7), dict(cfg_scale=2.0)])
def test_cached_and_uncached_sampling_give_identical_tokens(kwargs, order):
    torch.manual_seed(1)
    model = randomize(tiny(order=order))  # the scene-graph context brings a spatial map too
    ctx = model.encode_condition(graphs(3))
    a = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), use_cache=True, **kwargs)
    b = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), use_cache=False, **kwargs)
    assert a.shape == (3, 4, 4) and a.dtype == torch.long
    assert torch.equal(a, b)
    c = model.sample(3, ctx, generator=torch.Generator().manual_seed(8), **kwargs)
    assert not torch.equal(a, c)


def test_logits_are_causal():
    model = randomize(tiny(conditional=False))
    codes = torch.randint(16, (2, 16))
    base = model.logits(codes, None)
    changed = codes.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 16
    out = model.logits(changed, None)
    # position i predicts code i from codes < i: positions <= 9 are unaffected, 10 is
    assert torch.allclose(base[:, :10], out[:, :10], atol=1e-6)
    assert not torch.allclose(base[:, 10], out[:, 10])


def test_condition_dropout_and_null_context():
    model = tiny()
    model.config.p_uncond = 0.5
    ctx = model.encode_condition(graphs(64))
    model.train()
    dropped = model.drop_condition(ctx)
    is_null = (dropped.mask.sum(1) == 1) & torch.isclose(dropped.tokens[:, 0], model.conditioner.null_token[0, 0]).all(1)
    assert 10 < int(is_null.sum()) < 54
    model.eval()
    assert model.drop_condition(ctx) is ctx
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, None)


def test_filters_known_answers():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = ~torch.isinf(filter_logits(logits, top_p=0.5))
    assert kept.tolist() == [[True, False, False, False]]
    # sampling frequencies follow the probabilities
    g = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(20000, 4), generator=g)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015)
    assert sample_tokens(logits, temperature=0).item() == 0


def test_tiny_model_overfits_a_few_scenes():
    """Four scenes' code grids, conditioned on their graphs: loss must fall below 0.05 nats/token."""
    torch.manual_seed(0)
    model = tiny(vocab=32)
    model.config.p_uncond = 0.0
    cond = graphs(4)
    codes = torch.randint(32, (4, 4, 4))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(250):
        loss = model.loss(codes, model.encode_condition(cond))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    # and greedy decoding reproduces each scene's codes from its graph alone
    model.eval()
    out = model.sample(4, model.encode_condition(cond), temperature=0)
    assert torch.equal(out, codes)


def test_context_where_and_cat_pad():
    a = Context(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    b = Context(torch.zeros(2, 1, 4), torch.ones(2, 1, dtype=torch.bool))
    mixed = a.where(torch.tensor([True, False]), b)
    assert mixed.tokens.shape == (2, 3, 4) and mixed.mask.tolist() == [[True] * 3, [True, False, False]]
    both = Context.cat(a, b)
    assert both.tokens.shape == (4, 3, 4) and both.mask[2:].sum() == 2


# -- generation orders ----------------------------------------------------------------


def test_coarse_to_fine_order_known_answers():
    assert coarse_to_fine_order((4, 4)).tolist() == [0, 2, 8, 10, 1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]
    assert coarse_to_fine_order((8,)).tolist() == [0, 4, 2, 6, 1, 3, 5, 7]
    big = coarse_to_fine_order((16, 16))
    assert big[:4].tolist() == [0, 8, 128, 136]  # stride 8, then stride 4 (12 new), stride 2 (48 new), the rest
    assert sorted(big[4:16].tolist()) == [r * 16 + c for r in (0, 4, 8, 12) for c in (0, 4, 8, 12) if r % 8 or c % 8]
    video = coarse_to_fine_order((2, 4, 4))
    assert video[:4].tolist() == [0, 2, 8, 10] and sorted(video.tolist()) == list(range(32))
    assert coarse_to_fine_order((1,)).tolist() == [0]


def _order_of(model, kind):
    N = model.config.num_tokens
    return {"raster": None, "random": torch.randperm(N, generator=torch.Generator().manual_seed(5)),
            "coarse_to_fine": coarse_to_fine_order(tuple(model.config.grid))}[kind]


@pytest.mark.parametrize("order", ORDERS)
def test_logits_are_causal_in_generation_order(order):
    """Step k reads the code at σ(k-1) and the condition's map at σ(k) (the position it predicts)."""
    model = randomize(tiny(order=order))
    N = 16
    sigma = _order_of(model, order)
    steps = torch.arange(N) if sigma is None else sigma
    ctx = Context(torch.randn(2, 3, 32), torch.ones(2, 3, dtype=torch.bool), spatial=torch.randn(2, N, 32))
    codes = torch.randint(16, (2, N))
    # a random-order model takes an order; the fixed-order ones use theirs (raster: identity)
    kw = dict(order=sigma) if order == "random" else {}
    base = model.logits(codes, ctx, **kw)
    k = 6
    before, at, after = steps[:k], steps[k], steps[k + 1]
    changed = codes.clone()
    changed[:, at] = (changed[:, at] + 1) % 16
    out = model.logits(changed, ctx, **kw)
    assert torch.allclose(base[:, steps[: k + 1]], out[:, steps[: k + 1]], atol=1e-6)
    assert not torch.allclose(base[:, after], out[:, after])
    spatial = ctx.spatial.clone()
    spatial[:, at] += torch.randn(32)  # not a constant: pre-norm LayerNorms cannot see a constant shift
    out = model.logits(codes, Context(ctx.tokens, ctx.mask, spatial), **kw)
    assert torch.allclose(base[:, before], out[:, before], atol=1e-6)
    assert not torch.allclose(base[:, at], out[:, at])


@pytest.mark.parametrize("order", ORDERS)
def test_greedy_sampling_agrees_with_teacher_forced_logits(order):
    """Greedy samples are fixed points of the teacher-forced argmax in the same order, so sampling
    feeds codes, positions and the spatial map exactly as training does."""
    model = randomize(tiny(order=order))
    ctx = model.encode_condition(graphs(3))
    assert ctx.spatial is not None
    sigma = None if order == "raster" else model.draw_order(3, torch.device("cpu"), torch.Generator().manual_seed(2))
    kw = {} if sigma is None else dict(order=sigma)
    out = model.sample(3, ctx, temperature=0, **kw).reshape(3, -1)
    assert torch.equal(model.logits(out, ctx, **kw).argmax(-1), out)
    if order == "random":
        # without an order, each sample's order is the generator's first draw
        g = torch.Generator().manual_seed(2)
        assert torch.equal(model.sample(3, ctx, temperature=0, generator=g).reshape(3, -1), out)
        assert len({tuple(r) for r in sigma.tolist()}) == 3  # one order per sample
        # another order gives other samples: the order is really used
        assert not torch.equal(model.sample(3, ctx, temperature=0, order=sigma.flip(1)).reshape(3, -1), out)


@pytest.mark.parametrize(("order", "steps"), [("raster", 150), ("random", 300), ("coarse_to_fine", 150)])
def test_tiny_model_learns_in_each_order(order, steps):
    """Two fixed 4x4 patterns, unconditional. The first generated code picks the pattern, so the floor
    is log(2)/16 = 0.043 nats/token; a model blind to what it generated where stays near log 2 = 0.69.
    Eval loss must fall below 0.15."""
    torch.manual_seed(0)
    model = ARGenerator(ARConfig(grid=(4, 4), vocab_size=8, dim=32, depth=1, heads=2, order=order))
    a = torch.randint(8, (1, 4, 4))
    patterns = torch.cat([a, (a + torch.randint(1, 8, a.shape)) % 8])  # differ at every position
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    model.train()
    for _ in range(steps):
        loss = model.loss(patterns.repeat(4, 1, 1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert model.loss(patterns.repeat(32, 1, 1))["loss"].item() < 0.15  # random: 64 orders
    out = model.sample(16, temperature=0, generator=torch.Generator().manual_seed(0))
    whole = (out[:, None] == patterns[None]).flatten(2).all(-1).any(-1)  # [16] a sample is one pattern
    assert int(whole.sum()) >= 14


def test_raster_weights_unchanged_and_old_configs_load(tmp_path):
    raster = tiny(conditional=False)
    assert not any("source_pos" in k for k in raster.state_dict())
    save_pretrained(randomize(raster), tmp_path / "old")
    cfg = tmp_path / "old" / "config.json"
    meta = json.loads(cfg.read_text())
    del meta["config"]["order"]  # a config written before orders existed
    cfg.write_text(json.dumps(meta))
    loaded = from_pretrained(tmp_path / "old")
    codes = torch.randint(16, (2, 16))
    assert loaded.config.order == "raster" and torch.equal(loaded.logits(codes, None), raster.logits(codes, None))
    # a coarse-to-fine model saves its source positions; its fixed order is rebuilt, not stored
    c2f = randomize(tiny(conditional=False, order="coarse_to_fine"))
    assert "fixed_order" not in c2f.state_dict()
    save_pretrained(c2f, tmp_path / "c2f")
    assert torch.equal(from_pretrained(tmp_path / "c2f").logits(codes, None), c2f.logits(codes, None))


def test_order_errors():
    with pytest.raises(ValueError, match="raster-order model"):
        tiny(conditional=False).sample(1, order=torch.arange(16))
    model = tiny(conditional=False, order="random")
    with pytest.raises(ValueError, match="permutation"):
        model.sample(1, order=torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="order must be one of"):
        ARConfig(order="zigzag")


def test_a_prefix_is_fed_not_drawn_and_the_rest_follows_it():
    """A long video's next chunk starts with the last chunk's codes: sampling with a prefix keeps it and
    greedy draws after it are the teacher-forced argmax given it; bad prefixes are refused."""
    model = randomize(ARGenerator(ARConfig(grid=(3, 2, 2), vocab_size=16, dim=32, depth=2, heads=2,
                                           conditioner=ClassConfig(dim=32, num_classes=4))))
    ctx = model.encode_condition({"label": torch.tensor([1, 3])})
    prefix = torch.randint(0, 16, (2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    out = model.sample(2, ctx, temperature=0, prefix=prefix).reshape(2, -1)
    assert torch.equal(out[:, :4], prefix.reshape(2, -1))
    logits = model.logits(out, ctx)
    assert torch.equal(logits.argmax(-1)[:, 4:], out[:, 4:])
    cached = model.sample(2, ctx, temperature=0, prefix=prefix, use_cache=False).reshape(2, -1)
    assert torch.equal(cached, out)
    with pytest.raises(ValueError, match="prefix must be codes"):
        model.sample(2, ctx, prefix=torch.zeros(2, 12, dtype=torch.long))       # the whole grid
    with pytest.raises(ValueError, match="prefix must be codes"):
        model.sample(2, ctx, prefix=torch.full((2, 4), 16))                      # outside the vocabulary
    with pytest.raises(ValueError, match="raster-order model"):
        randomize(tiny(order="random", grid=(3, 2, 2), conditional=False)).sample(2, prefix=prefix)


def test_residual_codes_flatten_position_major():
    """An RVQ tokenizer's [B, N, Q] codes: one step per (position, level), level q of position i seeing
    every level of positions < i and levels < q of i; greedy samples are teacher-forced fixed points;
    a prompt's frames (all levels) are fed; a tiny model learns a two-pattern set of 2-level codes."""
    model = randomize(ARGenerator(ARConfig(grid=(5,), vocab_size=8, levels=3, dim=32, depth=2, heads=2,
                                           conditioner=ClassConfig(dim=32, num_classes=2))))
    ctx = model.encode_condition({"label": torch.tensor([0, 1])})
    codes = torch.randint(8, (2, 5, 3), generator=torch.Generator().manual_seed(0))
    base = model.logits(model.flat_codes(codes), ctx)                          # [2, 15, 8]
    assert base.shape == (2, 15, 8)
    changed = codes.clone()
    changed[:, 2, 1] = (changed[:, 2, 1] + 1) % 8                            # step 2 * 3 + 1 = 7
    out = model.logits(model.flat_codes(changed), ctx)
    assert torch.allclose(base[:, :8], out[:, :8], atol=1e-6) and not torch.allclose(base[:, 8], out[:, 8])
    # the level embedding is used: the same codes at other levels give other logits
    assert not torch.allclose(model.logits(model.flat_codes(codes.roll(1, -1)), ctx)[:, 1:], base[:, 1:])
    drawn = model.sample(2, ctx, temperature=0)
    assert drawn.shape == (2, 5, 3)
    assert torch.equal(model.logits(model.flat_codes(drawn), ctx).argmax(-1), model.flat_codes(drawn))
    assert torch.equal(model.sample(2, ctx, temperature=0, use_cache=False), drawn)
    prompt = codes[:, :2]                                                     # two frames, all levels
    cont = model.sample(2, ctx, temperature=0, prefix=prompt)
    assert torch.equal(cont[:, :2], prompt)
    with pytest.raises(ValueError, match="3 levels of each"):
        model.sample(2, ctx, prefix=codes[:, :2, :2])                         # a frame without its last level
    with pytest.raises(ValueError, match=r"expected int64 codes \[B, 5, 3\]"):
        model.loss(codes[..., :2], ctx)
    with pytest.raises(ValueError, match="raster order only"):
        ARConfig(grid=(5,), levels=3, order="random")

    torch.manual_seed(0)
    learner = ARGenerator(ARConfig(grid=(4,), vocab_size=8, levels=2, dim=32, depth=1, heads=2))
    a = torch.randint(8, (1, 4, 2))
    patterns = torch.cat([a, (a + torch.randint(1, 8, a.shape)) % 8])
    opt = torch.optim.AdamW(learner.parameters(), 1e-2)
    for _ in range(150):
        loss = learner.loss(patterns.repeat(4, 1, 1))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    learner.eval()
    # floor log(2) / 8 = 0.087 nats a step; blind to the earlier steps it would stay near log 2
    assert learner.loss(patterns.repeat(16, 1, 1))["loss"].item() < 0.15
    out = learner.sample(16, temperature=0, generator=torch.Generator().manual_seed(0))
    assert int((out[:, None] == patterns[None]).flatten(2).all(-1).any(-1).sum()) >= 14
