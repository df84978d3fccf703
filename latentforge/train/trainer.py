"""The one training loop. Any model whose loss is `loss_fn(batch) -> {'loss': ..., **metrics}`.

Determinism and exact resume come from one rule: everything random in step k (the batch and
the model's own noise: masks, condition dropout) is seeded from (seed, k). A run resumed from
the checkpoint of step k therefore replays steps k+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from latentforge.atomic import write_json
from latentforge.config import ADDED_LATER, identity
from latentforge.serialization import CorruptFileError
from latentforge.train import distributed
from latentforge.train.batches import StepBatches, step_seed
from latentforge.train.checkpoint import (
    list_checkpoints,
    read_checkpoint,
    restore_rng,
    rng_json,
    rng_tensors,
    save_checkpoint,
    set_aside,
)
from latentforge.train.ema import EMA
from latentforge.train.log import JsonlLogger
from latentforge.train.precision import resolve_precision

# switches that change how fast or where training runs, not what it produces
RUNTIME_ONLY = ("compile", "distributed", "detect_anomaly", "tensorboard", "workers")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64             # the global batch: split over processes and micro-batches
    lr: float = 1e-3
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup: int = 50                 # linear warm-up steps
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # max global grad norm; 0 disables
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    accumulate: int = field(default=1, metadata=ADDED_LATER)        # micro-batches per step
    ema_decay: float = field(default=0.0, metadata=ADDED_LATER)     # EMA of the weights for sampling; 0: off
    compile: bool = False            # torch.compile the loss (eager, with a message, if it cannot)
    distributed: Literal["ddp", "fsdp"] = "ddp"   # under torchrun
    detect_anomaly: bool = False     # autograd anomaly mode: slow, names the op that made a NaN
    tensorboard: bool = True         # event files beside log.jsonl when tensorboard is installed
    workers: int = 0                 # processes reading StepBatches ahead of the step; 0: in the loop
    log_every: int = 25
    ckpt_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints", "accumulate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.batch_size % self.accumulate:
            raise ValueError(f"batch_size {self.batch_size} does not split into accumulate={self.accumulate} "
                             f"equal micro-batches")

    def identity(self) -> dict:
        """The fields that decide what training produces, for a run's fingerprint."""
        return {k: v for k, v in identity(self).items() if k not in RUNTIME_ONLY}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))




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


