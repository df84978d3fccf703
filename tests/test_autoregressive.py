import pytest
import torch

from latentforge.conditioning.base import Context
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_scene
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.sampling import filter_logits, sample_tokens


def tiny(conditional=True, grid=(4, 4), vocab=16) -> ARGenerator:
    cond = SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3) if conditional else None
    return ARGenerator(ARConfig(grid=grid, vocab_size=vocab, dim=32, depth=2, heads=2, conditioner=cond))


def graphs(n, split="train"):
    return encode_graphs([sample_scene(ShapesConfig(), split, i) for i in range(n)], 3)


def randomize(model):
    # zero-initialised heads give uniform logits; randomise so the tests see real distributions
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=5), dict(top_p=0.8, temperature=0.7), dict(cfg_scale=2.0)])
def test_cached_and_uncached_sampling_give_identical_tokens(kwargs):
    torch.manual_seed(1)
    model = randomize(tiny())
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
