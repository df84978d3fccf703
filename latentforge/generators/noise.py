"""Noise processes for the continuous generators: flow matching and DDPM, with their samplers.

Both the diffusion transformer (diffusion.py) and MAR's per-token diffusion head (mar.py) learn to
undo noise; this file holds the processes so both share one definition.

Flow matching (rectified flow; P16, P6 RAE's convention): t = 0 is data, t = 1 is pure noise,
    x_t = (1 - t) x + t eps,   the model predicts the velocity  v = eps - x  (= dx_t/dt).
Training times follow a logit-normal law (more weight mid-way, where the task is hardest),
optionally warped by t' = s t / (1 + (s - 1) t): s > 1 spends more time near noise, which large
latents need (RAE: s = sqrt(H W C / 4096)). Sampling integrates dx/dt = v from t = 1 to 0 on the
same warped grid with Euler or Heun.

DDPM (Ho et al. 2020) with epsilon prediction: x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps for an
integer t in [0, T); betas linear (DDPM) or cosine (Nichol & Dhariwal 2021, used by MAR). Sampling
with DDIM (Song et al. 2021) on a subsequence of the T steps; eta = 0 is deterministic, eta = 1
matches the ancestral DDPM posterior noise.

DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", multistep second order in data-prediction form)
serves both: with x_t = alpha x + sigma eps and lambda = log(alpha / sigma), each step turns the
model output into a data guess x0 (DDPM: (x - sigma eps) / alpha; flow, alpha = 1 - t, sigma = t:
x - t v) and moves x along the exact exponential integrator, extrapolating x0 linearly in lambda
from the previous step's guess:
    h = lambda' - lambda,  r = h_prev / h,  D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev
    x' = (sigma' / sigma) x - alpha' (e^-h - 1) D
Its first step (no previous guess) is first order, DDIM / Euler exactly, and so are the last one,
which lands on sigma = 0 (lambda = inf): x' = x0, and the one before it (its lambda step is the
largest of the grid). One model call per step, like DDIM and Euler.

Both processes share one interface, so a generator holds either and never branches on which:
`sample_time`, `noisy(x, eps, t)`, `target(x, eps)` (what the model learns to predict: the
velocity, or the noise), `time_scale` (brings t to the range of the timestep embedding),
`progress(t)` (how far a sampler at time t has come, 0 at pure noise, 1 at the data: what a
guidance schedule reads) and `denoise`: the ODE (flow), DDIM (DDPM) or DPM-Solver++ sampler, with
the method checked against the process.

All schedule arithmetic runs in fp32 (float64 for the cumulative products), whatever the autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


def _expand(t: Tensor, like: Tensor) -> Tensor:
    """A per-example value [B] broadcast over the remaining axes of `like` [B, ...]."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def dpm_solver_2m(data: Callable[[Tensor, int], Tensor], x: Tensor, alpha: list[float], sigma: list[float]) -> Tensor:
    """DPM-Solver++(2M) along a grid of (alpha, sigma) [steps + 1], noisiest first, last sigma 0.

    data(x, i) is the model's data guess x0 at grid point i. alpha 0 (flow's t = 1) has lambda
    -inf: the step from it is the first-order limit x' = sigma' x + alpha' x0, and the next one
    (r = inf) stays first order too. The last two steps are first order (see below).
    """
    lam = [math.log(a / s) if a > 0 else -math.inf for a, s in zip(alpha[:-1], sigma[:-1])]
    x0_prev, h_prev = None, math.inf
    for i in range(len(alpha) - 1):
        x0 = data(x, i)
        if sigma[i + 1] == 0:      # lands on the data (lambda' = inf): first order
            return alpha[i + 1] * x0
        h = math.log(alpha[i + 1] / sigma[i + 1]) - lam[i]
        d = x0
        # the step into the last grid point (t = 0 for DDPM, 1/K for flow) spans the largest lambda
        # range of a uniform time grid, O(1) at any K: extrapolating x0 linearly across it overshoots
        # (diffusers' lower_order_final does the same below 15 steps), so it stays first order too
        second_last = i == len(alpha) - 3
        if x0_prev is not None and math.isfinite(h_prev) and math.isfinite(h) and not second_last:
            half_over_r = 0.5 * h / h_prev  # 1 / (2r)
            d = (1 + half_over_r) * x0 - half_over_r * x0_prev
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


