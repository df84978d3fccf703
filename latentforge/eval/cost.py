"""What a model costs: parameters, FLOPs, peak tensor memory and wall-clock, measured the same way
for every technique of the efficiency table (benchmarks/efficiency.py).

- FLOPs: torch's `FlopCounterMode` (matmuls, convolutions and attention, the CPU SDPA kernel included;
  elementwise ops are not counted);
- peak memory: the peak of live bytes over the storages that ops produce while the function runs
  (counted at the dispatcher, so it is the same on every allocator and device; the inputs and
  parameters are not counted, a fused kernel's private scratch is not seen);
- time: `eval.speed.median_time` (median after warm-up: a shared machine's outliers are one-sided).

A `CostRow` is one line of the table: a technique (or the plain model) on a task, its cost and its
quality, with the plain model's quality from the same run beside it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from latentforge.eval.speed import median_time


class PeakTensorBytes(TorchDispatchMode):
    """Peak of live bytes over the storages that ops produce inside the mode (inputs not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.seen = 0, 0, set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.seen:  # views share their base's storage
                    self.seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak live bytes of the tensors `fn()` creates."""
    with PeakTensorBytes() as probe:
        fn()
    return probe.peak


# torch's table has no formula for the CPU flash kernel SDPA runs here (torch 2.13), so attention
# would count zero: give it the formula torch uses for the other SDPA kernels (QK^T and AV; a causal
# mask is not discounted)
def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn()` (matmul-like ops; a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_SDPA)
    with counter:
        fn()
    return int(counter.get_total_flops())


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of a module (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for p in module.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


@dataclasses.dataclass
class CostRow:
    """One technique on one task. `quality` is the task's metric (`metric` names it, `higher_is_better`
    says which way is good); `plain_quality` is the plain model's, measured in the same run.
    Times are medians in seconds: one training step, and one inference call (`infer_what` says
    which: a batch of samples, one encoder forward ...). `flops` counts one inference call."""

    task: str
    technique: str
    paper: str
    params: int
    flops: int
    peak_bytes: int
    train_step_s: float | None
    infer_s: float
    infer_what: str
    metric: str
    quality: float
    plain_quality: float
    higher_is_better: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inference_cost(fn: Callable[[], Any], repeats: int = 3) -> dict[str, float]:
    """FLOPs, peak tensor bytes and median seconds of an inference call `fn()` (run under no_grad
    by the caller when it should be)."""
    return {"flops": count_flops(fn), "peak_bytes": peak_bytes(fn),
            "infer_s": median_time(fn, warmup=1, repeats=repeats)["median_s"]}
