"""LoRA: low-rank adapters on a trained network's linear layers (Hu et al. 2021), mergeable.

Legend: I input width, O output width, r rank, s = alpha / r.

A frozen linear map W [O, I] gets a trainable update of rank r:
    y = W x + b + s * B (A x)          A [r, I] random (Kaiming), B [O, r] zeros
so an adapted network starts as exactly the trained one, and fine-tuning moves only r (I + O)
numbers per layer. `merge_lora` folds s * B A into W and gives back plain `nn.Linear`s: the
merged network is as fast as the original and saves with no trace of the adapter. P22 fine-tunes
its masked video generator for sketch-guided inpainting this way.

    adapted = add_lora(generator, rank=8, targets=("qkv", "proj"))   # freezes everything else
    ... train the parameters that require grad ...
    merge_lora(generator)                                             # back to nn.Linear
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a rank-r update. [..., I] -> [..., O]."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scale = (alpha if alpha is not None else rank) / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init; B = 0 keeps the output

    def delta(self) -> Tensor:
        """The update s * B A [O, I] that merging adds to the weight."""
        return self.scale * self.lora_b @ self.lora_a

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype))

    def merged(self) -> nn.Linear:
        """A plain linear layer computing what this one computes."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta().to(self.base.weight.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _matches(name: str, targets: Sequence[str]) -> bool:
    """A module path matches a target when it ends with it at a dot ("blocks.0.attn.qkv" matches
    "qkv" and "attn.qkv", not "kv")."""
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model: nn.Module, rank: int, targets: Sequence[str], alpha: float | None = None,
             train: Sequence[str] = ()) -> list[str]:
    """Freeze `model` and wrap each `nn.Linear` whose name ends in one of `targets` in a LoRALinear;
    parameters whose names start with one of `train` stay trainable as well (a new input layer, say).
    Returns the wrapped layers' names; an error when none matched."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and _matches(name, targets):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, LoRALinear(module, rank, alpha))
            wrapped.append(name)
    if not wrapped:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no linear layer named {list(targets)}; the model's linear layers end in {linear}")
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in train):
            p.requires_grad_(True)
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRALinear in `model` by its merged nn.Linear; returns how many were merged.
    The merged layers' parameters require grad again, as a fresh model's do."""
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.merged())
            merged += 1
    for p in model.parameters():
        p.requires_grad_(True)
    return merged
