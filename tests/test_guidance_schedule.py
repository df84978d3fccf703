"""Guidance schedules (generators/guidance.py): a scale per sampling step from the progress p in [0, 1],
guided only inside an interval (Kynkäänniemi et al. 2024) and constant or ramped (MUSE, MAR).

Known answers: the scale at a progress; a schedule that is the plain number everywhere samples bit for bit
as the number does; steps outside the interval run the model on the n conditional rows only (2n inside),
and a schedule that guides no step samples exactly as unguided sampling; the scales the mixing really uses
follow the ramp; the recipe's sample section builds the schedule from dotted overrides.
"""

import pytest
import torch
from helpers import build_generator, few_steps, randomize

import latentforge.generators.guidance as guidance_module
from latentforge.conditioning.class_label import ClassConfig
from latentforge.config import ConfigError, apply_overrides, from_dict, identity
from latentforge.generators.guidance import GuidanceSchedule
from latentforge.pipeline import SampleConfig

N = 3  # samples per draw


def conditional(name: str, **changes):
    torch.manual_seed(0)
    model = randomize(build_generator(name, conditioner=ClassConfig(dim=32, num_classes=4), **changes))
    return model, model.encode_condition({"label": torch.arange(N) % 4})


def seeded(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def count_rows(model, method: str) -> list[int]:
    """Wrap `model.<method>` (the family's per-step model call) to record its leading (row) axis."""
    rows, inner = [], getattr(model, method)

    def counted(x, *args, **kwargs):
        rows.append(x.shape[0])
        return inner(x, *args, **kwargs)

    setattr(model, method, counted)
    return rows


def test_scale_at_a_progress():
    ramp = GuidanceSchedule(3.0, interval=(0.25, 0.75), ramp="linear")
    assert [ramp.at(p) for p in (0.0, 0.2, 0.25, 0.5, 0.75, 0.8, 1.0)] == [1.0, 1.0, 1.5, 2.0, 2.5, 1.0, 1.0]
    assert ramp.at(3, 4) == ramp.at(0.75)                   # done / total: tokens fixed of all tokens
    assert GuidanceSchedule(3.0, ramp="power", power=2.0).at(0.5) == 1.5
    assert GuidanceSchedule(3.0, interval=(0.5, 1.0)).at(0.6) == 3.0
    for bad in [dict(interval=(0.6, 0.4)), dict(interval=(-0.1, 1.0)), dict(ramp="cosine"), dict(power=0.0)]:
        with pytest.raises(ValueError):
            GuidanceSchedule(2.0, **bad)


# (family, config changes, the per-step model call whose rows we count, sampling options)
SKIPPING = [("dit", {}, "_forward", {"steps": 4}), ("dit", {"objective": "ddpm"}, "_forward", {"steps": 4}),
            ("masked", {}, "_maskgit_logits", {"steps": 4}), ("mar", {}, "features", {"steps": 4, "head_steps": 2}),
            ("next_scale", {}, "logits", {}), ("axial", {}, "logits", {"use_cache": False})]
IDS = [name + "".join(f"-{v}" for v in changes.values()) for name, changes, _, _ in SKIPPING]


@pytest.mark.parametrize(("name", "changes", "method", "kw"), SKIPPING, ids=IDS)
def test_steps_outside_the_interval_skip_the_null_rows(name, changes, method, kw):
    model, ctx = conditional(name, **changes)
    rows = count_rows(model, method)
    model.sample(N, ctx, cfg_scale=2.5, generator=seeded(), **kw)
    assert set(rows) == {2 * N}  # a plain number guides every step: [cond; null] rows
    if name == "dit":
        # progress = 1 - noise level: flow t = 1, .75, .5, .25; DDPM t = T-1 .. 0 in thirds
        rows.clear()
        model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.5, interval=(0.4, 1.0)), generator=seeded(), **kw)
        assert rows == [N, N, 2 * N, 2 * N]
        return
    # token families: progress = the fraction of tokens fixed after the step, 1 at the last step only
    rows.clear()
    model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.5, interval=(0.0, 0.999)), generator=seeded(), **kw)
    assert rows[-1] == N and set(rows[:-1]) == {2 * N} and len(rows) > 1
    rows.clear()
    model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.5, interval=(0.999, 1.0)), generator=seeded(), **kw)
    assert rows[-1] == 2 * N and set(rows[:-1]) == {N}


