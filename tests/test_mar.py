import math

import pytest
import torch
from helpers import graphs, randomize

from latentforge import registry
from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.generators.guidance import Guidance
from latentforge.generators.mar import MARConfig, MARGenerator
from latentforge.generators.masking import reveal_counts


def tiny(conditioner=None, grid=(4, 4), channels=3, **kw) -> MARGenerator:
    cfg = MARConfig(grid=grid, channels=channels, dim=32, depth=1, heads=2, head_width=32, head_depth=2,
                    conditioner=conditioner, **kw)
    return MARGenerator(cfg)


def scene_graph_cond():
    return SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3)


def truncnorm_mean(mu, sigma, low, high):
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    a, b = (low - mu) / sigma, (high - mu) / sigma
    return mu + sigma * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


def test_registered():
    assert registry.lookup("generator", "mar") == (MARConfig, MARGenerator)
    with pytest.raises(ValueError):
        MARConfig(head_objective="gmm")


def test_mask_ratio_law_and_mask_counts():
    model = tiny(grid=(5, 4))
    r = model.sample_mask_ratio(40000, generator=torch.Generator().manual_seed(0))
    assert r.min() >= 0.7 and r.max() <= 1.0
    expected = truncnorm_mean(1.0, 0.25, 0.7, 1.0)  # ~0.867: a left half-normal cut at 0.7
    assert abs(r.mean().item() - expected) < 0.003
    # the density rises toward 1: more draws in the top decile than in the bottom one
    assert (r > 0.97).sum() > 1.5 * (r < 0.73).sum()
    mask = model.random_mask(2000, generator=torch.Generator().manual_seed(1))
    counts = mask.sum(1)
    assert counts.min() >= math.ceil(0.7 * 20) and counts.max() <= 20
    assert len(counts.unique()) > 4  # one ratio per example, not per batch
    assert abs(counts.float().mean().item() / 20 - expected) < 0.03  # ceil adds < 1/20


def test_loss_counts_only_masked_tokens():
    torch.manual_seed(0)
    model = randomize(tiny(p_uncond=0.0))
    B, N, C, R = 3, 16, 3, model.config.diffusion_batch_mul
    z = torch.randn(B, 4, 4, C)
    mask = torch.rand(B, N) < 0.6
    mask[:, 0], mask[:, 1] = True, False
    noise = torch.randn(R, B, N, C)
    t = torch.randint(1000, (R, B, N))
    base = model.loss(z, mask=mask, noise=noise, t=t)["loss"]

    # reference: per-token eps MSE over all R*B*N tokens, averaged over the masked ones only
    x = z.reshape(B, N, C)
    feats = model.features(x, mask, None)
    x_t = model.head.process.noisy(x.expand(R, B, N, C).reshape(-1, C), noise.reshape(-1, C), t.reshape(-1))
    eps = model.head.predict(x_t, t.reshape(-1), feats.expand(R, B, N, -1).reshape(R * B * N, -1))
    per_token = (eps - noise.reshape(-1, C)).pow(2).mean(-1).view(R, B, N)
    ref = (per_token * mask).sum() / (R * mask.sum())
    assert torch.allclose(base, ref, atol=1e-6)

    # the input at a masked position is replaced by the mask embedding: features do not see it
    changed = x.clone()
    changed[mask] += 5.0
    assert torch.allclose(model.features(changed, mask, None), feats, atol=1e-6)
    # the target at a visible position does not enter the loss...
    target = x.clone()
    target[~mask] = torch.randn(int((~mask).sum()), C)
    same = model.head_loss(feats, target, mask, noise=noise, t=t)
    assert torch.allclose(same, base, atol=1e-6)
    # ...while a masked target and a visible input both do
    z2 = z.clone().reshape(B, N, C)
    z2[0, 0] += 1.0  # masked: changes the target
    assert not torch.allclose(model.loss(z2.view_as(z), mask=mask, noise=noise, t=t)["loss"], base)
    z3 = z.clone().reshape(B, N, C)
    z3[0, 1] += 1.0  # visible: changes the features of the masked tokens
    assert not torch.allclose(model.loss(z3.view_as(z), mask=mask, noise=noise, t=t)["loss"], base)

    # every parameter gets a gradient
    model.train()
    model.loss(z, mask=mask)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_normalization_makes_the_loss_affine_invariant():
    torch.manual_seed(0)
    model = randomize(tiny(grid=(6,), channels=2))
    z = torch.randn(8, 6, 2)
    scale, shift = torch.tensor([3.0, 0.5]), torch.tensor([5.0, -2.0])
    mask = torch.rand(8, 6) < 0.7
    mask[:, 0] = True
    draws = dict(mask=mask, noise=torch.randn(4, 8, 6, 2), t=torch.randint(1000, (4, 8, 6)))
    model.latent_norm.fit(z)
    a = model.loss(z, **draws)["loss"]
    model.latent_norm.fit(z * scale + shift)
    # the population std (tokenizers.base.latent_stats)
    assert torch.allclose(model.latent_norm.std, z.reshape(-1, 2).std(0, unbiased=False) * scale, atol=1e-5)
    b = model.loss(z * scale + shift, **draws)["loss"]
    assert torch.allclose(a, b, atol=1e-5)


