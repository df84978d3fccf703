"""Training checkpoints: model + optimizer tensors in safetensors, the rest in JSON.

A checkpoint is a folder `ckpt-<step>/` written under a temporary name and renamed into place,
so a run killed mid-save keeps its previous checkpoint intact. The last `keep` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentforge.atomic import write_json
from latentforge.serialization import load_state_dict, save_state_dict

_NAME = re.compile(r"^ckpt-(\d+)$")


def save_checkpoint(folder: str | os.PathLike, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, extra: dict[str, Any] | None = None,
                    keep: int = 2) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=folder))
    try:
        save_state_dict(model.state_dict(), tmp / "model.safetensors")
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        save_state_dict(tensors, tmp / "optimizer.safetensors")
        write_json(tmp / "state.json", {"step": step, "optimizer": meta, "extra": extra or {}})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Restore model (and optimizer) in place; return the JSON state (step, extra)."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_state_dict(path / "model.safetensors"))
    if optimizer is not None:
        tensors = load_state_dict(path / "optimizer.safetensors")
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    return state


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, param_state in sd["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
