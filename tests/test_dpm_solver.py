"""DPM-Solver++(2M) (noise.py) against known answers, with no training.

Data x ~ N(mu, diag(s^2)): the exact noise / velocity predictions are closed forms, and so is the
probability-flow ODE's endpoint from a noise draw: in 1D an ODE flow keeps the order of its points, so
it is the increasing affine map between the Gaussian marginals, x0 = mu + s (x_T - alpha_T mu) / sd_T.
"""

import math

import pytest
import torch
from helpers import build_generator, randomize

from latentforge.generators.noise import DDPM, FlowMatching, denoise

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
S = torch.tensor([1.0, 0.5], dtype=torch.float64)
NOISE = torch.randn(2048, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def flow_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[noise - x | x_t] for x_t = (1 - t) x + t noise."""
    t = t.to(x.dtype)[:, None]
    var = (1 - t) ** 2 * S**2 + t**2
    centred = x - (1 - t) * MU
    return t / var * centred - (MU + (1 - t) * S**2 / var * centred)


def ddpm_epsilon(process: DDPM):
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = process.alpha_bar[t].to(x.dtype)[:, None]
        return (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)
    return eps


def ddpm_endpoint(process: DDPM) -> torch.Tensor:
    abar = process.alpha_bar[-1].item()  # sampling starts at t = T - 1
    return MU + S * (NOISE - math.sqrt(abar) * MU) / (abar * S**2 + 1 - abar).sqrt()


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().sqrt().item()


def flow_error(method: str, steps: int) -> float:
    return rms(denoise(FlowMatching(), flow_velocity, NOISE, steps, method=method), MU + S * NOISE)


def ddpm_error(schedule: str, method: str, steps: int) -> float:
    process = DDPM(schedule=schedule)
    return rms(denoise(process, ddpm_epsilon(process), NOISE, steps, method=method), ddpm_endpoint(process))


def test_the_closed_forms_are_exact():
    """Fine first-order solvers converge to the closed-form endpoint (checks the test's own answers)."""
    assert flow_error("heun", 400) < 1e-5
    assert ddpm_error("cosine", "ddim", 1000) < 5e-3


def test_flow_dpm_solver_beats_euler_and_is_second_order():
    dpm10, dpm20 = flow_error("dpmpp_2m", 10), flow_error("dpmpp_2m", 20)
    assert dpm10 < flow_error("euler", 10) / 3
    assert dpm10 / dpm20 > 3


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_dpm_solver_beats_ddim_and_is_second_order(schedule):
    dpm10, dpm20 = ddpm_error(schedule, "dpmpp_2m", 10), ddpm_error(schedule, "dpmpp_2m", 20)
    assert dpm10 < ddpm_error(schedule, "ddim", 10)
    assert dpm10 / dpm20 > 3


def test_three_steps_or_fewer_are_first_order_ddim_and_euler():
    """First, second-last and last steps are first order: up to 3 steps DPM-Solver++ is DDIM / Euler."""
    process = DDPM(schedule="cosine")
    for steps in (1, 2, 3):
        a = denoise(process, ddpm_epsilon(process), NOISE, steps, method="dpmpp_2m")
        assert torch.allclose(a, denoise(process, ddpm_epsilon(process), NOISE, steps), atol=1e-9)
        b = denoise(FlowMatching(), flow_velocity, NOISE, steps, method="dpmpp_2m")
        assert torch.allclose(b, denoise(FlowMatching(), flow_velocity, NOISE, steps, method="euler"), atol=1e-9)


def test_dpm_solver_takes_one_model_call_per_step():
    calls = []

    def counted(x, t):
        calls.append(t[0].item())
        return flow_velocity(x, t)

    denoise(FlowMatching(shift=3.0), counted, NOISE, 7, method="dpmpp_2m")
    assert len(calls) == 7 and calls[0] == 1.0


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_dit_samples_with_dpm_solver(objective):
    torch.manual_seed(0)
    model = randomize(build_generator("dit", objective=objective))
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = model.sample(2, generator=seeded(), steps=6, method="dpmpp_2m")
    assert torch.isfinite(out).all() and torch.equal(out, model.sample(2, generator=seeded(), steps=6,
                                                                        method="dpmpp_2m"))
    first_order = model.process.methods[0]  # ddim / euler: the same path at 3 steps
    assert torch.allclose(model.sample(2, generator=seeded(), steps=3, method="dpmpp_2m"),
                          model.sample(2, generator=seeded(), steps=3, method=first_order), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eta"):
        model.sample(2, generator=seeded(), steps=3, method="dpmpp_2m", eta=0.5)
