"""Every generator learns: each registered family (and ENAT) overfits four labelled examples.

The shared interface (shapes, dtypes, determinism, save/load, gradients, guidance, every conditioner)
is checked by the registry-driven contract in test_generator_contract.py; each family's mechanisms
by its own test file.
"""

import pytest
import torch
from helpers import build_generator, latents_for

from latentforge import registry
from latentforge.conditioning.class_label import ClassConfig

CASES = {name: (name, {}) for name in registry.names("generator")} | {"masked_enat": ("masked", {"enat": True})}


# eval loss after 150 Adam steps (lr 1e-2) on four fixed examples, one per class: chance is log 8 = 2.08
# nats for the discrete codes; the continuous objectives start near 2 (DiT, |eps - x|^2) and 0.5 (MAR, whose
# skip connection makes eps exact at pure noise)
OVERFIT_BELOW = {"autoregressive": 0.1, "axial": 0.1, "masked": 0.1, "masked_enat": 0.1, "hierarchical": 0.1, "next_scale": 0.1,
                 "dit": 0.4, "mar": 0.4}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_generator_overfits_four_labelled_examples(name):
    if name not in OVERFIT_BELOW:
        pytest.fail(f"generator {name!r} has no overfitting threshold: measure one and add it to OVERFIT_BELOW")
    torch.manual_seed(0)
    family, changes = CASES[name]
    model = build_generator(family, grid=(4, 4), conditioner=ClassConfig(dim=32, num_classes=4), **changes)
    model.config.p_uncond = 0.0
    z = latents_for(model.config, 4, torch.Generator().manual_seed(5))
    if model.latent_norm is not None:
        model.latent_norm.fit(z)

    def eval_loss():
        model.eval()
        torch.manual_seed(1)  # the same noise, times and masks before and after training
        return sum(model.loss(z, model.encode_condition({"label": torch.arange(4)}))["loss"].item()
                   for _ in range(8)) / 8

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    model.train()
    for _ in range(150):
        loss = model.loss(z.repeat(4, *[1] * (z.dim() - 1)), model.encode_condition({"label": torch.arange(16) % 4}))
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
    after = eval_loss()
    assert after < OVERFIT_BELOW[name] and after < 0.5 * before, (before, after)
