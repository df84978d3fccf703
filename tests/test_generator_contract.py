"""The contract of every registered generator, driven by the registry (DESIGN.md: "Tests follow the registries").

Each entry of `registry.names("generator")` is built from its config's `tiny()` preset (an entry without
one fails here) and must: pass gradients to every parameter, conditional or not; save and load to the
same loss and the same seeded samples; sample deterministically under a seeded generator, with the latent
shape and dtype, on every grid rank it accepts (1D (T,), 2D (H, W), 3D (T, H, W)); guide with a class
conditioner (cfg_scale != 1), where scale 0 is the unconditional model; and learn from every conditioner.
Each family's mechanisms have their own test file.
"""


import pytest
import torch
from helpers import build_generator, few_steps, latents_for, randomize

from latentforge import from_pretrained, registry, save_pretrained
from latentforge.conditioning.caption import CaptionConfig, build_vocab
from latentforge.conditioning.class_label import ClassConfig
from latentforge.conditioning.scene_graph import SceneGraphConfig
from latentforge.data.shapes import ShapesConfig, encode_graphs, sample_scene

NAMES = registry.names("generator")
# Other configurations of a registered generator that the contract runs too: its tiny() with these changes.
VARIANTS = {"masked": [{"enat": True}], "autoregressive": [{"order": "random"}],
            "dit": [{"objective": "ddpm"}, {"position": "rope"}], "mar": [{"head_objective": "flow"}, {"head_objective": "mse"}]}
CASES = [(name, {}) for name in NAMES] + [(name, v) for name in NAMES for v in VARIANTS.get(name, [])]
IDS = [name + "".join(f"-{k}={v}" for k, v in changes.items()) for name, changes in CASES]
GRIDS = [(6,), (4, 4), (2, 2, 3)]
# Parameters that by design never receive a gradient: DiT's mask token fills the patches P20's masking
# drops, which the loss skips (and tiny() does not mask at all).
NO_GRADIENT = {"dit": {"mask_token"}}


def class_condition(n: int) -> tuple[ClassConfig, dict[str, torch.Tensor]]:
    return ClassConfig(dim=32, num_classes=4), {"label": torch.arange(n) % 4}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_generator_has_a_tiny_preset(name):
    config_cls, _ = registry.lookup("generator", name)
    if not callable(getattr(config_cls, "tiny", None)):
        pytest.fail(f"generator {name!r}: {config_cls.__name__} has no tiny() preset; every registered config needs "
                    "one (DESIGN.md, 'Tests follow the registries')")
    assert type(config_cls.tiny()) is config_cls
    model = build_generator(name).eval()
    out = model.sample(2, generator=seeded(0), **few_steps(model))
    assert out.shape[0] == 2
    # tiny enough to build and sample in well under a second (the largest today: 50 k)
    assert sum(p.numel() for p in model.parameters()) < 200_000


