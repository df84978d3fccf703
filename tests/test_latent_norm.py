"""Continuous-latent normalisation: one definition (tokenizers.base.LatentNorm) for every continuous
generator, fitted on data, saved with the weights, and loadable from checkpoints written before it."""

import pytest
import torch
from helpers import build_generator, latents_for, randomize
from safetensors.torch import load_file, save_file

from latentforge import from_pretrained, registry, save_pretrained
from latentforge.tokenizers.base import LatentNorm

CONTINUOUS = [n for n in registry.names("generator") if registry.lookup("generator", n)[0].latents == "continuous"]


def test_fit_matches_the_population_statistics_and_inverts():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 3, 4, 3, generator=g) * torch.tensor([2.0, 0.5, 3.0]) + torch.tensor([1.0, -2.0, 0.0])
    norm = LatentNorm(3)
    assert torch.equal(norm(z), z) and norm.bound.isinf()  # unfitted: the identity, no clipping
    norm.fit(z)
    flat = z.reshape(-1, 3)
    assert torch.allclose(norm.mean, flat.mean(0), atol=1e-5)
    assert torch.allclose(norm.std, flat.std(0, unbiased=False), atol=1e-5)
    x = norm(z)
    assert torch.allclose(x.reshape(-1, 3).mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.reshape(-1, 3).std(0, unbiased=False), torch.ones(3), atol=1e-4)
    assert torch.isclose(norm.bound, x.abs().max())
    assert torch.allclose(norm.inverse(x), z, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels"):
        norm.fit(torch.randn(10, 2))


def test_every_continuous_generator_uses_it_and_discrete_ones_do_not():
    assert {"dit", "mar"} <= set(CONTINUOUS)
    for name in registry.names("generator"):
        model = build_generator(name)
        assert (model.latent_norm is not None) == (name in CONTINUOUS), name
        if model.latent_norm is not None:
            assert isinstance(model.latent_norm, LatentNorm)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_a_loss_in_normalised_units_is_invariant_to_the_latents_scale(name):
    """Fitting on a*z + b and training on a*z + b gives the loss of z itself (same draws)."""
    model = randomize(build_generator(name))
    z = latents_for(model.config, 4, torch.Generator().manual_seed(1))
    scale, shift = torch.linspace(0.5, 3.0, model.config.channels), torch.linspace(-2.0, 5.0, model.config.channels)

    def loss(latents):
        model.latent_norm.fit(latents)
        torch.manual_seed(7)
        return model.loss(latents)["loss"]

    assert torch.allclose(loss(z), loss(z * scale + shift), atol=1e-4)


# the buffer names DiT and MAR used before LatentNorm held the statistics
LEGACY = {"dit": {"mean": "latent_mean", "std": "latent_scale", "bound": "latent_bound"},
          "mar": {"mean": "latent_mean", "std": "latent_std"}}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_checkpoints_saved_with_the_old_buffer_names_still_load(name, tmp_path):
    model = randomize(build_generator(name))
    z = latents_for(model.config, 3, torch.Generator().manual_seed(2))
    model.latent_norm.fit(z * 3.0 + 1.0)
    folder = save_pretrained(model, tmp_path / name)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    for new, old in LEGACY[name].items():  # rewrite the file as a run made before the change holds it
        state[old] = state.pop(f"latent_norm.{new}")
    state.pop("latent_norm.bound", None)  # MAR had no bound: the fresh model's inf stays
    save_file(state, weights)
    loaded = from_pretrained(folder)
    for key in ("mean", "std"):
        assert torch.equal(getattr(loaded.latent_norm, key), getattr(model.latent_norm, key)), key
    if name == "dit":
        assert torch.equal(loaded.latent_norm.bound, model.latent_norm.bound)
    torch.manual_seed(3)
    a = model.loss(z)["loss"]
    torch.manual_seed(3)
    assert torch.equal(loaded.loss(z)["loss"], a)
