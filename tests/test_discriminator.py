"""Patch-GAN discriminator: hinge formulas, output grid, gradient routing, delayed start."""

from __future__ import annotations

import pytest
import torch

from latentforge.tokenizers.discriminator import (
    DiscriminatorConfig,
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
)


def _tiny(**overrides) -> PatchDiscriminator:
    return PatchDiscriminator(DiscriminatorConfig(channels=8, layers=2, **overrides))


def test_hinge_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> mean 5/6; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    # beyond the margins the discriminator loss is exactly zero
    assert hinge_d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0])).item() == 0.0


def test_output_is_a_grid_of_patch_logits():
    d = PatchDiscriminator(DiscriminatorConfig(channels=8, layers=3))
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)  # 32 / 2^3 - 2
    assert _tiny()(torch.randn(1, 3, 16, 24)).shape == (1, 1, 2, 4)
    with pytest.raises(ValueError, match="too small"):
        d(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        d(torch.randn(1, 1, 32, 32))


def test_adversarial_terms_are_off_before_start_step_and_skip_the_network():
    d = _tiny(start_step=100)
    calls = []
    d.register_forward_hook(lambda *_: calls.append(1))
    real, fake = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16, requires_grad=True)
    assert not d.active(99) and d.active(100)
    assert d.d_loss(real, fake, step=99)["d_loss"].item() == 0.0
    assert d.g_loss(fake, step=99)["g_adv"].item() == 0.0
    assert not calls  # no wasted forward passes while the term is off
    assert d.d_loss(real, fake, step=100)["d_loss"].item() > 0
    assert calls


def test_d_loss_trains_only_the_discriminator_and_g_loss_reaches_the_generator():
    d = _tiny(weight=0.5)
    real = torch.randn(2, 3, 16, 16)
    fake = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = d.d_loss(real, fake, step=0)
    out["d_loss"].backward()
    assert fake.grad is None  # the reconstruction was detached
    assert all(p.grad is not None for p in d.parameters())
    # (the last bias may get exactly zero: inside both margins its real and fake pulls cancel)
    assert all(p.grad.abs().sum() > 0 for p in d.parameters() if p.dim() > 1)
    g = d.g_loss(fake, step=0)["g_adv"]
    assert g.item() == pytest.approx(0.5 * hinge_g_loss(d(fake)).item(), rel=1e-6)
    g.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="start_step"):
        DiscriminatorConfig(start_step=-1)
    with pytest.raises(ValueError, match="layers"):
        DiscriminatorConfig(layers=0)
    with pytest.raises(ValueError, match="weight"):
        DiscriminatorConfig(weight=-0.1)


def test_one_loss_trains_each_player_only_on_its_own_term():
    from latentforge.quantize.vq import VQConfig
    from latentforge.tokenizers.conv import ConvConfig, ConvTokenizer

    torch.manual_seed(0)
    tok = ConvTokenizer(ConvConfig(channels=(8, 16), quantizer=VQConfig(codebook_size=16, dim=4),
                                   discriminator=DiscriminatorConfig(channels=8, layers=2, start_step=1)))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = tok.loss({"image": x})  # step 0: before start_step, no adversarial terms
    assert float(out["g_adv"]) == 0 and float(out["d_loss"]) == 0 and int(tok.train_step) == 1
    out = tok.loss({"image": x})
    assert float(out["d_loss"]) > 0
    disc = [p for p in tok.discriminator.parameters()]
    # the generator term alone reaches the decoder, never the discriminator
    tok.zero_grad()
    out["g_adv"].backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in disc)
    assert tok.decoder.out[-1].weight.grad.abs().sum() > 0
    # the discriminator term alone reaches the discriminator, never the tokenizer
    tok.zero_grad()
    out["d_loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc)
    assert all(p.grad is None or not p.grad.any() for n, p in tok.named_parameters() if not n.startswith("discriminator"))
