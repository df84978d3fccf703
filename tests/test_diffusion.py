"""Diffusion transformer: adaLN-Zero, patches, objectives, P20 masking, samplers, CFG, learning."""

import pytest
import torch
import torch.nn.functional as F
from helpers import graphs, randomize

from latentforge import registry
from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.config import from_dict
from latentforge.generators.diffusion import DiTConfig, DiTGenerator
from latentforge.nn.adaln import AdaLNBlock, AdaLNFinal, modulate


def tiny(conditional=False, grid=(4, 4), channels=3, **kwargs) -> DiTGenerator:
    cond = SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3) if conditional else None
    cfg = DiTConfig(grid=grid, channels=channels, dim=32, depth=2, heads=2, conditioner=cond, **kwargs)
    return DiTGenerator(cfg)


# ---------------------------------------------------------------------------------- adaLN-Zero

def test_adaln_zero_blocks_start_as_identity():
    block = AdaLNBlock(32, 2, cond_dim=16, context_dim=24)
    x, c, ctx = torch.randn(3, 5, 32), torch.randn(3, 16), torch.randn(3, 4, 24)
    assert torch.equal(block(x, c, context=ctx), x)
    assert torch.equal(AdaLNFinal(32, 7, 16)(x, c), torch.zeros(3, 5, 7))
    # inside a model, with mixer, masking off in eval, and a context: every block passes its input through
    model = tiny(conditional=True, patch_mixer_depth=1).eval()
    seen = []
    for b in [*model.mixer, *model.blocks]:
        b.register_forward_hook(lambda m, args, out: seen.append(torch.equal(args[0], out)))
    ctx = model.encode_condition(graphs(2), generator=torch.Generator().manual_seed(0))
    out = model.predict(torch.randn(2, 4, 4, 3), torch.rand(2), ctx)
    assert seen == [True] * 3 and torch.equal(out, torch.zeros_like(out))


def test_adaln_block_matches_reference_formula():
    torch.manual_seed(1)
    block = randomize(AdaLNBlock(16, 2, mlp_ratio=2.0, cond_dim=8))
    x, c = torch.randn(2, 5, 16), torch.randn(2, 8)
    sa, ka, ga, sm, km, gm = block.modulation(c).chunk(6, -1)
    ln = lambda v: F.layer_norm(v, (16,))
    ref = x + ga[:, None] * block.attn(ln(x) * (1 + ka[:, None]) + sa[:, None])
    ref = ref + gm[:, None] * block.mlp(ln(ref) * (1 + km[:, None]) + sm[:, None])
    assert torch.allclose(block(x, c), ref, atol=1e-5)
    assert torch.allclose(modulate(x, sa, ka), x * (1 + ka[:, None]) + sa[:, None])


# ---------------------------------------------------------------------------------- patches

@pytest.mark.parametrize("grid,patch", [((4, 6), 2), ((4, 4), 1), ((6,), 1), ((2, 3, 4), 1)])
def test_patchify_round_trip(grid, patch):
    model = tiny(grid=grid, patch=patch)
    z = torch.randn(2, *grid, 3)
    tokens = model.patchify(z)
    n = 1
    for s in grid:
        n *= s // patch
    assert tokens.shape == (2, n, patch ** len(grid) * 3)
    assert torch.equal(model.unpatchify(tokens), z)


def test_patch_layout_and_spatial_pooling():
    model = tiny(grid=(4, 6), patch=2)
    z = torch.randn(2, 4, 6, 3)
    tokens = model.patchify(z)  # patch grid 2 x 3, raster order
    assert torch.equal(tokens[:, 0], z[:, 0:2, 0:2].reshape(2, -1))
    assert torch.equal(tokens[:, 4], z[:, 2:4, 2:4].reshape(2, -1))  # row 1, column 1
    spatial = torch.randn(2, 4, 6, 5)
    pooled = model._pool_spatial(spatial.reshape(2, 24, 5))
    assert pooled.shape == (2, 6, 5)
    assert torch.allclose(pooled[:, 5], spatial[:, 2:4, 4:6].mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="2D or 3D grid whose last two sizes"):
        DiTConfig(grid=(8,), patch=2)
    with pytest.raises(ValueError, match="float latents"):
        model.loss(torch.randn(2, 4, 6, 4))


# ---------------------------------------------------------------------------------- objectives

