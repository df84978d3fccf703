"""Diffusion-DPO (generators/dpo.py): the loss's known values, and preference tuning that moves a
flow model's samples towards the preferred mode."""

import math

import pytest
import torch

from latentforge.conditioning.class_label import ClassConfig
from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.generators.dpo import DPOConfig, dpo_finetune, dpo_loss, frozen_copy
from latentforge.generators.masked import MaskedConfig, MaskedGenerator


def two_modes(n, g):
    """Latents [n, 4, 2] around +1 or -1 (half each): the model learns both; the judge prefers +1."""
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)[:, None, None]
    return sign + 0.1 * torch.randn(n, 4, 2, generator=g)


def positive_share(model, n=200, seed=1):
    with torch.no_grad():
        z = model.eval().sample(n, generator=torch.Generator().manual_seed(seed), steps=12)
    return float((z.mean(dim=(1, 2)) > 0).float().mean())


def test_the_loss_is_log_2_at_the_reference_and_falls_when_the_winner_is_fitted_better():
    torch.manual_seed(0)
    model = DiTGenerator(DiTConfig(grid=(4,), channels=2, dim=32, depth=2, heads=2))
    ref = frozen_copy(model)
    assert not any(p.requires_grad for p in ref.parameters())
    g = torch.Generator().manual_seed(0)
    win, lose = torch.randn(6, 4, 2, generator=g), torch.randn(6, 4, 2, generator=g)
    out = dpo_loss(model, ref, win, lose, beta=100.0)
    assert float(out["loss"].detach()) == pytest.approx(math.log(2), abs=1e-6)
    assert float(out["accuracy"]) == 0.0 and float(out["margin"]) == 0.0
    # a policy that denoises the winners better than the reference does gets a lower loss
    noise, t = torch.randn(6, 4, 2, generator=g), torch.full((6,), 0.5)
    e_ref_w = ref.errors(win, None, noise, t)
    out = dpo_loss(model, ref, win, lose, beta=100.0, noise=noise, t=t)
    out["loss"].backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / (p.grad.norm() + 1e-12)
    after = dpo_loss(model, ref, win, lose, beta=100.0, noise=noise, t=t)
    assert float(after["loss"].detach()) < math.log(2)
    assert torch.equal(ref.errors(win, None, noise, t), e_ref_w)   # the reference never moves
    with pytest.raises(ValueError, match="differ in shape"):
        dpo_loss(model, ref, win, lose[:, :3], beta=1.0)


def test_dpo_needs_a_model_with_per_example_errors():
    model = MaskedGenerator(MaskedConfig.tiny())
    with pytest.raises(TypeError, match="no errors"):
        dpo_loss(model, model, torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))


@pytest.mark.parametrize("conditional", [False, True], ids=["uncond", "class"])
def test_preference_pairs_move_samples_to_the_preferred_mode(conditional):
    """A flow DiT fitted to two modes samples each about half the time; DPO on pairs (+1 preferred
    over -1, drawn from the model itself) must make most samples positive."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cond_cfg = ClassConfig(dim=32, num_classes=2) if conditional else None
    model = DiTGenerator(DiTConfig(grid=(4,), channels=2, dim=48, depth=2, heads=2, conditioner=cond_cfg))
    data = two_modes(256, g)
    labels = torch.zeros(256, dtype=torch.long)
    model.latent_norm.fit(data)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(300):
        idx = torch.randint(0, 256, (64,), generator=g)
        ctx = model.encode_condition({"label": labels[idx]}) if conditional else None
        opt.zero_grad()
        model.loss(data[idx], ctx)["loss"].backward()
        opt.step()
    before = positive_share(model) if not conditional else None
    with torch.no_grad():
        ctx = model.encode_condition({"label": torch.zeros(400, dtype=torch.long)}) if conditional else None
        drawn = model.eval().sample(400, ctx, generator=torch.Generator().manual_seed(2), steps=12)
    positive = drawn.mean(dim=(1, 2)) > 0
    k = int(min(positive.sum(), (~positive).sum()))
    assert k > 50, "the base model must sample both modes"
    pairs = {"win": drawn[positive][:k], "lose": drawn[~positive][:k]}
    if conditional:
        pairs["label"] = torch.zeros(k, dtype=torch.long)
    log = dpo_finetune(model, pairs, DPOConfig(beta=200.0, steps=120, batch_size=32, lr=1e-3))
    assert log[-1]["accuracy"] > 0.8
    with torch.no_grad():
        ctx = model.encode_condition({"label": torch.zeros(200, dtype=torch.long)}) if conditional else None
        z = model.eval().sample(200, ctx, generator=torch.Generator().manual_seed(3), steps=12)
    share = float((z.mean(dim=(1, 2)) > 0).float().mean())
    if before is not None:
        assert 0.25 < before < 0.75
    assert share > 0.85, (before, share)


def test_finetuning_draws_from_its_own_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    model = DiTGenerator(DiTConfig(grid=(4,), channels=2, dim=32, depth=1, heads=2))
    g = torch.Generator().manual_seed(0)
    pairs = {"win": torch.randn(8, 4, 2, generator=g), "lose": torch.randn(8, 4, 2, generator=g)}
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def tuned(seed):
        model.load_state_dict(start)
        dpo_finetune(model, pairs, DPOConfig(steps=3, batch_size=4, lr=1e-3, seed=seed))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    before = torch.get_rng_state()
    a = tuned(0)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(123)  # another global state changes nothing
    assert torch.equal(tuned(0), a)
    assert not torch.equal(tuned(1), a)
