"""One contract for every generator: any grid rank it supports, any conditioner, overfitting a tiny set.

Each generator family has its own file of mechanism tests; this one checks that all of them keep the
shared interface (`loss(z, context)`, `sample(n, context, ...)`) the recipes rely on.
"""

import pytest
import torch

from latentforge import registry
from latentforge.conditioning.caption import CaptionConfig, build_vocab
from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_scene

GENERATORS = ["autoregressive", "axial", "masked", "masked_enat", "hierarchical", "dit", "mar"]
GRIDS = [(6,), (4, 4), (2, 2, 3)]
FEW_STEPS = {"masked": dict(steps=3), "masked_enat": dict(steps=3), "dit": dict(steps=3),
             "mar": dict(steps=2, head_steps=3)}


def tiny(name: str, grid, conditioner=None):
    kw = dict(grid=grid, conditioner=conditioner, dim=32, heads=2)
    options = {
        "autoregressive": dict(depth=2, vocab_size=8),
        "axial": dict(upper_depth=1, row_depth=1, vocab_size=8),
        "masked": dict(depth=2, vocab_size=8),
        "masked_enat": dict(depth=2, decoder_depth=1, vocab_size=8, enat=True),
        "hierarchical": dict(depth=2, vocab_size=8, levels=2, depth_dim=32, depth_layers=1, depth_heads=2),
        "dit": dict(depth=2, channels=2),
        "mar": dict(depth=2, channels=2, head_width=32, head_depth=1),
    }[name]
    reg = "masked" if name == "masked_enat" else name
    cfg_cls, model_cls = registry.lookup("generator", reg)
    return model_cls(cfg_cls(**kw, **options))


def latents(name: str, model, n: int, generator=None):
    grid = tuple(model.config.grid)
    if name in ("dit", "mar"):
        return torch.randn(n, *grid, 2, generator=generator)
    if name == "hierarchical":
        return torch.randint(8, (n, *grid, 2), generator=generator)
    return torch.randint(8, (n, *grid), generator=generator)


def supports(name: str, grid) -> bool:
    return name != "axial" or len(grid) == 2  # the axial transformer is defined on 2D grids


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{len(g)}d")
@pytest.mark.parametrize("name", GENERATORS)
def test_samples_have_the_latent_shape_and_dtype(name, grid):
    if not supports(name, grid):
        with pytest.raises(ValueError, match="2D"):
            tiny(name, grid)
        return
    torch.manual_seed(0)
    model = tiny(name, grid).eval()
    z = latents(name, model, 3)
    out = model.sample(3, generator=torch.Generator().manual_seed(1), **FEW_STEPS.get(name, {}))
    assert out.shape == z.shape and out.dtype == z.dtype
    if not z.is_floating_point():
        assert out.min() >= 0 and out.max() < 8
    again = model.sample(3, generator=torch.Generator().manual_seed(1), **FEW_STEPS.get(name, {}))
    assert torch.equal(out, again)
    assert torch.isfinite(model.train().loss(z)["loss"])


def conditions(kind: str, n: int):
    scenes = [sample_scene(ShapesConfig(max_objects=3), "train", i) for i in range(n)]
    if kind == "class":
        return ClassConfig(dim=32, num_classes=4), {"label": torch.arange(n) % 4}
    if kind == "caption":
        texts = [s.caption() for s in scenes]
        return CaptionConfig(dim=32, depth=1, heads=2, vocab=build_vocab(texts)), texts
    return SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3), {
        k: torch.as_tensor(v) for k, v in encode_graphs(scenes, 3).items()}


@pytest.mark.parametrize("kind", ["class", "caption", "scene_graph"])
@pytest.mark.parametrize("name", GENERATORS)
def test_every_conditioner_drives_every_generator_with_guidance(name, kind):
    torch.manual_seed(0)
    cond_cfg, batch = conditions(kind, 4)
    model = tiny(name, (4, 4), cond_cfg)
    if kind == "caption":
        batch = model.conditioner.tokenize(batch)
    z = latents(name, model, 4)
    # zero-initialised heads and gates block every gradient but theirs on the first step: take a few
    start = [p.detach().clone() for p in model.conditioner.parameters()]
    opt = torch.optim.SGD(model.parameters(), 0.1)
    model.train()
    for _ in range(3):
        out = model.loss(z, model.encode_condition(batch))
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    moved = [not torch.equal(a, b) for a, b in zip(start, model.conditioner.parameters())]
    assert any(moved)  # the condition reaches the loss
    model.eval()
    ctx = model.encode_condition(batch, generator=torch.Generator().manual_seed(0))
    a = model.sample(4, ctx, cfg_scale=2.0, generator=torch.Generator().manual_seed(2), **FEW_STEPS.get(name, {}))
    ctx = model.encode_condition(batch, generator=torch.Generator().manual_seed(0))
    b = model.sample(4, ctx, cfg_scale=2.0, generator=torch.Generator().manual_seed(2), **FEW_STEPS.get(name, {}))
    assert a.shape == z.shape and torch.equal(a, b)


# eval loss after 150 Adam steps (lr 1e-2) on four fixed examples, one per class: chance is log 8 = 2.08
# nats for the discrete codes; the continuous objectives start near 2 (DiT, |eps - x|^2) and 0.5 (MAR, whose
# skip connection makes eps exact at pure noise)
OVERFIT_BELOW = {"autoregressive": 0.1, "axial": 0.1, "masked": 0.1, "masked_enat": 0.1, "hierarchical": 0.1,
                 "dit": 0.4, "mar": 0.4}


@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_overfits_four_labelled_examples(name):
    torch.manual_seed(0)
    model = tiny(name, (4, 4), ClassConfig(dim=32, num_classes=4))
    model.config.p_uncond = 0.0
    z = latents(name, model, 4, torch.Generator().manual_seed(5))
    if hasattr(model, "fit_normalization"):
        model.fit_normalization(z)

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
