"""Preference fine-tuning of a diffusion/flow generator: Diffusion-DPO (Wallace et al. 2023), the
objective behind P16 Step-Video's Video-DPO.

Legend: B pairs, grid the latent grid, C latent channels, e(.) a model's per-example denoising
error (`DiTGenerator.errors`: mean squared error of its velocity or noise prediction).

Each training pair holds two latents drawn for the same condition, one preferred (w: a judge says
it follows its condition) and one not (l). DPO turns "raise the likelihood of w relative to l,
but stay near the model you started from" into a loss without a reward model: with the same
noise and time for both, and a frozen copy of the starting model as the reference,
    d    = [e_policy(w) - e_ref(w)] - [e_policy(l) - e_ref(l)]                          [B]
    loss = -log sigmoid(-beta * d)
A lower error is a higher (ELBO) likelihood, so the loss falls when the policy improves on w
more than on l. `beta` sets how far the policy may move: the errors are means over the grid, so
beta is of the order of the number of latent values.

    reference = frozen_copy(generator)
    out = dpo_loss(generator, reference, win, lose, condition)        # {"loss", "accuracy", ...}
    dpo_finetune(generator, pairs, DPOConfig(steps=200))              # the whole loop
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DPOConfig:
    beta: float = 500.0         # how sharply preferences move the policy (KL weight 1 / beta)
    steps: int = 200
    batch_size: int = 16        # pairs per step
    lr: float = 5e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.beta <= 0 or self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"DPO needs beta > 0, steps >= 1, batch_size >= 1 and lr > 0, got {self}")


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference model: a copy of `model` in eval mode with no trainable parameters."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def _check(model: nn.Module) -> None:
    if not callable(getattr(model, "errors", None)):
        raise TypeError(f"DPO needs a diffusion/flow generator with per-example errors (DiT); "
                        f"{type(model).__name__} has no errors()")


def dpo_loss(policy: nn.Module, reference: nn.Module, win: Tensor, lose: Tensor,
             condition: dict[str, Tensor] | None = None, beta: float = 500.0, *,
             noise: Tensor | None = None, t: Tensor | None = None) -> dict[str, Tensor]:
    """Diffusion-DPO on B pairs of latents win, lose [B, *grid, C] drawn for the same condition rows.

    Returns 'loss', 'accuracy' (share of pairs the policy ranks right relative to the reference,
    d < 0) and 'margin' (mean -d). noise (normalised units) and t are drawn when not given; both
    latents of a pair share them, as in the paper.
    """
    _check(policy)
    if win.shape != lose.shape:
        raise ValueError(f"preferred and rejected latents differ in shape: {list(win.shape)} vs {list(lose.shape)}")
    B = win.shape[0]
    noise = torch.randn_like(win, dtype=torch.float32) if noise is None else noise
    t = policy.process.sample_time(B, device=win.device) if t is None else t
    both = torch.cat([win, lose])
    noise2, t2 = torch.cat([noise, noise]), torch.cat([t, t])
    cond2 = None if condition is None else {k: torch.cat([v, v]) for k, v in condition.items()}

    def errors(model: nn.Module) -> Tensor:
        context = model.encode_condition(cond2) if cond2 is not None and model.conditioner is not None else None
        return model.errors(both, context, noise2, t2)                       # [2B]

    e_policy = errors(policy)
    with torch.no_grad():
        e_ref = errors(reference)
    d = (e_policy[:B] - e_ref[:B]) - (e_policy[B:] - e_ref[B:])              # [B]
    loss = -F.logsigmoid(-beta * d).mean()
    return {"loss": loss, "accuracy": (d < 0).float().mean().detach(), "margin": (-d).mean().detach()}


def dpo_finetune(policy: nn.Module, pairs: dict[str, Tensor], config: DPOConfig,
                 reference: nn.Module | None = None, progress: bool = False) -> list[dict[str, float]]:
    """Fine-tune `policy` in place on preference pairs: pairs["win"], pairs["lose"] [P, *grid, C]
    and any condition entries [P, ...] the policy's conditioner reads. Returns the log (one dict
    per step). The reference is a frozen copy of the policy as it was (or the one given)."""
    from tqdm.auto import tqdm

    _check(policy)
    if "win" not in pairs or "lose" not in pairs:
        raise KeyError(f"pairs need 'win' and 'lose' latents, got {sorted(pairs)}")
    reference = frozen_copy(policy) if reference is None else reference
    condition_keys = [k for k in pairs if k not in ("win", "lose")]
    P = len(pairs["win"])
    gen = torch.Generator().manual_seed(config.seed)  # batches, noise and times: nothing global is drawn
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.lr,
                            weight_decay=config.weight_decay)
    policy.train()
    log = []
    for _ in tqdm(range(config.steps), desc="dpo", disable=not progress, mininterval=1.0):
        idx = torch.randint(0, P, (min(config.batch_size, P),), generator=gen)
        cond = {k: pairs[k][idx] for k in condition_keys} or None
        win, lose = pairs["win"][idx], pairs["lose"][idx]
        noise = torch.randn(win.shape, generator=gen).to(win.device)
        t = policy.process.sample_time(len(idx), generator=gen).to(win.device)
        out = dpo_loss(policy, reference, win, lose, cond, config.beta, noise=noise, t=t)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
        opt.step()
        log.append({k: float(v.detach()) for k, v in out.items()})
    policy.eval()
    return log
