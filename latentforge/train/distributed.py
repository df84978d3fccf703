"""Data-parallel training through PyTorch's own engine: DDP, or FSDP (`fully_shard`) as an option.

    torchrun --nproc_per_node 2 -m latentforge.cli train configs/shapes_sg2im.yaml

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init_from_env` starts the process group (nccl on
GPUs, gloo on CPUs) and every rank runs the same Trainer. The sampler is the step itself: each
rank builds the step's global batch from the same seed and keeps its own contiguous slice of
rows (`shard`), so N ranks see exactly the examples one process would, and DDP's gradient
average over equal slices is the gradient of the global batch. Rank 0 alone logs and writes
checkpoints; every rank reads them on resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return current()


def current() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if current().size > 1:
        dist.barrier()


def shard(batch: dict[str, Tensor], world: World) -> dict[str, Tensor]:
    """This rank's contiguous slice of every tensor's rows (the batch must split evenly)."""
    if world.size == 1:
        return batch
    out = {}
    for k, v in batch.items():
        if not isinstance(v, Tensor):
            out[k] = v
            continue
        if len(v) % world.size:
            raise ValueError(f"batch entry {k!r} has {len(v)} rows, not divisible by {world.size} processes; "
                             f"choose a batch_size that is")
        per = len(v) // world.size
        out[k] = v[world.rank * per:(world.rank + 1) * per]
    return out


def wrap(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """DDP (default) or FSDP around `module` when there is more than one process."""
    if current().size == 1:
        return module
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # some models leave parameters out of a step (condition dropout, optional heads)
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        return fully_shard(module)
    raise ValueError(f"distributed must be ddp or fsdp, got {mode!r}")


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> tuple[dict, dict]:
    """Model and optimizer state dicts as one process would hold them (FSDP gathers its shards;
    a collective, so every rank calls it). Optimizer states are keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=sharded, cpu_offload=sharded)
    return get_state_dict(model, optimizer, options=options)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict,
                    sharded: bool) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=sharded, broadcast_from_rank0=False)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options)


def unshard(wrapped: nn.Module, model: nn.Module, prefix: str = "model.") -> None:
    """After FSDP training: gather every parameter (a collective) and put it back into `model`
    as a plain tensor, so the model can be saved and sampled like any other."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True))
    for name, value in full.items():
        name = name.removeprefix(prefix)
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            old = module._parameters[leaf]
            setattr(module, leaf, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
