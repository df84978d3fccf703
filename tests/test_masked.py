import math

import pytest
import torch
from helpers import graphs, randomize
from torch.utils.flop_counter import FlopCounterMode

from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.generators.heads import code_nll
from latentforge.generators.masked import MaskedConfig, MaskedGenerator
from latentforge.generators.masking import cosine_ratio, masked_counts, random_rank_mask, reveal_counts


def tiny(conditioner="scene_graph", enat=False, grid=(4, 4), vocab=16, depth=2) -> MaskedGenerator:
    cond = {"scene_graph": SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3),
            "class": ClassConfig(dim=32, num_classes=4), None: None}[conditioner]
    return MaskedGenerator(MaskedConfig(grid=grid, vocab_size=vocab, dim=32, depth=depth, heads=2, conditioner=cond,
                                        enat=enat, decoder_depth=1))


def test_mask_schedule_known_answers():
    # floor(16 cos(pi/2 k/8)), k = 1..8: 15.69, 14.78, 13.30, 11.31, 8.89, 6.12, 3.12, 0
    assert masked_counts(16, 8) == [15, 14, 13, 11, 8, 6, 3, 0]
    # floor(8 cos(pi/3)) = 4 exactly, not 3; floor(8 cos(pi/6)) = floor(6.93) = 6
    assert masked_counts(8, 3) == [6, 4, 0]
    # 64 cos(pi/2 * 26/39) = 64 cos(pi/3) is 31.999999999999993 in floating point: it still floors to 32
    assert masked_counts(64, 39)[25] == 32
    # every step reveals at least one token while more than one is masked, and one waits for the last step
    assert masked_counts(4, 8) == [3, 2, 1, 1, 1, 1, 1, 0]
    assert reveal_counts(4, 8) == [1, 1, 1, 0, 0, 0, 0, 1]
    assert masked_counts(64, 1) == [0]
    with pytest.raises(ValueError):
        masked_counts(16, 0)


def test_fewer_tokens_than_steps_skips_the_empty_steps():
    """With K > N some steps reveal nothing: the sampler skips them (no model call)."""
    torch.manual_seed(0)
    model = randomize(tiny(None, grid=(2, 2)))
    calls = []
    hook = model.head.register_forward_hook(lambda m, i, o: calls.append(1))
    out = model.sample(2, generator=torch.Generator().manual_seed(0), steps=8)
    hook.remove()
    assert len(calls) == 4 and out.shape == (2, 2, 2)  # one call per revealed token here


def test_random_mask_follows_the_cosine_ratio():
    g = torch.Generator().manual_seed(0)
    m = random_rank_mask(cosine_ratio(20000, generator=g), 16, generator=g)
    counts = m.sum(1)
    assert counts.min() >= 1
    # E[ceil(16 cos(pi/2 u))] is about 16 * 2/pi + 0.5 = 10.7
    assert abs(counts.float().mean().item() - (16 * 2 / math.pi + 0.5)) < 0.15
    # P(all 16 masked) = P(cos(pi/2 u) > 15/16) = acos(15/16) * 2/pi
    assert abs((counts == 16).float().mean().item() - math.acos(15 / 16) * 2 / math.pi) < 0.015


@pytest.mark.parametrize("enat", [False, True])
def test_logits_never_see_masked_tokens_and_loss_counts_only_masked(enat):
    torch.manual_seed(0)
    model = randomize(tiny(None, enat=enat))
    codes = torch.randint(16, (3, 16))
    g = torch.Generator().manual_seed(1)
    masked = random_rank_mask(cosine_ratio(3, generator=g), 16, generator=g)
    masked[:, 0], masked[:, 1] = True, False
    reveal = torch.randint(3, (3, 16))
    base = model.logits(codes, masked, reveal=reveal)
    changed = torch.where(masked, (codes + 5) % 16, codes)
    assert torch.allclose(model.logits(changed, masked, reveal=reveal), base, atol=1e-5)  # no leak
    visible_changed = codes.clone()
    visible_changed[:, 1] = (codes[:, 1] + 1) % 16
    assert not torch.allclose(model.logits(visible_changed, masked, reveal=reveal), base, atol=1e-3)
    # the loss: changing a target at an unmasked position does not change it, at a masked one it does
    ref = code_nll(base, codes, masked)
    other = codes.clone()
    other[~masked] = (other[~masked] + 3) % 16
    assert torch.equal(code_nll(base, other, masked), ref)
    flipped = codes.clone()
    flipped[:, 0] = (flipped[:, 0] + 3) % 16
    assert not torch.isclose(code_nll(base, flipped, masked), ref)
    # and equals the mean of -log p over masked tokens
    logp = base.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)
    assert torch.allclose(ref, -logp[masked].mean(), atol=1e-6)
    if not enat:  # loss() with an explicit mask is that same quantity
        out = model.loss(codes.view(3, 4, 4), mask=masked.view(3, 4, 4))
        assert torch.allclose(out["loss"], ref, atol=1e-6)


