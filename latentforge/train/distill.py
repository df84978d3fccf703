"""Knowledge distillation for inference (P28's survey): a generator into a smaller one, and a
many-step flow sampler into a few-step one.

Logit distillation (AR and masked generators, any model with logits over codes): the student learns
from the data and from the teacher's whole next-token distribution,
    loss = alpha * CE(student, data) + (1 - alpha) * tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)),
the tau^2 keeping the soft term's gradient scale independent of the temperature (Hinton et al.).

Progressive distillation of a flow model (Salimans & Ho's halving, in the velocity form that suits
flow matching): a student with N/2 Euler steps learns to land where the teacher's N steps land. On
the teacher's time grid t_0 = 1 > t_1 > ... > t_N = 0 (the sampler's own, warped by the shift), a
student step from t_2i to t_2i+2 must equal two teacher steps through t_2i+1:
    x' = x + (t_2i+1 - t_2i) v_T(x, t_2i);   x'' = x' + (t_2i+2 - t_2i+1) v_T(x', t_2i+1)
    target v* = (x'' - x) / (t_2i+2 - t_2i),  loss = |v_S(x, t_2i) - v*|^2,
with x = (1 - t) z + t eps a noisy training latent. The student starts as a copy of the teacher; each
round halves the steps and the student becomes the next round's teacher. Because the student grid
is every other point of the teacher's (the warp is monotone), the student is sampled with the
library's ordinary Euler sampler at N/2 steps: nothing changes at inference but the step count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from latentforge.generators.diffusion import DiTGenerator
from latentforge.generators.noise import FlowMatching


def logit_distillation_loss(student: Tensor, teacher: Tensor, targets: Tensor, alpha: float = 0.5,
                            temperature: float = 1.0) -> Tensor:
    """student, teacher logits [..., V]; targets [...] int64. alpha weighs the data's cross-entropy,
    1 - alpha the temperature-softened KL to the teacher (scaled by tau^2)."""
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0, got {alpha}, {temperature}")
    if student.shape != teacher.shape or student.shape[:-1] != targets.shape:
        raise ValueError(f"student {list(student.shape)} and teacher {list(teacher.shape)} logits must match, "
                         f"targets {list(targets.shape)} their leading axes")
    V = student.shape[-1]
    ce = F.cross_entropy(student.reshape(-1, V).float(), targets.reshape(-1))
    log_s = F.log_softmax(student.reshape(-1, V).float() / temperature, -1)
    log_t = F.log_softmax(teacher.reshape(-1, V).float().detach() / temperature, -1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return alpha * ce + (1 - alpha) * temperature**2 * kl


@dataclass
class ProgressiveConfig:
    """start_steps: the teacher's Euler steps; rounds: halvings (start 32, 3 rounds -> 4 steps);
    steps_per_round: optimizer steps each round; lr: AdamW's rate (constant)."""

    start_steps: int = 32
    rounds: int = 3
    steps_per_round: int = 300
    lr: float = 1e-4
    batch: int = 32

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.start_steps % 2**self.rounds:
            raise ValueError(f"start_steps {self.start_steps} must halve {self.rounds} times into whole steps")
        if self.steps_per_round < 1 or self.lr <= 0 or self.batch < 1:
            raise ValueError("steps_per_round, lr and batch must be positive")


def halving_target(teacher: DiTGenerator, x: Tensor, i: Tensor, grid: Tensor, context) -> Tensor:
    """The velocity that takes x [B, *grid, C] (normalised) at teacher time grid[2i] to where two
    teacher Euler steps land at grid[2i + 2]. i [B] int64 indexes the student's steps."""
    t0, t1, t2 = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]  # [B] each, decreasing

    def per_example(t: Tensor) -> Tensor:
        return t.view(-1, *([1] * (x.dim() - 1)))

    with torch.no_grad():
        x1 = x + per_example(t1 - t0) * teacher.predict(x, t0, context)
        x2 = x1 + per_example(t2 - t1) * teacher.predict(x1, t1, context)
    return (x2 - x) / per_example(t2 - t0)


def progressive_distill(teacher: DiTGenerator, batches: Iterator[tuple[Tensor, dict | None]],
                        config: ProgressiveConfig, *, seed: int = 0,
                        on_round: Callable[[int, DiTGenerator], None] | None = None) -> DiTGenerator:
    """Distil a flow DiT's `start_steps`-step Euler sampler into start_steps / 2^rounds steps.

    batches yields (latents [B, *grid, C] in data units, condition batch or None). Returns the last
    student (eval mode); `on_round(steps, student)` is called after each round (for curves).
    """
    if not isinstance(teacher.process, FlowMatching):
        raise ValueError("progressive distillation is implemented for flow DiTs (objective 'flow')")
    g = torch.Generator().manual_seed(seed)
    teacher = teacher.eval()
    steps = config.start_steps
    for _ in range(config.rounds):
        student = copy.deepcopy(teacher).train()
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], config.lr, weight_decay=0.0)
        grid = teacher.process.time_grid(steps)  # [steps + 1], 1 -> 0
        for _ in range(config.steps_per_round):
            z, cond = next(batches)
            context = None if cond is None else teacher.encode_condition(cond)
            x0 = student.latent_norm(z.float())                              # normalised data
            eps = torch.randn(x0.shape, generator=g)
            i = torch.randint(steps // 2, (x0.shape[0],), generator=g)       # the student's step
            x = FlowMatching.noisy(x0, eps, grid[2 * i])                      # on the data's path at t_2i
            target = halving_target(teacher, x, i, grid, context)
            s_context = None if cond is None else student.encode_condition(cond)
            loss = F.mse_loss(student.predict(x, grid[2 * i], s_context), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        teacher, steps = student.eval(), steps // 2
        if on_round is not None:
            on_round(steps, teacher)
    return teacher