@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_loss_is_mse_to_the_objective_target(objective):
    torch.manual_seed(2)
    model = randomize(tiny(grid=(4, 4), patch=2, objective=objective))
    z = torch.randn(6, 4, 4, 3) * torch.tensor([2.0, 0.5, 3.0]) + torch.tensor([1.0, -2.0, 0.0])
    model.latent_norm.fit(z)
    assert torch.allclose(model.latent_norm.mean, z.reshape(-1, 3).mean(0), atol=1e-5)
    assert torch.allclose(model.latent_norm.std, z.reshape(-1, 3).std(0, unbiased=False), atol=1e-5)
    x = (z - model.latent_norm.mean) / model.latent_norm.std
    noise = torch.randn_like(z)
    if objective == "flow":
        t = torch.rand(6)
        x_t, target = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * noise, noise - x
    else:
        t = torch.randint(1000, (6,))
        abar = model.process.alpha_bar[t].float()[:, None, None, None]
        x_t, target = abar.sqrt() * x + (1 - abar).sqrt() * noise, noise
    out = model.loss(z, noise=noise, t=t)["loss"]
    ref = F.mse_loss(model.predict(x_t, t), target)
    assert torch.isfinite(out) and torch.allclose(out, ref, rtol=1e-5)
    # a wrong target would be far off
    assert not torch.allclose(out, F.mse_loss(model.predict(x_t, t), noise if objective == "flow" else x))


def test_flow_zero_velocity_sample_is_the_unnormalised_noise():
    """A fresh model predicts v = 0, so the ODE leaves the noise alone: the sample must be the
    generator's noise mapped back through the fitted latent statistics."""
    model = tiny(grid=(3, 5), channels=2).eval()
    model.latent_norm.mean.copy_(torch.tensor([5.0, -1.0]))
    model.latent_norm.std.copy_(torch.tensor([0.5, 2.0]))
    out = model.sample(4, generator=torch.Generator().manual_seed(3), steps=3, method="heun")
    noise = torch.randn(4, 3, 5, 2, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, noise * model.latent_norm.std + model.latent_norm.mean)


# ---------------------------------------------------------------------------------- P20 masking

def test_deferred_masking_runs_backbone_on_kept_tokens_and_scores_only_them():
    torch.manual_seed(3)
    model = randomize(tiny(grid=(4, 4), mask_ratio=0.75, patch_mixer_depth=1))
    widths = {}

    def record(name):
        def hook(module, args):
            widths[name] = args[0].shape[1]  # tokens this block sees
        return hook

    model.mixer[0].register_forward_pre_hook(record("mixer"))
    for i, b in enumerate(model.blocks):
        b.register_forward_pre_hook(record(f"block{i}"))
    final = {}
    model.final.register_forward_hook(lambda m, args, out: final.setdefault("out", out))
    keeps = []
    orig_keep = model._keep
    model._keep = lambda *a: keeps.append(orig_keep(*a)) or keeps[-1]

    model.train()
    z, noise, t = torch.randn(5, 4, 4, 3), torch.randn(5, 4, 4, 3), torch.rand(5)
    loss = model.loss(z, noise=noise, t=t)["loss"]
    assert widths == {"mixer": 16, "block0": round(0.25 * 16), "block1": 4}
    keep = keeps[0]
    assert keep.shape == (5, 4) and all(len(set(row.tolist())) == 4 for row in keep)
    assert len({tuple(sorted(row.tolist())) for row in keep}) > 1  # random per example
    # the loss is the MSE over the kept patches only
    err = (final["out"] - model.patchify(noise - z)).pow(2).mean(-1)  # [B, N]
    assert torch.allclose(loss, err.gather(1, keep).mean())
    assert not torch.allclose(loss, err.mean())
    # dropped positions hold the mask token, which the loss never sees
    loss.backward()
    assert model.mask_token.grad is None or not model.mask_token.grad.any()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # no dropping outside training
    widths.clear()
    model.eval()
    model.loss(z)
    assert widths == {"mixer": 16, "block0": 16, "block1": 16}


# ---------------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("objective,kwargs", [("flow", {"method": "euler"}), ("flow", {"method": "heun"}),
                                              ("ddpm", {"eta": 0.0}), ("ddpm", {"eta": 1.0})])
def test_sampling_shape_dtype_and_reproducibility(objective, kwargs):
    torch.manual_seed(4)
    model = randomize(tiny(grid=(4, 4), patch=2, objective=objective))
    a = model.sample(3, generator=torch.Generator().manual_seed(7), steps=4, **kwargs)
    b = model.sample(3, generator=torch.Generator().manual_seed(7), steps=4, **kwargs)
    c = model.sample(3, generator=torch.Generator().manual_seed(8), steps=4, **kwargs)
    assert a.shape == (3, 4, 4, 3) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="does not fit"):
        model.sample(1, method="ddim" if objective == "flow" else "euler")


