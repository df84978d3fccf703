"""Training batches drawn from stored arrays, step by step, for `Trainer`.

Step k's rows are `torch.randint(n, (batch_size,))` under a generator seeded with
`step_seed(seed, k)`: a function of (seed, k) alone, so a resumed run, a run whose batches are
read ahead by DataLoader workers and one read in the training process see the same data. Under
torchrun each process keeps its contiguous slice of the step's indices (the rows
`distributed.shard` would keep) and reads only those rows: with memory-mapped splits
(`data.store`) no process reads an example it does not train on, and no split is read whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from latentforge.train import distributed


def step_seed(seed: int, step: int) -> int:
    """The seed of everything random in training step `step` (the batch and the model's noise)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def _as_tensors(rows: dict[str, Any]) -> dict[str, Tensor]:
    return {k: v if isinstance(v, Tensor) else torch.from_numpy(np.ascontiguousarray(v)) for k, v in rows.items()}


class StepBatches(Dataset):
    """Item k: this process's rows of training step k's batch, as tensors.

    Args:
        arrays: entry -> rows (NumPy arrays, memory-mapped or not, or tensors), all of one length.
        batch_size: the global batch (split evenly over the processes).
        seed: the training seed (TrainConfig.seed): with it, step k's rows are those above.
        convert: the rows of one step (dict of arrays) -> the batch (dict of tensors); the default
            turns each array into a tensor.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray | Tensor], batch_size: int, seed: int,
                 convert: Callable[[dict[str, Any]], dict[str, Tensor]] = _as_tensors) -> None:
        lengths = {k: len(v) for k, v in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError(f"StepBatches needs non-empty entries of one length, got {lengths}")
        self.arrays, self.batch_size, self.seed, self.convert = dict(arrays), batch_size, seed, convert
        self.rows = next(iter(lengths.values()))
        self.world = distributed.current()
        if batch_size % self.world.size:
            raise ValueError(f"batch_size {batch_size} does not split over {self.world.size} processes")

    def indices(self, step: int) -> Tensor:
        """This process's row indices [batch_size / processes] of step `step`."""
        g = torch.Generator().manual_seed(step_seed(self.seed, step))
        idx = torch.randint(self.rows, (self.batch_size,), generator=g)
        per = self.batch_size // self.world.size
        return idx[self.world.rank * per:(self.world.rank + 1) * per]

    def __getitem__(self, step: int) -> dict[str, Tensor]:
        idx = self.indices(step)
        picked = {k: v[idx] if isinstance(v, Tensor) else v[idx.numpy()] for k, v in self.arrays.items()}
        return self.convert(picked)

    def ahead(self, steps: range, workers: int) -> Iterator[dict[str, Tensor]]:
        """The batches of `steps` in order; `workers` > 0 processes read and convert them ahead of
        the training loop (two batches each), 0 reads each when asked."""
        if workers == 0:
            return (self[k] for k in steps)
        return iter(DataLoader(self, batch_size=None, sampler=steps, num_workers=workers, prefetch_factor=2))
