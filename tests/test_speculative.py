"""Speculative decoding with a nested draft: KV-cache rollback, greedy equality, exact distribution."""

import itertools

import pytest
import torch
from helpers import graphs, randomize
from scipy.stats import chisquare

from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.generators.autoregressive import ARConfig, ARGenerator
from latentforge.generators.sampling import guide, token_probs
from latentforge.nn.matformer import use_widths
from latentforge.nn.transformer import Transformer

NESTED = (0.25, 0.5, 1.0)


def test_kv_cache_truncate_rolls_back_to_a_prefix():
    """Decode 6 tokens, roll back to 3, feed 3 others: the same as a cache that only ever saw the
    final sequence; truncating past the end is refused."""
    torch.manual_seed(0)
    net = Transformer(32, depth=2, heads=4).eval()
    x, other = torch.randn(2, 6, 32), torch.randn(2, 3, 32)
    final = torch.cat([x[:, :3], other], 1)
    caches = net.new_caches(2, 6, x)
    net(x, causal=True, caches=caches)
    for c in caches:
        c.truncate(3)
    assert caches[0].length == 3
    rolled = net(other, causal=True, caches=caches)
    assert torch.allclose(rolled, net(final, causal=True)[:, 3:], atol=1e-5)
    with pytest.raises(ValueError, match="cannot truncate"):
        caches[0].truncate(7)


def _nested(grid=(4, 4), vocab=16, conditioner=None, order="raster") -> ARGenerator:
    torch.manual_seed(0)
    return randomize(ARGenerator(ARConfig(grid=grid, vocab_size=vocab, dim=32, depth=2, heads=2, order=order,
                                          nested_widths=NESTED, conditioner=conditioner)))


@pytest.mark.parametrize("order", ["raster", "random"])
@pytest.mark.parametrize("k", [1, 2, 4, 16])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_greedy_speculative_equals_greedy_token_for_token(k, cfg_scale, order):
    """Temperature 0: whatever the draft proposes, the output is the full model's greedy decoding
    (scene-graph condition with a spatial map, guidance, random orders, a batch of 3)."""
    model = _nested(conditioner=SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3), order=order)
    ctx = model.encode_condition(graphs(3))
    kw = dict(temperature=0, cfg_scale=cfg_scale)
    plain = model.sample(3, ctx, generator=torch.Generator().manual_seed(1), **kw)
    fast = model.sample(3, ctx, generator=torch.Generator().manual_seed(1), speculative=k, **kw)
    assert torch.equal(fast, plain)
    stats = model.last_speculation
    assert stats.kept == 16 and 0 < stats.accepted < stats.proposed  # the draft was both right and wrong
    # another draft width, and a Mix'n'Match target: still the target's greedy decoding
    with use_widths(model.transformer, [1.0, 0.5]):
        mixed = model.sample(3, ctx, generator=torch.Generator().manual_seed(1), speculative=k, draft_width=0.5, **kw)
        assert torch.equal(mixed, model.sample(3, ctx, generator=torch.Generator().manual_seed(1), **kw))


def test_greedy_speculative_keeps_a_prefix():
    model = _nested()
    prefix = torch.randint(16, (2, 5), generator=torch.Generator().manual_seed(0))
    plain = model.sample(2, temperature=0, prefix=prefix)
    fast = model.sample(2, temperature=0, prefix=prefix, speculative=3)
    assert torch.equal(fast, plain) and torch.equal(fast.reshape(2, -1)[:, :5], prefix)


def _exact_distribution(model: ARGenerator, ctx, cfg_scale: float, width: float, **sampling) -> torch.Tensor:
    """P(x_0 x_1 x_2) of every sequence of a 3-step model, [V^3], from teacher-forced probabilities
    at a width: the product of each step's (guided, filtered) token probabilities."""
    V = model.config.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=3)))              # [V^3, 3]
    with torch.no_grad(), use_widths(model.transformer, width):
        if ctx is None:
            logits = model.logits(seqs, None)
        else:
            c = model.encode_condition({"label": ctx.expand(len(seqs))})
            logits = guide(torch.cat([model.logits(seqs, c), model.logits(seqs, model.conditioner.null(len(seqs)))]),
                           cfg_scale)                                               # [V^3, 3, V]
    probs = token_probs(logits, **sampling).gather(-1, seqs[..., None])[..., 0]    # [V^3, 3]
    return probs.prod(-1).double()


def _chi2_pvalue(counts: torch.Tensor, expected_p: torch.Tensor) -> float:
    """Pearson's test of counts against probabilities, outcomes expected < 5 times pooled into one bin."""
    expected = expected_p / expected_p.sum() * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]]).numpy()
    exp = torch.cat([expected[~small], expected[small].sum()[None]]).numpy()
    keep = exp > 0
    return float(chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


@pytest.mark.parametrize(("sampling", "cfg_scale"), [(dict(temperature=1.0), 1.0),
                                                     (dict(temperature=0.7, top_k=3), 1.0),
                                                     (dict(temperature=1.0), 2.5)])
def test_sampled_sequences_follow_the_full_models_distribution(sampling, cfg_scale):
    """Vocabulary 4, 3 steps (64 sequences), k = 2 drafts from the quarter-width submodel, 4,000 draws in
    batches of 4: Pearson's chi-square against the full model's exact (guided, filtered) distribution
    passes (p > 0.001), and the same counts fail against the draft's own distribution (p < 1e-6), so
    the test can tell the two apart."""
    model = _nested(grid=(3,), vocab=4, conditioner=ClassConfig(dim=32, num_classes=2) if cfg_scale != 1 else None)
    label = torch.tensor([1])
    target = _exact_distribution(model, label if cfg_scale != 1 else None, cfg_scale, 1.0, **sampling)
    draft = _exact_distribution(model, label if cfg_scale != 1 else None, cfg_scale, 0.25, **sampling)
    assert (target - draft).abs().sum() / 2 > 0.15  # total variation: a draft worth rejecting
    ctx = model.encode_condition({"label": label.expand(4)}) if cfg_scale != 1 else None
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([model.sample(4, ctx, generator=g, speculative=2, cfg_scale=cfg_scale, **sampling)
                       for _ in range(1000)])                                      # [4000, 3]
    index = (draws * torch.tensor([16, 4, 1])).sum(-1)
    counts = torch.bincount(index, minlength=64).double()
    assert _chi2_pvalue(counts, target) > 1e-3
    assert _chi2_pvalue(counts, draft) < 1e-6


def test_speculative_errors():
    plain = randomize(ARGenerator(ARConfig(grid=(4, 4), vocab_size=16, dim=32, depth=2, heads=2)))
    with pytest.raises(ValueError, match="nested submodel"):
        plain.sample(1, speculative=2)
    model = _nested()
    with pytest.raises(ValueError, match="use_cache"):
        model.sample(1, speculative=2, use_cache=False)
    with pytest.raises(ValueError, match="not one of the nested widths"):
        model.sample(1, speculative=2, draft_width=0.3)
    with pytest.raises(ValueError, match="k >= 1"):
        model.sample(1, speculative=-1)
