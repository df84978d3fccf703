"""The DiT's long-video ingredients (P4 ARLON): leading context frames given clean, and a per-token
guide map injected through adaLN, trained with noise on it."""

import pytest
import torch

from latentforge.generators.diffusion import DiTConfig, DiTGenerator


def fit(model, data, steps, guide=None, lr=3e-3, batch=64):
    g = torch.Generator().manual_seed(0)
    model.latent_norm.fit(data)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        opt.zero_grad()
        model.loss(data[idx], guide=None if guide is None else guide[idx])["loss"].backward()
        opt.step()
    return model.eval()


def test_context_frames_are_inputs_not_predictions():
    torch.manual_seed(0)
    model = DiTGenerator(DiTConfig(grid=(3, 2, 2), channels=2, dim=32, depth=1, heads=2, context_frames=1,
                                   context_p=1.0))
    z = torch.randn(4, 3, 2, 2, 2)
    model.latent_norm.fit(z)
    noise, t = torch.randn(4, 3, 2, 2, 2), torch.full((4,), 0.6)
    other = noise.clone()
    other[:, 0] = torch.randn(4, 2, 2, 2)   # different noise on the given frame only
    assert torch.equal(model.loss(z, noise=noise, t=t)["loss"], model.loss(z, noise=other, t=t)["loss"])
    with pytest.raises(ValueError, match="context_frames 3 needs"):
        DiTConfig(grid=(3, 2, 2), channels=2, context_frames=3)
    with pytest.raises(ValueError, match="no token masking"):
        DiTConfig(grid=(3, 2, 2), channels=2, context_frames=1, mask_ratio=0.5)


def test_a_clip_continues_its_prefix():
    """Clips hold one random vector in every frame: given the first frame, the model must draw the rest
    close to it; without a prefix its frames still agree with each other but not with any given one."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    value = torch.randn(512, 1, 1, 1, 2, generator=g)
    data = value.expand(512, 3, 1, 1, 2).contiguous()
    model = fit(DiTGenerator(DiTConfig(grid=(3, 1, 1), channels=2, dim=48, depth=2, heads=2, context_frames=1)),
                data, 800)
    prefix = torch.randn(64, 1, 1, 1, 2, generator=g)
    out = model.sample(64, generator=torch.Generator().manual_seed(2), steps=16, prefix=prefix)
    assert torch.equal(out[:, :1], prefix)
    err = (out[:, 1:] - prefix).abs().mean()
    free = model.sample(64, generator=torch.Generator().manual_seed(2), steps=16)
    err_free = (free[:, 1:] - prefix).abs().mean()
    assert err < 0.25 and err_free > 0.6, (err, err_free)
    with pytest.raises(ValueError, match="prefix must be latents"):
        model.sample(2, steps=2, prefix=torch.zeros(2, 2, 1, 1, 2))


@pytest.mark.parametrize("guide_noise", [0.0, 0.3])
def test_the_guide_map_steers_every_token(guide_noise):
    """Each token's latent is its guide value (plus a little noise): a guided DiT must draw latents that
    follow a new guide map token by token, also when trained with noise on the guide."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    guide = torch.randn(512, 2, 2, 1, generator=g)
    data = torch.cat([guide, -guide], -1) + 0.05 * torch.randn(512, 2, 2, 2, generator=g)
    model = fit(DiTGenerator(DiTConfig(grid=(2, 2), channels=2, dim=48, depth=2, heads=2, guide_channels=1,
                                       guide_noise=guide_noise)), data, 400, guide)
    new = torch.randn(64, 2, 2, 1, generator=g)
    out = model.sample(64, generator=torch.Generator().manual_seed(2), steps=16, guide=new)
    err = (out - torch.cat([new, -new], -1)).abs().mean()
    assert err < 0.3, err
    with pytest.raises(ValueError, match="guided"):
        model.sample(2, steps=2)
    with pytest.raises(ValueError, match="guide map"):
        model.loss(data[:2], guide=new[:2, :1])