CASES = [("dit", {}), ("dit", {"objective": "ddpm"}), ("masked", {}), ("masked", {"enat": True}), ("mar", {}),
         ("mar", {"head_objective": "flow"}), ("next_scale", {}), ("axial", {}), ("autoregressive", {}),
         ("autoregressive", {"order": "random"}), ("hierarchical", {})]
CASE_IDS = [name + "".join(f"-{v}" for v in changes.values()) for name, changes in CASES]


@pytest.mark.parametrize(("name", "changes"), CASES, ids=CASE_IDS)
def test_schedules_against_plain_numbers(name, changes):
    """Every family: the constant full-interval schedule is the plain number bit for bit, and a schedule
    that guides no step (interval [0, 0], before any step ends) is unguided sampling, exactly; families
    with per-row caches keep the null rows there but mix with scale 1 (the cond half as it is)."""
    model, ctx = conditional(name, **changes)
    kw = few_steps(model)
    if "cfg_schedule" in model.sampling_options():
        kw["cfg_schedule"] = "constant"  # MAR: the plain number unramped; a schedule replaces this option
    plain = model.sample(N, ctx, cfg_scale=2.5, generator=seeded(), **kw)
    assert torch.equal(plain, model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.5), generator=seeded(), **kw))
    unguided = model.sample(N, ctx, generator=seeded(), **kw)
    never = GuidanceSchedule(2.5, interval=(0.0, 0.0))
    if name == "dit":  # progress 0 at pure noise, 1 at DDPM's t = 0: 3 steps have none in (.9, .95)
        never = GuidanceSchedule(2.5, interval=(0.9, 0.95))
    assert torch.equal(unguided, model.sample(N, ctx, cfg_scale=never, generator=seeded(), **kw))
    assert not torch.equal(plain, unguided)


def test_mar_linear_schedule_is_its_cfg_schedule():
    model, ctx = conditional("mar")
    kw = {"steps": 4, "head_steps": 2}
    ramped = model.sample(N, ctx, cfg_scale=2.5, generator=seeded(), cfg_schedule="linear", **kw)
    same = model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.5, ramp="linear"), generator=seeded(), **kw)
    assert torch.equal(ramped, same)


def recorded_scales(monkeypatch) -> list[float]:
    scales, inner = [], guidance_module.guide

    def spy(out, scale):
        scales.append(scale)
        return inner(out, scale)

    monkeypatch.setattr(guidance_module, "guide", spy)
    return scales


def test_ramps_set_the_scale_each_step_mixes_with(monkeypatch):
    scales = recorded_scales(monkeypatch)
    model, ctx = conditional("dit")
    # flow, 4 Euler steps at t = 1, .75, .5, .25: progress 0 (scale 1: skipped), .25, .5, .75
    model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.5, ramp="linear"), generator=seeded(), steps=4)
    assert scales == pytest.approx([1.375, 1.75, 2.125])
    scales.clear()
    model.sample(N, ctx, cfg_scale=GuidanceSchedule(3.0, interval=(0.3, 1.0), ramp="power", power=2.0),
                 generator=seeded(), steps=4)
    assert scales == pytest.approx([1.5, 2.125])
    # MAR's head mixes every denoising step with its token step's scale: 2 head steps per token step
    scales.clear()
    model, ctx = conditional("mar")
    N_tokens = model.config.num_tokens
    model.sample(N, ctx, cfg_scale=GuidanceSchedule(2.0, ramp="linear"), generator=seeded(), steps=N_tokens,
                 head_steps=2)
    expected = [1 + (k + 1) / N_tokens for k in range(N_tokens) for _ in range(2)]
    assert scales == pytest.approx(expected)


def test_recipe_overrides_build_the_schedule():
    plain = SampleConfig()
    assert plain.guidance() == 1.0 and "guidance_ramp" not in identity(plain)  # old runs keep their fingerprint
    s = from_dict(SampleConfig, apply_overrides({"cfg_scale": 3.0}, [
        "guidance_interval=[0.2, 0.8]", "guidance_ramp=power", "guidance_power=2"]))
    assert s.guidance() == GuidanceSchedule(3.0, interval=(0.2, 0.8), ramp="power", power=2.0)
    assert from_dict(SampleConfig, {"cfg_scale": 2.0}).guidance() == 2.0
    with pytest.raises(ConfigError, match="interval"):
        from_dict(SampleConfig, {"guidance_interval": [0.9, 0.1]}).guidance()
    with pytest.raises(ConfigError):
        from_dict(SampleConfig, {"guidance_ramp": "cosine"})