@dataclass
class FlowMatching:
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.logit_std <= 0 or self.shift <= 0:
            raise ValueError(f"logit_std and shift must be > 0, got {self.logit_std}, {self.shift}")

    def warp(self, t: Tensor) -> Tensor:
        s = self.shift
        return t if s == 1.0 else s * t / (1 + (s - 1) * t)

    def sample_time(self, n: int, *, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
        """Training times [n] in (0, 1): logit-normal, then warped."""
        u = torch.randn(n, generator=generator, device=device) * self.logit_std + self.logit_mean
        return self.warp(torch.sigmoid(u))

    @staticmethod
    def noisy(x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        t = _expand(t, x)
        return (1 - t) * x + t * noise

    @staticmethod
    def target(x: Tensor, noise: Tensor) -> Tensor:
        return noise - x

    # t in [0, 1]: the timestep embedding's frequencies suit [0, 1000]
    time_scale = 1000.0
    methods = ("euler", "heun", "dpmpp_2m")

    @staticmethod
    def progress(t: Tensor) -> float:
        """How far a sampler at time t [B] (all equal) has come: 1 - t, the fraction of noise removed."""
        return 1.0 - float(t.reshape(-1)[0])

    def time_grid(self, steps: int, device: torch.device | str = "cpu") -> Tensor:
        """[steps + 1] times from 1 (noise) down to 0 (data), warped like the training times."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self.warp(torch.linspace(1.0, 0.0, steps + 1, device=device))

    def sample(self, velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int,
               method: Literal["euler", "heun", "dpmpp_2m"] = "euler") -> Tensor:
        """Integrate dx/dt = velocity(x, t[B]) from x(1) = noise to t = 0; returns x(0).

        Heun's second-order correction costs a second evaluation per step except the last one
        (which ends at t = 0, where Heun would need v at the data itself; Euler finishes it).
        DPM-Solver++(2M) (module doc) takes one evaluation per step, as Euler.
        """
        if method not in self.methods:
            raise ValueError(f"flow sampler must be 'euler', 'heun' or 'dpmpp_2m', got {method!r}")
        grid = self.time_grid(steps, noise.device)
        x = noise
        B = noise.shape[0]
        if method == "dpmpp_2m":
            times = grid.tolist()

            def data(x: Tensor, i: int) -> Tensor:
                return x - times[i] * velocity(x, grid[i].expand(B))  # x0 = x_t - t v

            return dpm_solver_2m(data, x, [1 - t for t in times], times)
        for i in range(steps):
            t, t_next = grid[i].expand(B), grid[i + 1].expand(B)
            dt = _expand(t_next - t, x)
            v = velocity(x, t)
            x_euler = x + dt * v
            if method == "heun" and i + 1 < steps:
                x = x + dt * 0.5 * (v + velocity(x_euler, t_next))
            else:
                x = x_euler
        return x


@dataclass
class DDPM:
    steps: int = 1000
    schedule: Literal["linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"DDPM needs >= 2 steps, got {self.steps}")
        T = self.steps
        if self.schedule == "linear":
            # DDPM's 1e-4 .. 0.02 over 1000 steps, rescaled so other T keep the same abar curve
            scale = 1000 / T
            betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
            abar = torch.cumprod(1 - betas, 0)
        elif self.schedule == "cosine":
            s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
            abar = torch.cumprod(1 - betas, 0)
        else:
            raise ValueError(f"DDPM schedule must be 'linear' or 'cosine', got {self.schedule!r}")
        self.alpha_bar = abar  # [T] float64, abar[t] after t + 1 noising steps

    def sample_time(self, n: int, *, device: torch.device | str = "cpu",
                    generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(self.steps, (n,), generator=generator, device=device)

    @staticmethod
    def target(x: Tensor, noise: Tensor) -> Tensor:
        return noise  # epsilon prediction

    methods = ("ddim", "dpmpp_2m")

    @property
    def time_scale(self) -> float:
        return 1000.0 / self.steps  # integer times, brought to [0, 1000)

    def progress(self, t: Tensor) -> float:
        """How far a sampler at integer time t [B] (all equal) has come: 1 - t / (T - 1)."""
        return 1.0 - float(t.reshape(-1)[0]) / (self.steps - 1)

    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        return _expand(self.alpha_bar.to(t.device)[t], like)

    def noisy(self, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        abar = self._abar(t, x)
        return abar.sqrt() * x + (1 - abar).sqrt() * noise

    def timesteps(self, steps: int) -> list[int]:
        """`steps` integer times evenly spaced over [0, T), from the noisiest (T - 1) down to 0;
        a single step goes from T - 1 straight to the data."""
        if not 1 <= steps <= self.steps:
            raise ValueError(f"sampling steps must be in [1, {self.steps}], got {steps}")
        return [round(float(t)) for t in torch.linspace(self.steps - 1, 0, steps, dtype=torch.float64)]

    def sample(self, epsilon: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int,
               eta: float = 0.0, generator: torch.Generator | None = None,
               clip_x0: float | None = None, method: Literal["ddim", "dpmpp_2m"] = "ddim") -> Tensor:
        """DDIM (or DPM-Solver++(2M), deterministic) from x_T = noise with `steps` model
        evaluations; epsilon(x, t[B] int64) -> eps. Both end with x = x0 guessed at t = 0.

        clip_x0 bounds the predicted data to [-clip_x0, clip_x0] (DDIM's clip_sample) and re-derives
        eps from the clipped value. Near pure noise x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)
        multiplies the model's error by 1 / sqrt(abar) (~2e4 at the cosine schedule's last step),
        and a few-step DDIM jumps carry that error far down the chain; the bound stops it.
        """
        x = noise
        B = noise.shape[0]
        times = self.timesteps(steps)
        if method == "dpmpp_2m":
            if eta != 0.0:
                raise ValueError("DPM-Solver++(2M) is a deterministic ODE solver: eta must be 0")
            abar = [float(self.alpha_bar[t]) for t in times] + [1.0]  # the last step lands on the data

            def data(x: Tensor, i: int) -> Tensor:
                eps = epsilon(x, torch.full((B,), times[i], dtype=torch.long, device=x.device))
                x0 = (x - math.sqrt(1 - abar[i]) * eps) / math.sqrt(abar[i])
                return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)

            return dpm_solver_2m(data, x, [math.sqrt(a) for a in abar], [math.sqrt(1 - a) for a in abar])
        if method != "ddim":
            raise ValueError(f"DDPM sampler must be 'ddim' or 'dpmpp_2m', got {method!r}")
        for i, t in enumerate(times):
            t_vec = torch.full((B,), t, dtype=torch.long, device=x.device)
            eps = epsilon(x, t_vec)
            abar = float(self.alpha_bar[t])
            abar_prev = float(self.alpha_bar[times[i + 1]]) if i + 1 < len(times) else 1.0
            x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
            if clip_x0 is not None:
                x0 = x0.clamp(-clip_x0, clip_x0)
                eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
            x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x


def denoise(process: FlowMatching | DDPM, model: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int, *,
            method: str | None = None, eta: float = 0.0, generator: torch.Generator | None = None,
            clip_x0: float | None = None) -> Tensor:
    """Run `process`'s sampler from pure noise to data: the one entry point of the continuous generators.

    Args:
        model: (x [B, ...], t [B]) -> the process's target (velocity or noise), e.g. a guided call.
        method: "euler" (default), "heun" or "dpmpp_2m" for flow matching; "ddim" (the default) or
            "dpmpp_2m" for DDPM.
        eta: DDIM noise (0 deterministic, 1 ancestral, drawn from `generator`); the ODE solvers take none.
        clip_x0: DDPM's bound on predicted data (see DDPM.sample); flow sampling leaves x0 unclipped.
    """
    method = method or process.methods[0]
    if method not in process.methods:
        kind = "flow" if isinstance(process, FlowMatching) else "ddpm"
        raise ValueError(f"sampler {method!r} does not fit objective {kind!r}: use {' or '.join(process.methods)}")
    if isinstance(process, FlowMatching):
        if eta != 0.0:
            raise ValueError("eta is a DDIM setting; the flow samplers are deterministic ODEs")
        return process.sample(model, noise, steps, method=method)
    return process.sample(model, noise, steps, eta=eta, generator=generator, clip_x0=clip_x0, method=method)