class _Objective(nn.Module):
    """The loss as a module's forward, so DDP / FSDP / torch.compile can wrap it: DDP readies its
    gradient reduction and FSDP gathers its shards in the hooks around a forward call."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.loss_fn(batch)


def _split(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    if parts == 1:
        return [batch]
    return [{k: v.chunk(parts)[i] if isinstance(v, Tensor) else v for k, v in batch.items()} for i in range(parts)]


def _scalars(out: dict[str, Any]) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}


class Trainer:
    """Trains `model` for `config.steps` steps, checkpointing into `folder`; resumes from it.

    Args:
        model: the module whose parameters are optimised (and saved in checkpoints).
        config: TrainConfig.
        folder: run folder of this stage; holds checkpoints/, log.jsonl, train_info.json.
        batch_fn: step -> the step's global batch (called after the step's seed is set; under
            torchrun every rank calls it and keeps its own rows); or a `StepBatches`, which
            reads only this rank's rows, `config.workers` processes ahead of the loop.
        loss_fn: batch -> dict with 'loss'; defaults to model.loss.

    Each step: seed from (seed, step); batch; forward/backward over `accumulate` micro-batches
    in the chosen precision (fp16 with a GradScaler); clip; AdamW (fused where available); EMA.
    Statistics stay on the device and are read every `log_every` steps, so the loop does not wait
    for the device each step (on a CPU the non-finite check runs every step, as it costs nothing).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, folder: str | os.PathLike,
                 batch_fn: Callable[[int], dict[str, Tensor]] | StepBatches,
                 loss_fn: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
                 device: str | torch.device = "cpu", desc: str = "train", progress: bool = True) -> None:
        self.world = distributed.current()
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", self.world.local_rank)
        self.model = model.to(self.device)
        self.config = config
        self.folder = Path(folder)
        self.batch_fn = batch_fn
        self.desc = desc
        self.progress = progress and self.world.main
        self.precision = resolve_precision(config.precision, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision.name == "fp16" else None
        if config.batch_size % (self.world.size * config.accumulate):
            raise ValueError(f"batch_size {config.batch_size} does not split over {self.world.size} processes x "
                             f"{config.accumulate} micro-batches")
        self.sharded = self.world.size > 1 and config.distributed == "fsdp"
        if self.sharded and config.ema_decay > 0:
            raise ValueError("EMA with FSDP is not supported: use distributed=ddp, or ema_decay=0")
        self.objective = distributed.wrap(_Objective(self.model, loss_fn or model.loss), config.distributed,
                                          self.device)
        self.forward = self.objective
        self.optimizer = build_optimizer(model, config)  # after wrapping: FSDP replaces the parameters
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.logger = JsonlLogger(self.folder / "log.jsonl") if self.world.main else None
        self.board = _tensorboard(self.folder) if config.tensorboard and self.world.main else None
        self.flops_per_step: float | None = None
        self.tokens_per_sample = _tokens_per_sample(model)

    def _say(self, message: str) -> None:
        if self.world.main:
            print(f"[{self.desc}] {message}", file=sys.stderr, flush=True)

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg, model = self.config, self.model
        start = self._resume()
        self._say(f"precision {self.precision.name}: {self.precision.reason}")
        if self.world.size > 1:
            self._say(f"{cfg.distributed.upper()} over {self.world.size} processes, "
                      f"{cfg.batch_size // self.world.size} examples each per step")
        if cfg.compile:
            self._compile()
        info = {"precision": self.precision.name, "precision_reason": self.precision.reason,
                "parameters": sum(p.numel() for p in model.parameters()), "device": str(self.device),
                "threads": torch.get_num_threads(), "processes": self.world.size,
                "compiled": self.forward is not self.objective, "config": vars(cfg)}
        if self.world.main:
            write_json(self.folder / "train_info.json", info)
        model.train()
        sums: dict[str, Tensor] = {}
        count, last = 0, {}
        t_log = time.perf_counter()
        check_every = 1 if self.device.type == "cpu" else cfg.log_every
        bar = tqdm(total=cfg.steps, initial=start, desc=self.desc, disable=not self.progress,
                   mininterval=1.0, dynamic_ncols=True, file=sys.stderr)
        feed = self._feed(range(start, cfg.steps))
        with torch.autograd.set_detect_anomaly(cfg.detect_anomaly):
            for step in range(start, cfg.steps):
                out = self._step(step, feed)
                for k, v in out.items():
                    sums[k] = sums[k] + v if k in sums else v.float()
                count += 1
                bar.update(1)
                done = step + 1
                if done % check_every == 0 or done % cfg.ckpt_every == 0 or done == cfg.steps:
                    self._check_finite(step, out)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    elapsed = time.perf_counter() - t_log
                    last = {k: float(v) / count for k, v in sums.items()}  # the one read of the device
                    self._log(done, lr_at(step, cfg), elapsed / count, last)
                    bar.set_postfix({k: f"{last[k]:.4g}" for k in list(last)[:3]}, refresh=False)
                    sums, count, t_log = {}, 0, time.perf_counter()
                if done % cfg.ckpt_every == 0 or done == cfg.steps:
                    self._save(done)
        bar.close()
        if self.board is not None:
            self.board.close()
        if self.sharded:
            distributed.unshard(self.objective, model)  # a plain model again, whole on every rank
        if self.ema is not None:
            self.ema.copy_to(model)  # what the stage saves and samples with
        if self.world.main and self.flops_per_step:
            info.update(flops_per_step=self.flops_per_step)
            write_json(self.folder / "train_info.json", info)
        model.eval()
        return last

    def _step(self, step: int, feed: Iterator[dict[str, Any]]) -> dict[str, Tensor]:
        cfg = self.config
        torch.manual_seed(step_seed(cfg.seed, step))
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = _split(self._on_device(next(feed)), cfg.accumulate)  # a batch_fn runs here, after the seed
        stats: dict[str, Tensor] = {}
        counting = self.flops_per_step is None
        counter = FlopCounterMode(display=False) if counting else contextlib.nullcontext()
        with counter:
            for i, part in enumerate(micro):
                # DDP: reduce gradients once, after the last micro-batch
                sync = i == len(micro) - 1 or not hasattr(self.objective, "no_sync")
                with (contextlib.nullcontext() if sync else self.objective.no_sync()):
                    with self.precision.autocast(self.device.type):
                        # FLOPs are counted once, eagerly (the counter does not see inside compiled code)
                        out = (self.objective if counting else self.forward)(part)
                    loss = out["loss"] / len(micro)
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                for k, v in _scalars(out).items():
                    stats[k] = stats[k] + v / len(micro) if k in stats else v / len(micro)
        if counting:
            # FLOPs of this process's forward + backward, times the processes: the whole step
            self.flops_per_step = float(counter.get_total_flops()) * self.world.size
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step)
        return stats

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def _feed(self, steps: range) -> Iterator[dict[str, Any]]:
        """This process's rows of each step's batch, in step order."""
        if isinstance(self.batch_fn, StepBatches):
            if self.batch_fn.seed != self.config.seed:
                raise ValueError(f"StepBatches seeded {self.batch_fn.seed}, training seed {self.config.seed}")
            return self.batch_fn.ahead(steps, self.config.workers)
        fn = self.batch_fn
        return (distributed.shard(fn(step), self.world) for step in steps)  # lazily: after each step's seed

    def _check_finite(self, step: int, out: dict[str, Tensor]) -> None:
        loss = out["loss"]
        if not torch.isfinite(loss):
            terms = {k: float(v) for k, v in out.items() if k != "grad_norm"}
            raise NonFiniteLoss(f"[{self.desc}] non-finite loss at step {step}: {terms}; "
                                f"the last good checkpoint is kept in {self.folder / 'checkpoints'}")

    def _log(self, step: int, lr: float, sec_per_step: float, means: dict[str, float]) -> None:
        if self.logger is None:
            return
        cfg = self.config
        record = {"step": step, "lr": lr, "sec_per_step": sec_per_step,
                  "samples_per_s": cfg.batch_size / sec_per_step}
        if self.tokens_per_sample:
            record["tokens_per_s"] = cfg.batch_size * self.tokens_per_sample / sec_per_step
        if self.flops_per_step:
            record["flops_per_s"] = self.flops_per_step / sec_per_step
        record.update(means)
        self.logger.log(record)
        if self.board is not None:
            for k, v in record.items():
                if k != "step":
                    self.board.add_scalar(f"{self.desc}/{k}", v, step)

    def _compile(self) -> None:
        """torch.compile the objective; eager, with the reason, when it cannot be compiled here."""
        try:
            compiled = torch.compile(self.objective)
            probe = _split(self._on_device(next(self._feed(range(1)))), self.config.accumulate)[0]
            state, was_training = torch.get_rng_state(), self.model.training
            self.model.eval()  # leaves batch-norm statistics alone
            with torch.no_grad(), self.precision.autocast(self.device.type):
                compiled(probe)  # compiles now, so a missing compiler shows here and not mid-run
            self.model.train(was_training)
            torch.set_rng_state(state)
            self.forward = compiled
            self._say("torch.compile: compiled")
        except Exception as err:  # no C++ compiler, an unsupported op, ...: train eagerly
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            self._say(f"torch.compile unavailable here, training eagerly ({type(err).__name__}: {reason})")

    # -- checkpoints -----------------------------------------------------------------------
    def _save(self, step: int) -> None:
        model_state, optim_state = distributed.full_state(self.objective, self.optimizer, self.sharded)
        if self.world.main:
            tensors = dict(self.ema.state_dict()) if self.ema is not None else {}
            tensors.update(rng_tensors())
            extra = {"rng": rng_json(), "scaler": self.scaler.state_dict() if self.scaler is not None else None}
            save_checkpoint(self.folder / "checkpoints", step, _strip(model_state, "model."), optim_state,
                            extra=extra, extra_tensors=tensors, keep=self.config.keep_checkpoints)
        distributed.barrier()

    def _resume(self) -> int:
        """Load the newest checkpoint that reads back and return its step (0 when there is none).

        A checkpoint with a truncated or corrupt file is passed over for the next older one of the
        `keep_checkpoints` kept: one warning line names the bad file, and its folder is renamed to
        `ckpt-<step>.corrupt` (kept for the user, never deleted nor pruned). Steps from the older
        checkpoint on are replayed exactly as an uninterrupted run would (the RNG states are in
        it), so the final weights do not change. When none reads back, nothing is renamed and a
        `CorruptFileError` names every bad file: starting again from step 0 unasked would throw
        away the progress the user asked to resume; moving the checkpoints folder aside does that.
        """
        folder = self.folder / "checkpoints"
        ckpts = list_checkpoints(folder)
        if not ckpts:
            return 0
        bad: list[tuple[Path, CorruptFileError]] = []
        for ckpt in reversed(ckpts):
            try:
                model_state, optim_state, tensors, state = read_checkpoint(ckpt)
                break
            except CorruptFileError as err:
                bad.append((ckpt, err))
        else:
            raise CorruptFileError(folder, f"[{self.desc}] no checkpoint in {folder} reads back ("
                                   + "; ".join(str(err) for _, err in bad) + "); nothing was changed. "
                                   f"To train this stage from step 0, move {folder} aside and run again")
        if bad:
            distributed.barrier()  # every process has read its checkpoint before the bad ones move
            if self.world.main:
                for path, err in bad:
                    aside = set_aside(path)
                    self._say(f"warning: {err}; kept as {aside.name}, resuming from {ckpt.name}")
        distributed.load_full_state(self.objective, self.optimizer, {f"model.{k}": v for k, v in model_state.items()},
                                    optim_state, self.sharded)
        if self.ema is not None:
            self.ema.load_state_dict(tensors)
        if self.scaler is not None and state["extra"].get("scaler"):
            self.scaler.load_state_dict(state["extra"]["scaler"])
        restore_rng(tensors, state["extra"].get("rng", {}))
        step = int(state["step"])
        if self.logger is not None:
            self.logger.truncate_after(step)
        self._say(f"resumed from {ckpt.name} (step {step})")
        return step


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _tokens_per_sample(model: nn.Module) -> int | None:
    grid = getattr(getattr(model, "config", None), "grid", None)
    return math.prod(grid) if grid else None


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an extra: JSONL alone is the log then
        return None
    return SummaryWriter(str(folder / "tensorboard"))
