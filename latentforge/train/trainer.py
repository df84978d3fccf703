"""The one training loop. Any model whose loss is `loss_fn(batch) -> {'loss': ..., **metrics}`.

Determinism and exact resume come from one rule: everything random in step k (the batch and
the model's own noise: masks, condition dropout) is seeded from (seed, k). A run resumed from
the checkpoint of step k therefore replays steps k+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentforge.atomic import write_json
from latentforge.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from latentforge.train.log import JsonlLogger
from latentforge.train.precision import resolve_precision


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup: int = 50                 # linear warm-up steps
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # max global grad norm; 0 disables
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    log_every: int = 25
    ckpt_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on vectors (norms, biases) nor on what the model lists."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


class NonFiniteLoss(RuntimeError):
    pass


class Trainer:
    """Trains `model` for `config.steps` steps, checkpointing into `folder`; resumes from it.

    Args:
        model: the module whose parameters are optimised (and saved in checkpoints).
        config: TrainConfig.
        folder: run folder of this stage; holds checkpoints/, log.jsonl, train_info.json.
        batch_fn: step -> batch dict (called after the step's seed is set).
        loss_fn: batch -> dict with 'loss'; defaults to model.loss.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, folder: str | os.PathLike,
                 batch_fn: Callable[[int], dict[str, Tensor]],
                 loss_fn: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                 device: str | torch.device = "cpu", desc: str = "train", progress: bool = True) -> None:
        self.model = model.to(device)
        self.config = config
        self.folder = Path(folder)
        self.batch_fn = batch_fn
        self.loss_fn = loss_fn or model.loss
        self.device = torch.device(device)
        self.desc = desc
        self.progress = progress
        self.precision = resolve_precision(config.precision, self.device)
        self.optimizer = build_optimizer(model, config)
        self.logger = JsonlLogger(self.folder / "log.jsonl")

    def _say(self, message: str) -> None:
        print(f"[{self.desc}] {message}", file=sys.stderr, flush=True)

    def fit(self) -> dict[str, float]:
        cfg, model = self.config, self.model
        start = self._resume()
        self._say(f"precision {self.precision.name}: {self.precision.reason}")
        write_json(self.folder / "train_info.json", {
            "precision": self.precision.name, "precision_reason": self.precision.reason,
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(self.device),
            "threads": torch.get_num_threads(), "config": vars(cfg),
        })
        model.train()
        sums: dict[str, float] = {}
        count, last = 0, {}
        t_log = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=start, desc=self.desc, disable=not self.progress,
                   mininterval=1.0, dynamic_ncols=True, file=sys.stderr)
        for step in range(start, cfg.steps):
            torch.manual_seed(step_seed(cfg.seed, step))
            lr = lr_at(step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                     for k, v in self.batch_fn(step).items()}
            with self.precision.autocast(self.device.type):
                out = self.loss_fn(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                terms = {k: float(v) for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}
                raise NonFiniteLoss(f"[{self.desc}] non-finite loss at step {step}: {terms}; "
                                    f"the last good checkpoint is kept in {self.folder / 'checkpoints'}")
            loss.backward()
            if cfg.grad_clip > 0:
                out["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            for k, v in out.items():
                if isinstance(v, Tensor) and v.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                elapsed = time.perf_counter() - t_log
                last = {k: v / count for k, v in sums.items()}
                record = {"step": done, "lr": lr, "sec_per_step": elapsed / count,
                          "samples_per_s": count * cfg.batch_size / elapsed, **last}
                self.logger.log(record)
                bar.set_postfix({k: f"{last[k]:.4g}" for k in list(last)[:3]}, refresh=False)
                sums, count, t_log = {}, 0, time.perf_counter()
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                save_checkpoint(self.folder / "checkpoints", done, model, self.optimizer,
                                keep=cfg.keep_checkpoints)
        bar.close()
        model.eval()
        return last

    def _resume(self) -> int:
        ckpts = list_checkpoints(self.folder / "checkpoints")
        if not ckpts:
            return 0
        state = load_checkpoint(ckpts[-1], self.model, self.optimizer)
        step = int(state["step"])
        self.logger.truncate_after(step)
        self._say(f"resumed from {ckpts[-1].name} (step {step})")
        return step
