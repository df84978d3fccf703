"""Flow matching and DDPM: schedules, known answers, and samplers checked against exact fields."""

import math

import pytest
import torch

from latentforge.generators.noise import DDPM, FlowMatching
from latentforge.nn.embeddings import TimestepEmbedding

MU, SIGMA = 1.5, 0.5


def gaussian_velocity(x, t):
    """Exact flow-matching velocity E[eps - x | x_t] for data ~ N(MU, SIGMA^2), eps ~ N(0, 1)."""
    t = t[:, None]
    a = 1 - t
    var = a**2 * SIGMA**2 + t**2
    centred = x - a * MU
    return t / var * centred - (MU + a * SIGMA**2 / var * centred)


def gaussian_epsilon(ddpm):
    def eps(x, t):
        ab = ddpm.alpha_bar[t].to(x.dtype)[:, None]
        return (1 - ab).sqrt() / (ab * SIGMA**2 + 1 - ab) * (x - ab.sqrt() * MU)
    return eps


def test_flow_interpolation_and_target():
    x, noise = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = FlowMatching.noisy(x, noise, t)
    assert torch.allclose(xt[0], x[0]) and torch.allclose(xt[3], noise[3])
    assert torch.allclose(xt[1], 0.75 * x[1] + 0.25 * noise[1])
    # the target is the time derivative of the path
    h = 1e-3
    deriv = (FlowMatching.noisy(x, noise, t + h) - FlowMatching.noisy(x, noise, t)) / h
    assert torch.allclose(deriv, FlowMatching.target(x, noise), atol=1e-3)


def test_flow_time_sampling_and_shift():
    flow = FlowMatching()
    t = flow.sample_time(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(t.median().item() - 0.5) < 0.02          # logit-normal(0, 1) is symmetric about 1/2
    shifted = FlowMatching(shift=3.0)
    assert torch.allclose(shifted.warp(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 0.75, 1.0]))
    grid = shifted.time_grid(4)
    assert grid[0] == 1 and grid[-1] == 0 and (grid[:-1] > grid[1:]).all()


def test_flow_point_mass_is_reached_in_one_step():
    target = torch.tensor([[2.0, -1.0]])

    def velocity(x, t):  # exact for data = target: straight lines to it
        return (x - target) / t[:, None]

    noise = torch.randn(5, 2)
    for method in ("euler", "heun"):
        for steps in (1, 3):
            out = FlowMatching().sample(velocity, noise, steps, method)
            assert torch.allclose(out, target.expand(5, 2), atol=1e-5)


def test_flow_samplers_transport_a_gaussian_and_heun_is_more_accurate():
    z = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = MU + SIGMA * z  # the flow ODE maps noise quantiles to data quantiles
    flow = FlowMatching()

    def error(method, steps):
        return (flow.sample(gaussian_velocity, z, steps, method) - exact).abs().max().item()

    # convergence orders: doubling the steps halves Euler's error and quarters Heun's
    assert 1.8 < error("euler", 20) / error("euler", 40) < 2.2
    assert 3.5 < error("heun", 20) / error("heun", 40) < 4.5
    assert error("heun", 20) < error("euler", 20) / 10
    assert error("heun", 200) < 1e-4


def test_ddpm_schedules_known_values():
    linear = DDPM(1000, "linear")
    # DDPM's linear schedule: abar_T = prod(1 - beta) ~ 4.04e-5
    assert linear.alpha_bar[-1].item() == pytest.approx(4.04e-5, rel=0.02)
    cosine = DDPM(1000, "cosine")
    assert (cosine.alpha_bar[1:] < cosine.alpha_bar[:-1]).all()
    assert cosine.alpha_bar[0] > 0.9999 and cosine.alpha_bar[-1] < 1e-6
    # mid-way the cosine schedule keeps more signal than the linear one (its point)
    assert cosine.alpha_bar[500] > linear.alpha_bar[500]
    x, noise = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0, 999])
    xt = linear.noisy(x, noise, t)
    ab = linear.alpha_bar[t].float()[:, None]
    assert torch.allclose(xt, ab.sqrt() * x + (1 - ab).sqrt() * noise)
    assert linear.timesteps(1) == [999] and linear.timesteps(4) == [999, 666, 333, 0]


def test_ddim_point_mass_exact_and_gaussian_transport():
    ddpm = DDPM(1000, "cosine")
    target = torch.tensor([[0.5, -2.0]])

    def eps_point(x, t):
        ab = ddpm.alpha_bar[t].float()[:, None]
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    out = ddpm.sample(eps_point, torch.randn(3, 2), steps=5)
    assert torch.allclose(out, target.expand(3, 2), atol=1e-4)
    z = torch.randn(4000, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def error(steps):  # deterministic DDIM: a first-order solver of the probability-flow ODE
        return (ddpm.sample(gaussian_epsilon(ddpm), z, steps=steps) - (MU + SIGMA * z)).abs().max().item()

    assert error(100) < 0.03 and 1.8 < error(100) / error(200) < 2.2
    g = torch.Generator().manual_seed(3)
    stochastic = ddpm.sample(gaussian_epsilon(ddpm), z.float(), steps=100, eta=1.0, generator=g)
    assert abs(stochastic.mean().item() - MU) < 0.05 and abs(stochastic.std().item() - SIGMA) < 0.05


def test_ddim_clip_bounds_an_erring_model_and_keeps_an_exact_one():
    """A network-like model: a small error in eps and outputs of bounded size (a network cannot follow
    eps off the data manifold). Unclipped few-step DDIM from the cosine schedule's last step
    amplifies the error by 1/sqrt(abar) (~1e4), which the bounded model cannot undo later;
    clipping x0 keeps samples near the data."""
    ddpm = DDPM(1000, "cosine")
    target = torch.tensor([[0.5, -1.0]])

    def eps_point(x, t):
        ab = ddpm.alpha_bar[t].float()[:, None]
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    exact = ddpm.sample(eps_point, noise, steps=10, clip_x0=1.5)
    assert torch.allclose(exact, target.expand(8, 2), atol=1e-4)  # clipping never bites a correct model
    erring = lambda x, t: (eps_point(x, t) + 0.01).clamp(-4, 4)  # noqa: E731
    assert ddpm.sample(erring, noise, steps=10).abs().max() > 10
    clipped = ddpm.sample(erring, noise, steps=10, clip_x0=1.5)
    assert (clipped - target).abs().max() < 0.1


def test_timestep_embedding_stays_fp32_under_autocast():
    emb = TimestepEmbedding(16, scale=1000.0)
    t = torch.tensor([0.5, 0.5 + 1e-4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emb(t)
    assert out.shape == (2, 16)
    # 1000 * t differs by 0.1: fp32 features tell the two apart; bf16 angles (step 2 near 500) would not
    angles = (t * 1000)[:, None] * emb.freqs[None]
    assert not torch.equal(torch.cos(angles[0]), torch.cos(angles[1]))
    assert not torch.allclose(out[0].float(), out[1].float(), atol=0, rtol=0)
    assert math.isclose(emb.freqs[0].item(), 1.0)
