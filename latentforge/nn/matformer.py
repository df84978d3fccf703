"""MatFormer (P25): nested FFNs, so one set of weights holds a family of smaller transformers.

An MLP built with `nested` fractions (e.g. (0.25, 0.5, 1.0)) of its h hidden units contains a
submodel per fraction f: the first m = round(f h) hidden units, i.e. `fc.weight[:m]`, `fc.bias[:m]`
and `proj.weight[:, :m]`, with the whole `proj.bias`. Attention, embeddings and norms are shared by
every submodel. The mechanics of one MLP live in `nn.transformer.MLP` (its `width`); this file holds
what acts on a whole model:

    set_widths(model, 0.5)                   every nested MLP at half width
    set_widths(model, [1.0, 0.5, 0.5, 0.25]) one width per layer, in module order (Mix'n'Match)
    with use_widths(model, 0.25): ...        the same, restored on exit
    for f in each_width(model): loss(...)    training: every granularity on the same batch
    extract(model)                           a copy whose nested MLPs are plain MLPs of their widths

Training (from the official MatFormer-OLMo step): forward + backward once per granularity on the
same batch, gradients summed, one optimizer step. Mix'n'Match picks a trained granularity per layer
at inference; the paper finds that widths changing slowly across layers work best.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

Widths = float | Sequence[float]


def nested_units(hidden: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Hidden units of each nested fraction: ascending, distinct, the last one the whole layer.
    () for a plain (not nested) MLP."""
    if not fractions:
        return ()
    fractions = tuple(float(f) for f in fractions)
    if list(fractions) != sorted(set(fractions)) or fractions[0] <= 0 or fractions[-1] != 1.0:
        raise ValueError(f"nested widths must be increasing fractions in (0, 1] ending with 1.0, got {fractions}")
    units = tuple(round(f * hidden) for f in fractions)
    if units[0] < 1 or len(set(units)) != len(units):
        raise ValueError(f"nested widths {fractions} of {hidden} hidden units give {units}: "
                         "each must keep at least one unit and differ from the others")
    return units


def nested_mlps(model: nn.Module) -> list[nn.Module]:
    """The nested MLPs of a model, in module order (a transformer's: one per block, first to last)."""
    return [m for m in model.modules() if getattr(m, "units", ())]


def _mlps_or_error(model: nn.Module) -> list[nn.Module]:
    mlps = nested_mlps(model)
    if not mlps:
        raise ValueError(f"{type(model).__name__} has no nested MLP: build it with nested_widths")
    return mlps


def get_widths(model: nn.Module) -> list[float]:
    """The fraction each nested MLP runs at now, in module order."""
    return [m.nested[m.units.index(m.width)] for m in _mlps_or_error(model)]


def set_widths(model: nn.Module, widths: Widths) -> None:
    """Run every nested MLP at a trained fraction: one for all, or one per MLP in module order."""
    mlps = _mlps_or_error(model)
    per_layer = [widths] * len(mlps) if isinstance(widths, (int, float)) else list(widths)
    if len(per_layer) != len(mlps):
        raise ValueError(f"{len(per_layer)} widths for {len(mlps)} nested MLPs: give one, or one per layer")
    for mlp, f in zip(mlps, per_layer):
        if float(f) not in mlp.nested:
            raise ValueError(f"width {f} is not one of the nested widths {mlp.nested} this model was trained at")
        mlp.width = mlp.units[mlp.nested.index(float(f))]


@contextmanager
def use_widths(model: nn.Module, widths: Widths) -> Iterator[None]:
    """`set_widths` for the duration of a block; the widths before it come back afterwards."""
    before = get_widths(model)
    set_widths(model, widths)
    try:
        yield
    finally:
        set_widths(model, before)


def each_width(model: nn.Module) -> Iterator[float]:
    """Every trained granularity in turn, smallest first, all layers at it (MatFormer's training
    step runs the same batch at each and sums the losses)."""
    for f in _mlps_or_error(model)[0].nested:
        with use_widths(model, f):
            yield f


def slice_mlp(mlp: nn.Module) -> nn.Module:
    """A plain MLP of `mlp`'s current width holding copies of the weights that width uses."""
    m = mlp.width
    plain = type(mlp)(mlp.fc.in_features, m).to(mlp.fc.weight.device, mlp.fc.weight.dtype)
    with torch.no_grad():
        plain.fc.weight.copy_(mlp.fc.weight[:m])
        plain.fc.bias.copy_(mlp.fc.bias[:m])
        plain.proj.weight.copy_(mlp.proj.weight[:, :m])
        plain.proj.bias.copy_(mlp.proj.bias)
    return plain


def extract(model: nn.Module) -> nn.Module:
    """A standalone copy of `model` at its current widths: every nested MLP becomes a plain MLP of
    its width (Mix'n'Match included), so the copy computes what `model` computes now, with fewer
    parameters. The model itself is left as it is."""
    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in parent.named_children():
            if getattr(child, "units", ()):
                setattr(parent, name, slice_mlp(child))
    return out