def test_reveal_counts_follow_the_cosine_schedule(monkeypatch):
    # N = 16, K = 4: still unknown after each step = floor(16 cos(k pi / 8)) = 14, 11, 6, then 0
    assert reveal_counts(16, 4) == [2, 3, 5, 6]
    assert [16 - math.floor(16 * math.cos(math.pi / 2 * k / 4)) for k in range(1, 4)] == [2, 5, 10]
    assert reveal_counts(5, 8) == [1, 1, 1, 1, 0, 0, 0, 1]  # at least one per step until one is left
    assert all(sum(reveal_counts(n, k)) == n for n in (1, 7, 64) for k in (1, 3, 8, 100))

    model = randomize(tiny())
    model.latent_norm.mean.fill_(0.5)
    model.latent_norm.std.fill_(2.0)
    seen = []

    def fake_draw(z, guidance, **kw):
        seen.append(z.shape[0])
        return torch.full((z.shape[0], 3), float(len(seen)))  # step number, in normalised units

    monkeypatch.setattr(model.head, "sample", fake_draw)
    out = model.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    assert seen == [2 * 2, 2 * 3, 2 * 5, 2 * 6]
    step_of = ((out[..., 0] - 0.5) / 2.0).round().long().view(2, 16)  # denormalised on the way out
    assert (out[..., 0] == out[..., 2]).all()
    for row in step_of:
        assert torch.bincount(row, minlength=5)[1:].tolist() == [2, 3, 5, 6]  # every token, once


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_sampling_is_reproducible(objective):
    torch.manual_seed(0)
    model = randomize(tiny(grid=(2, 3), channels=4, head_objective=objective))
    kw = dict(steps=3, head_steps=4, eta=0.5) if objective == "ddpm" else dict(steps=3, head_steps=4)
    a = model.sample(3, generator=torch.Generator().manual_seed(7), **kw)
    b = model.sample(3, generator=torch.Generator().manual_seed(7), **kw)
    c = model.sample(3, generator=torch.Generator().manual_seed(8), **kw)
    assert a.shape == (3, 2, 3, 4) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_guided_head_mixes_cond_and_uncond():
    torch.manual_seed(0)
    model = randomize(tiny())
    cond, uncond = torch.randn(5, 32), torch.randn(5, 32)

    def draw(z, scale, guided):
        # 5 samples revealing one token each; guided rows are [cond; null]
        g = Guidance(5, None, scale, guided)
        return model.head.sample(z, g, generator=torch.Generator().manual_seed(3), temperature=1.0, steps=5)

    both = torch.cat([cond, uncond])
    assert torch.allclose(draw(both, 1.0, True), draw(cond, 1.0, False), atol=1e-5)
    assert torch.allclose(draw(both, 0.0, True), draw(uncond, 1.0, False), atol=1e-5)
    assert not torch.allclose(draw(both, 3.0, True), draw(cond, 1.0, False), atol=1e-3)