def test_cfg_guides_the_velocity_with_the_scene_graph_conditioner():
    """One Euler step from t = 1: x0 = eps - (v_u + s (v_c - v_u)), both velocities at the noise."""
    torch.manual_seed(5)
    model = randomize(tiny(conditional=True, grid=(4, 4), patch=2))
    ctx = model.encode_condition(graphs(3), generator=torch.Generator().manual_seed(0))
    assert ctx.spatial is not None  # the layout map goes through the patch pooling
    out = model.sample(3, ctx, generator=torch.Generator().manual_seed(9), steps=1, cfg_scale=3.0)
    eps = torch.randn(3, 4, 4, 3, generator=torch.Generator().manual_seed(9))
    t = torch.ones(3)
    v_c = model.predict(eps, t, ctx)
    v_u = model.predict(eps, t, model.conditioner.null(3))
    assert torch.allclose(out, eps - (v_u + 3.0 * (v_c - v_u)), atol=1e-4)
    assert not torch.allclose(out, eps - v_c, atol=1e-3)
    # the condition matters, and guidance keeps sampling reproducible
    again = model.sample(3, ctx, generator=torch.Generator().manual_seed(9), steps=1, cfg_scale=3.0)
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, None)


# ---------------------------------------------------------------------------------- learning

def two_modes(n, generator):
    label = torch.randint(2, (n,), generator=generator)
    sign = 1.0 - 2.0 * label.float()  # class 0 -> +1, class 1 -> -1
    z = sign[:, None, None, None] + 0.05 * torch.randn(n, 4, 4, 2, generator=generator)
    return z, label


@pytest.mark.parametrize("objective,steps,head", [("flow", 10, {}), ("ddpm", 20, {}),
                                                 ("flow", 10, {"head_width": 64, "head_depth": 1})])
def test_tiny_model_learns_two_class_conditional_modes(objective, steps, head):
    torch.manual_seed(0)
    cfg = DiTConfig(grid=(4, 4), channels=2, dim=32, depth=2, heads=2, objective=objective, p_uncond=0.0,
                    ddpm_schedule="cosine", conditioner=ClassConfig(dim=32, num_classes=2), **head)
    model = DiTGenerator(cfg)
    g = torch.Generator().manual_seed(1)
    model.latent_norm.fit(two_modes(256, g)[0])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(250):
        z, label = two_modes(64, g)
        loss = model.loss(z, model.encode_condition({"label": label}))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    label = torch.arange(16) % 2
    out = model.sample(16, model.encode_condition({"label": label}), generator=torch.Generator().manual_seed(2),
                       steps=steps)
    sign = (1.0 - 2.0 * label.float())[:, None, None, None]
    assert (torch.sign(out) == sign).float().mean() >= 0.95
    assert (out[label == 0].mean() - 1).abs() < 0.2 and (out[label == 1].mean() + 1).abs() < 0.2


def test_ddt_head_reads_x_t_and_the_trunk_and_starts_at_zero():
    model = tiny(conditional=True, head_width=48, head_depth=2)
    x, t = torch.randn(2, 4, 4, 3), torch.rand(2)
    ctx = model.encode_condition(graphs(2))
    assert torch.equal(model.predict(x, t, ctx), torch.zeros_like(x))  # zero-initialised output layer
    model = randomize(model)
    out = model.predict(x, t, ctx)
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.add_(0.5)  # the trunk reaches the output through the head's modulation
        assert not torch.allclose(model.predict(x, t, ctx), out)
    model.train()
    model.loss(x, model.encode_condition(graphs(2)))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and n != "mask_token"]
    assert not missing, missing
    with pytest.raises(ValueError, match="head_width"):
        DiTConfig(grid=(4, 4), channels=3, dim=32, heads=2, head_width=33)


# ---------------------------------------------------------------------------------- config

def test_registered_and_built_from_a_dict():
    cfg_cls, model_cls = registry.lookup("generator", "dit")
    assert cfg_cls is DiTConfig and model_cls is DiTGenerator
    cfg = from_dict(DiTConfig, {"name": "dit", "grid": [4, 4], "channels": 2, "objective": "ddpm",
                                "ddpm_schedule": "cosine", "dim": 32, "depth": 1, "heads": 2})
    assert cfg.objective == "ddpm" and tuple(cfg.grid) == (4, 4)
    with pytest.raises(ValueError):
        DiTConfig(objective="edm")
    with pytest.raises(ValueError):
        DiTConfig(mask_ratio=1.0)
