"""Training checkpoints: model, optimizer, EMA and RNG tensors in safetensors, the rest in JSON.

A checkpoint is a folder `ckpt-<step>/` written under a temporary name and renamed into place,
so a run killed mid-save keeps its previous checkpoint intact. The last `keep` are kept.
A checkpoint that does not read back (a file truncated or overwritten later) raises
`CorruptFileError` naming the file; `set_aside` renames its folder so it is kept but no longer
listed nor pruned (the trainer then resumes from an older one).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentforge.atomic import write_json
from latentforge.serialization import (
    CorruptFileError,
    load_state_dict,
    read_json,
    save_state_dict,
)

_NAME = re.compile(r"^ckpt-(\d+)$")


def save_checkpoint(folder: str | os.PathLike, step: int, model_state: dict[str, torch.Tensor],
                    optimizer_state: dict, extra: dict[str, Any] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None, keep: int = 2) -> Path:
    """Write `ckpt-<step>/`: model.safetensors, optimizer.safetensors, extra.safetensors (EMA,
    RNG states) and state.json (step, optimizer scalars, `extra`), then keep the last `keep`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=folder))
    try:
        save_state_dict(model_state, tmp / "model.safetensors")
        tensors, meta = _flatten_optimizer(optimizer_state)
        save_state_dict(tensors, tmp / "optimizer.safetensors")
        save_state_dict(extra_tensors or {}, tmp / "extra.safetensors")
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


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict, dict]:
    """(model state, optimizer state, extra tensors, the JSON state) of a checkpoint folder.

    Raises `CorruptFileError` naming the file when one is missing, truncated or corrupt.
    """
    path = Path(path)
    for name in ("state.json", "model.safetensors", "optimizer.safetensors"):
        if not (path / name).is_file():
            raise CorruptFileError(path / name, f"incomplete checkpoint {path}: {name} is missing")
    state = read_json(path / "state.json")
    if not _is_state(state):
        raise CorruptFileError(path / "state.json", f"corrupt checkpoint state {path / 'state.json'}: "
                                                    f"not the step, optimizer and extra a checkpoint records")
    model = load_state_dict(path / "model.safetensors")
    optimizer = _unflatten_optimizer(load_state_dict(path / "optimizer.safetensors"), state["optimizer"])
    extra = load_state_dict(path / "extra.safetensors") if (path / "extra.safetensors").is_file() else {}
    return model, optimizer, extra, state


def _is_state(state: Any) -> bool:
    """Whether `state` has what save_checkpoint writes to state.json."""
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return False
    optim, extra = state.get("optimizer"), state.get("extra")
    return isinstance(optim, dict) and {"param_groups", "scalars"} <= optim.keys() and isinstance(extra, dict)


def set_aside(path: str | os.PathLike) -> Path:
    """Rename checkpoint folder `ckpt-<step>` to `ckpt-<step>.corrupt` (`.corrupt-2`, ... if taken):
    kept for the user, but no longer listed, resumed from, nor pruned."""
    path = Path(path)
    aside, n = path.with_name(f"{path.name}.corrupt"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{n}")
    path.rename(aside)
    return aside


# Every random number generator a batch function or a model might draw from. Each step reseeds
# torch from (seed, step), but a data pipeline may keep NumPy's or Python's generator running.
def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def rng_json() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, inner, gauss = random.getstate()
    return {"numpy": [kind, keys.tolist(), pos, has_gauss, cached], "python": [version, list(inner), gauss]}


def restore_rng(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in saved:
        kind, keys, pos, has_gauss, cached = saved["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "python" in saved:
        version, inner, gauss = saved["python"]
        random.setstate((version, tuple(inner), gauss))


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
    # parameters are keyed by index (a plain optimizer) or by name (torch.distributed's
    # state-dict helpers); JSON made both strings
    def key_of(idx: str) -> int | str:
        return int(idx) if idx.isdigit() else idx

    state: dict[int | str, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.rsplit("/", 1)
        state.setdefault(key_of(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(key_of(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