def test_enat_encoder_is_step_ordered():
    """A token's encoder features depend on tokens revealed at the same or earlier steps only."""
    torch.manual_seed(0)
    model = randomize(tiny(None, enat=True))
    codes = torch.randint(16, (2, 16))
    visible = torch.zeros(2, 16, dtype=torch.bool)
    visible[:, :9] = True
    reveal = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2] + [0] * 7).expand(2, -1)
    base = model._base(None)
    feats = model.encode_visible(codes, visible, reveal, base, {})
    later = codes.clone()
    later[:, 6] = (later[:, 6] + 1) % 16  # revealed at step 2
    out = model.encode_visible(later, visible, reveal, base, {})
    assert torch.allclose(out[:, :5], feats[:, :5], atol=1e-6)          # steps 0, 1: unaffected
    assert not torch.allclose(out[:, 5:9], feats[:, 5:9], atol=1e-3)    # step 2: sees it
    assert (out[:, 9:] == 0).all()                                      # masked positions carry nothing


@pytest.mark.parametrize("enat", [False, True])
@pytest.mark.parametrize("kwargs", [dict(), dict(top_k=4, temperature=0.8), dict(top_p=0.8, steps=5),
                                    dict(cfg_scale=2.0, steps=4)])
def test_sampling_shape_range_and_reproducibility(enat, kwargs):
    torch.manual_seed(1)
    model = randomize(tiny(enat=enat))
    ctx = model.encode_condition(graphs(3), generator=torch.Generator().manual_seed(0))
    a = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), **kwargs)
    b = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), **kwargs)
    c = model.sample(3, ctx, generator=torch.Generator().manual_seed(8), **kwargs)
    assert a.shape == (3, 4, 4) and a.dtype == torch.long
    assert 0 <= a.min() and a.max() < 16
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    if enat:  # exact reuse: recomputing the encoder from scratch every step gives the same tokens
        d = model.sample(3, ctx, generator=torch.Generator().manual_seed(7), reuse=False, **kwargs)
        assert torch.equal(a, d)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, None)


def test_enat_reuse_encodes_each_token_once_and_costs_less():
    torch.manual_seed(0)
    model = randomize(tiny(None, enat=True, grid=(8, 8), depth=2))
    seen = []
    hook = model.transformer.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[:2]))
    model.sample(2, generator=torch.Generator().manual_seed(0), steps=8)
    # 64 tokens, schedule [62, 59, 55, 45, 35, 24, 12, 0]: all but the 12 revealed last get encoded once
    assert sum(b * t for b, t in seen) == 2 * (64 - 12)
    seen.clear()
    model.sample(2, generator=torch.Generator().manual_seed(0), steps=8, reuse=False)
    visible = [64 - m for m in [64] + masked_counts(64, 8)[:-1]]
    assert sum(b * t for b, t in seen) == 2 * sum(v for v in visible if v > 0)
    hook.remove()

    def flops(m, **kw):
        with FlopCounterMode(display=False) as counter:
            m.sample(2, generator=torch.Generator().manual_seed(0), steps=8, **kw)
        return counter.get_total_flops()

    plain = randomize(tiny(None, enat=False, grid=(8, 8), depth=3))  # same block count as 2 + 1 decoder
    assert flops(model) < 0.5 * flops(plain)
    assert flops(model) < 0.8 * flops(model, reuse=False)


def _train(model, labels_fn, steps=150, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(steps):
        labels = torch.randint(4, (32,))
        loss = model.loss(labels_fn(labels), model.encode_condition({"label": labels}))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), loss.item()


@pytest.mark.parametrize("enat", [False, True])
def test_tiny_model_learns_a_class_pattern(enat):
    """Codes are a deterministic function of the class: (5 label + i) mod 16 at raster position i."""
    def pattern(labels):
        return ((5 * labels[:, None] + torch.arange(16)) % 16).view(-1, 4, 4)

    torch.manual_seed(0)
    model = tiny("class", enat=enat)
    model.config.p_uncond = 0.0
    model, loss = _train(model, pattern)
    assert loss < 0.2
    labels = torch.arange(4).repeat(4)
    out = model.sample(16, model.encode_condition({"label": labels}), generator=torch.Generator().manual_seed(0))
    assert (out == pattern(labels)).float().mean() >= 0.9


def test_inpainting_keeps_the_known_codes_and_fills_the_region_from_them():
    """P22's inpainting with MaskGIT decoding: codes outside the region are kept exactly; a model trained on
    clips whose every token holds one clip-wide code fills the region with that code, which sampling from
    scratch does not."""

    torch.manual_seed(0)
    model = MaskedGenerator(MaskedConfig(grid=(2, 2, 2), vocab_size=8, dim=32, depth=2, heads=2))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        value = torch.randint(0, 8, (64, 1, 1, 1), generator=g)
        opt.zero_grad()
        model.loss(value.expand(64, 2, 2, 2).contiguous())["loss"].backward()
        opt.step()
    model.eval()
    value = torch.arange(16) % 8
    known = value.view(16, 1, 1, 1).expand(16, 2, 2, 2).contiguous()
    region = torch.zeros(16, 2, 2, 2, dtype=torch.bool)
    region[:, 1, :, 1] = True                                   # a column of the second frame
    out = model.sample(16, generator=torch.Generator().manual_seed(1), steps=2, known=known, region=region)
    assert torch.equal(out[~region], known[~region])
    assert float((out[region] == known[region]).float().mean()) > 0.9
    free = model.sample(16, generator=torch.Generator().manual_seed(1), steps=2)
    assert float((free == known).float().mean()) < 0.5
    with pytest.raises(ValueError, match="same number"):
        bad = region.clone()
        bad[0] = False
        model.sample(16, steps=2, known=known, region=bad)
    with pytest.raises(ValueError, match="both known codes and a region"):
        model.sample(16, steps=2, known=known)