def test_cfg_with_scene_graph_conditioner(monkeypatch):
    torch.manual_seed(0)
    model = tiny(scene_graph_cond(), grid=(4, 4))
    cond = graphs(2)
    model.train()
    out = model.loss(torch.randn(2, 4, 4, 3), model.encode_condition(cond))
    assert "layout_nll" in out and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.mask_token.grad is not None
    randomize(model)
    gen = torch.Generator().manual_seed(0)
    ctx = model.encode_condition(cond, generator=gen)
    assert ctx.spatial is not None  # the layout is painted on the grid and added to the inputs
    kw = dict(steps=4, head_steps=3, cfg_scale=3.0)
    a = model.sample(2, ctx, generator=torch.Generator().manual_seed(1), **kw)
    b = model.sample(2, ctx, generator=torch.Generator().manual_seed(1), **kw)
    plain = model.sample(2, ctx, generator=torch.Generator().manual_seed(1), steps=4, head_steps=3)
    const = model.sample(2, ctx, generator=torch.Generator().manual_seed(1), cfg_schedule="constant", **kw)
    assert a.shape == (2, 4, 4, 3) and torch.isfinite(a).all() and torch.equal(a, b)
    assert not torch.allclose(a, plain) and not torch.allclose(a, const)

    # linear schedule: scale 1 + (s - 1) * revealed / N after each step, s at the end
    scales, draw = [], model.head.sample

    def spy(z, guidance, **k):
        scales.append((k["scale"], guidance.guided))
        return draw(z, guidance, **k)

    monkeypatch.setattr(model.head, "sample", spy)
    model.sample(2, ctx, generator=torch.Generator().manual_seed(1), **kw)
    revealed = [2, 5, 10, 16]
    assert scales == [(pytest.approx(1 + 2.0 * r / 16), True) for r in revealed]
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, None)


def test_tiny_model_learns_class_conditional_tokens():
    """Class 0 -> every entry +1, class 1 -> every entry -1 (noise 0.1): samples get the sign right."""
    torch.manual_seed(0)
    model = tiny(ClassConfig(dim=32, num_classes=2), grid=(4,), channels=2, p_uncond=0.0)

    def data(n):
        label = torch.randint(2, (n,))
        return (1 - 2 * label.float())[:, None, None] + 0.1 * torch.randn(n, 4, 2), label

    model.latent_norm.fit(data(256)[0])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(100):
        z, label = data(16)
        loss = model.loss(z, model.encode_condition({"label": label}))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    label = torch.arange(32) % 2
    out = model.sample(32, model.encode_condition({"label": label}), generator=torch.Generator().manual_seed(0),
                       head_steps=20)
    sign = (1 - 2 * label.float())[:, None, None]
    assert (out * sign > 0).float().mean() >= 0.95
    assert (out - sign).abs().mean() < 0.3


def test_diffusion_head_keeps_bimodal_tokens_that_mse_would_average():
    """notes.md pitfall 4: entries are +-1 with probability 1/2, independent of everything else.

    The MSE-optimal regression of a token from the others is its mean, E[x] = 0 for every entry
    (here, the training set's mean, close to 0): its "samples" have mean |x| = |E x| ~ 0. The
    diffusion head must instead draw from both modes.
    """
    torch.manual_seed(0)
    model = tiny(grid=(4,), channels=2)
    train = torch.randint(2, (120, 16, 4, 2)).float() * 2 - 1 + 0.1 * torch.randn(120, 16, 4, 2)
    mse_optimum = train.mean(dim=(0, 1))  # the regression target given uninformative inputs, [4, 2]
    assert mse_optimum.abs().max() < 0.1
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for batch in train:
        loss = model.loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model.sample(64, generator=torch.Generator().manual_seed(0), head_steps=20)
    assert out.abs().mean() > 0.7
    assert ((out.abs() - 1).abs() < 0.35).float().mean() > 0.8  # near a mode, not in between
    assert (out > 0).float().mean().item() == pytest.approx(0.5, abs=0.1)  # both modes, evenly


def test_a_regression_head_collapses_two_modes_that_the_diffusion_head_keeps():
    """P9's check at its smallest: one token, +1 or -1 with equal odds. The MSE head learns the mean
    (its samples sit near 0), the diffusion head samples both modes."""
    from latentforge.generators.mar import MARConfig, MARGenerator

    z = torch.cat([torch.ones(32, 1, 1), -torch.ones(32, 1, 1)])                  # [64, N = 1, C = 1]
    out = {}
    for objective in ("mse", "flow"):
        torch.manual_seed(0)
        m = MARGenerator(MARConfig(grid=(1,), channels=1, dim=32, depth=1, heads=2, head_width=32, head_depth=2,
                                   head_objective=objective, mask_ratio_min=1.0))
        m.latent_norm.fit(z)
        opt = torch.optim.AdamW(m.parameters(), 3e-3)
        for _ in range(300):
            loss = m.loss(z)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[objective] = m.eval().sample(200, steps=1, head_steps=20, generator=torch.Generator().manual_seed(0))
    assert out["mse"].abs().max() < 0.3                                             # the mean of the modes
    flow = out["flow"].flatten()
    assert (flow > 0.5).float().mean() > 0.3 and (flow < -0.5).float().mean() > 0.3  # both modes
