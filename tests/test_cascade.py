"""MAR-3D's cascade (P9): the latents conditioner (a second stage reads a first stage's latents,
noised in training by condition augmentation) and the reveal order of MAR's sampler."""

import pytest
import torch

from latentforge.conditioning.latents import LatentsConditioner, LatentsConfig
from latentforge.generators.mar import MARConfig, MARGenerator


def conditioner(**kw) -> LatentsConditioner:
    torch.manual_seed(0)
    return LatentsConditioner(LatentsConfig(dim=16, channels=3, **kw))


def projected_inputs(cond: LatentsConditioner, z: torch.Tensor, seed: int) -> torch.Tensor:
    """What the conditioner fed its projection: the standardised, noised latents."""
    seen = []
    handle = cond.proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    cond({"low_latents": z}, generator=torch.Generator().manual_seed(seed))
    handle.remove()
    return seen[0]


def test_condition_augmentation_noise_law():
    """Training adds sigma * eps with sigma ~ U(0, augment) per example: the added noise has variance
    E[sigma^2] = augment^2 / 3 and one sigma per row; sampling adds exactly `sample_noise` std; the
    standardisation uses the fitted statistics."""
    cond = conditioner(augment=0.6, sample_noise=0.2)
    z = torch.randn(4000, 8, 3) * torch.tensor([2.0, 0.5, 1.0]) + torch.tensor([1.0, -3.0, 0.0])
    cond.norm.fit(z)
    clean = (z - cond.norm.mean) / cond.norm.std
    added = projected_inputs(cond.train(), z, 0) - clean                       # [B, L, C]
    assert added.var().item() == pytest.approx(0.6 ** 2 / 3, rel=0.05)
    per_row = added.std((1, 2))
    assert per_row.max() < 0.6 * 1.5 and per_row.std() > 0.1                   # one level a row, spread over rows
    added = projected_inputs(cond.eval(), z, 0) - clean
    assert added.std().item() == pytest.approx(0.2, rel=0.02)
    quiet = conditioner(augment=0.0)
    quiet.norm.fit(z)
    assert torch.equal(projected_inputs(quiet.train(), z, 0), (z - quiet.norm.mean) / quiet.norm.std)


def test_the_condition_is_a_set():
    """No positions: permuting the low latents permutes the context tokens and nothing else."""
    cond = conditioner(sample_noise=0.0).eval()
    z = torch.randn(2, 6, 3)
    perm = torch.randperm(6)
    a = cond({"low_latents": z}).tokens
    b = cond({"low_latents": z[:, perm]}).tokens
    assert torch.allclose(a[:, perm], b, atol=1e-6)
    with pytest.raises(ValueError, match="low_latents must be float"):
        cond({"low_latents": torch.randn(2, 6, 4)})


def test_a_second_stage_learns_from_the_first_stage_latents():
    """Known answer: every token of the high-resolution set is the mean of the low set's two tokens
    (the sets have no order, so a token-by-token copy would be unknowable). A MAR conditioned on the
    low latents by cross-attention must find it: error far below that of the same model fed
    another example's condition."""
    torch.manual_seed(0)
    model = MARGenerator(MARConfig(grid=(4,), channels=3, dim=32, depth=2, heads=2, head_width=32, head_depth=2,
                                   head_objective="flow", p_uncond=0.0,
                                   conditioner=LatentsConfig(dim=32, channels=3, augment=0.1)))

    def data(n):
        low = torch.randn(n, 2, 3)
        return low.mean(1, keepdim=True).expand(n, 4, 3) + 0.05 * torch.randn(n, 4, 3), low   # [n, 4, 3], [n, 2, 3]

    high, low = data(512)
    model.latent_norm.fit(high)
    model.conditioner.norm.fit(low)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    model.train()
    for _ in range(150):
        high, low = data(32)
        loss = model.loss(high, model.encode_condition({"low_latents": low}))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    high, low = data(32)
    out = model.sample(32, model.encode_condition({"low_latents": low}), generator=torch.Generator().manual_seed(0),
                       head_steps=10)
    wrong = model.sample(32, model.encode_condition({"low_latents": low.roll(1, 0)}),
                         generator=torch.Generator().manual_seed(0), head_steps=10)
    err, err_wrong = (out - high).abs().mean().item(), (wrong - high).abs().mean().item()
    assert err < 0.35 and err < 0.4 * err_wrong, (err, err_wrong)


def test_reveal_orders(monkeypatch):
    """order="raster" reveals positions 0, 1, ... in turn (reverse: N-1, ...), random a permutation per
    sample; the head's noise is drawn the same either way (the permutation is drawn regardless), and
    bad names are refused."""
    import latentforge.generators.mar as mar

    orders = []
    original = mar.reveal_in_order
    monkeypatch.setattr(mar, "reveal_in_order", lambda order, steps: (orders.append(order.clone()), original(order, steps))[1])
    torch.manual_seed(0)
    model = MARGenerator(MARConfig.tiny()).eval()
    N = model.config.num_tokens
    outs = {o: model.sample(2, order=o, steps=4, head_steps=2, generator=torch.Generator().manual_seed(0))
            for o in ("random", "raster", "reverse")}
    random, raster, reverse = orders
    assert torch.equal(raster, torch.arange(N).expand(2, N)) and torch.equal(reverse, raster.flip(-1))
    assert torch.equal(random.sort(-1).values, raster) and not torch.equal(random[0], random[1])
    assert outs["raster"].shape == (2, 4, 4, 2) and not torch.allclose(outs["raster"], outs["reverse"])
    with pytest.raises(ValueError, match="order must be"):
        model.sample(1, order="spiral", steps=2, head_steps=2)