@pytest.mark.parametrize("conditional", [False, True], ids=["uncond", "class"])
@pytest.mark.parametrize(("name", "changes"), CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, changes, conditional):
    torch.manual_seed(0)
    if conditional:
        cond_cfg, batch = class_condition(8)
        # half the conditions dropped: the null context trains too
        model = build_generator(name, conditioner=cond_cfg, p_uncond=0.5, **changes)
    else:
        model, batch = build_generator(name, **changes), None
    # zero-initialised heads and gates would block every gradient but theirs on the first step
    randomize(model).train()
    z = latents_for(model.config, 8, seeded(1))
    model.loss(z, model.encode_condition(batch) if conditional else None)["loss"].backward()
    skip = NO_GRADIENT.get(name, set())
    dead = [n for n, p in model.named_parameters()
            if n not in skip and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, dead


@pytest.mark.parametrize("conditional", [False, True], ids=["uncond", "class"])
@pytest.mark.parametrize(("name", "changes"), CASES, ids=IDS)
def test_save_and_load_give_identical_loss_and_samples(name, changes, conditional, tmp_path):
    torch.manual_seed(0)
    cond_cfg, batch = class_condition(3) if conditional else (None, None)
    model = randomize(build_generator(name, conditioner=cond_cfg, **changes))
    z = latents_for(model.config, 3, seeded(1))
    if model.latent_norm is not None:  # the fitted statistics are saved with the weights
        model.latent_norm.fit(z * 3.0 + 1.0)
    loaded = from_pretrained(save_pretrained(model, tmp_path / name))
    assert type(loaded) is type(model) and loaded.config == model.config

    def loss(m):
        torch.manual_seed(2)  # the same masks, noise and times for both
        return m.loss(z, m.encode_condition(batch) if conditional else None)["loss"]

    def draw(m):
        ctx = m.encode_condition(batch) if conditional else None
        return m.sample(3, ctx, generator=seeded(3), **few_steps(m))

    assert torch.equal(loss(model), loss(loaded))
    assert torch.equal(draw(model), draw(loaded))


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{len(g)}d")
@pytest.mark.parametrize(("name", "changes"), CASES, ids=IDS)
def test_seeded_samples_are_deterministic_with_the_latent_shape_and_dtype(name, changes, grid):
    try:
        model = build_generator(name, grid=grid, **changes)
    except ValueError as err:
        # a family may refuse a grid rank, with a message that says so; it must accept its own preset's
        assert "grid" in str(err)
        assert tuple(registry.lookup("generator", name)[0].tiny().grid) != grid
        return
    torch.manual_seed(0)
    randomize(model)
    z = latents_for(model.config, 3)
    kw = few_steps(model)
    out = model.sample(3, generator=seeded(1), **kw)
    assert out.shape == z.shape and out.dtype == z.dtype
    if z.is_floating_point():
        assert torch.isfinite(out).all()
    else:
        assert out.min() >= 0 and out.max() < model.config.vocab_size
    assert torch.equal(out, model.sample(3, generator=seeded(1), **kw))
    assert not torch.equal(out, model.sample(3, generator=seeded(2), **kw))
    assert torch.isfinite(model.train().loss(z)["loss"])


@pytest.mark.parametrize(("name", "changes"), CASES, ids=IDS)
def test_guided_sampling_with_a_class_conditioner(name, changes):
    torch.manual_seed(0)
    cond_cfg, batch = class_condition(4)
    model = randomize(build_generator(name, conditioner=cond_cfg, **changes))
    ctx = model.encode_condition(batch)
    kw = few_steps(model)
    guided = model.sample(4, ctx, cfg_scale=2.5, generator=seeded(1), **kw)
    assert guided.shape == latents_for(model.config, 4).shape
    assert torch.equal(guided, model.sample(4, ctx, cfg_scale=2.5, generator=seeded(1), **kw))
    assert not torch.equal(guided, model.sample(4, ctx, generator=seeded(1), **kw))
    # u + 0 (c - u) = u: scale 0 samples the unconditional model, i.e. the null context unguided
    # (at every step: MAR's default schedule ramps the scale from 1 instead)
    if "cfg_schedule" in model.sampling_options():
        kw["cfg_schedule"] = "constant"
    zero = model.sample(4, ctx, cfg_scale=0.0, generator=seeded(1), **kw)
    null = model.sample(4, model.conditioner.null(4), generator=seeded(1), **kw)
    if zero.is_floating_point():  # [cond; null] rows run as one batch of 8, null alone as 4: the GEMM
        # kernels differ by batch size (AVX2 vs AVX-512 too), so agreement is to fp32 round-off, relative
        assert torch.allclose(zero, null, atol=1e-4, rtol=1e-4)
    else:
        assert torch.equal(zero, null)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(4, None)
    with pytest.raises(ValueError, match="conditional generator"):
        build_generator(name, **changes).sample(2, cfg_scale=2.0)
    with pytest.raises(TypeError, match="unknown option"):
        model.sample(4, ctx, not_an_option=1)


def test_sampling_options_are_the_published_signature():
    """Recipes check `sample.options` against the accepted names: the published signature and
    `sampling_options()` agree, and name each family's own options."""
    import inspect

    for name in NAMES:
        model = build_generator(name)
        params = set(inspect.signature(model.sample).parameters) - {"n", "context", "generator"}
        assert params == model.sampling_options(), name
        assert "cfg_scale" in params
    assert {"steps", "head_steps", "cfg_schedule"} <= build_generator("mar").sampling_options()
    assert {"length", "window_stride"} <= build_generator("hierarchical").sampling_options()


# ---------------------------------------------------------------------------------- every conditioner


def conditions(kind: str, n: int):
    scenes = [sample_scene(ShapesConfig(max_objects=3), "train", i) for i in range(n)]
    if kind == "class":
        return class_condition(n)
    if kind == "caption":
        texts = [s.caption() for s in scenes]
        return CaptionConfig(dim=32, depth=1, heads=2, vocab=build_vocab(texts)), texts
    return SceneGraphConfig(dim=32, depth=1, heads=2, max_objects=3), {
        k: torch.as_tensor(v) for k, v in encode_graphs(scenes, 3).items()}


@pytest.mark.parametrize("kind", ["class", "caption", "scene_graph"])
@pytest.mark.parametrize(("name", "changes"), CASES, ids=IDS)
def test_every_conditioner_drives_every_generator_with_guidance(name, changes, kind):
    torch.manual_seed(0)
    cond_cfg, batch = conditions(kind, 4)
    model = build_generator(name, grid=(4, 4), conditioner=cond_cfg, **changes)
    if kind == "caption":
        batch = model.conditioner.tokenize(batch)
    z = latents_for(model.config, 4)
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
    kw = few_steps(model)
    ctx = model.encode_condition(batch, generator=seeded(0))
    a = model.sample(4, ctx, cfg_scale=2.0, generator=seeded(2), **kw)
    ctx = model.encode_condition(batch, generator=seeded(0))
    b = model.sample(4, ctx, cfg_scale=2.0, generator=seeded(2), **kw)
    assert a.shape == z.shape and torch.equal(a, b)
