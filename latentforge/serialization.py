"""A saved model is a folder: `config.json` + `model.safetensors`. Never pickle.

`config.json` records the registry kind and name and the model's config dataclass, so
`from_pretrained(path)` rebuilds the same module and loads its weights. A file that cannot be
read back (truncated, overwritten, not JSON) raises `CorruptFileError` naming it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from latentforge.atomic import atomic_path, write_json
from latentforge.config import from_dict, to_dict
from latentforge.model_card import CONFIG_NAME, WEIGHTS_NAME, write_model_card


class CorruptFileError(ValueError):
    """A saved file exists but cannot be read back: truncated, overwritten or not the format its
    name says. The message names the file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        super().__init__(message)
        self.path = Path(path)

    def __reduce__(self):  # pickles (across processes) with its path
        return type(self), (self.path, self.args[0])


def save_pretrained(model: nn.Module, path: str | os.PathLike, extra: dict | None = None,
                    data: dict | None = None) -> Path:
    """Write `model` (a registered module with a `.config`) to folder `path`: config.json,
    model.safetensors and a model card, README.md (`data`: what it was trained on, for the card)."""
    path = Path(path)
    kind = getattr(model, "registry_kind", None)
    if kind is None or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} is not a registered model with a .config")
    if any(getattr(m, "inference_only", False) for m in model.modules()):
        # its config would rebuild the fp32 model, which the int8 tensors do not fit
        raise TypeError(f"{type(model).__name__} holds inference-only layers (int8-quantized): save the fp32 "
                        "model and quantize after loading (latentforge.inference.quantize_int8)")
    path.mkdir(parents=True, exist_ok=True)
    save_state_dict(model.state_dict(), path / WEIGHTS_NAME)
    meta = {"kind": kind, "name": model.registry_name, "config": to_dict(model.config)}
    if extra:
        meta["extra"] = extra
    write_json(path / CONFIG_NAME, meta)
    write_model_card(path, data=data)
    return path


def from_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved with `save_pretrained` (weights and config) in eval mode."""
    from latentforge import registry

    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} is not a saved model: {CONFIG_NAME} is missing")
    meta = read_json(cfg_file)
    if not isinstance(meta, dict):
        raise CorruptFileError(cfg_file, f"{cfg_file}: not a saved model's config "
                                         f"(a JSON {type(meta).__name__}, not an object)")
    for key in ("kind", "name", "config"):
        if key not in meta:
            raise CorruptFileError(cfg_file, f"{cfg_file}: missing key {key!r}")
    config_cls, model_cls = registry.lookup(meta["kind"], meta["name"])
    model = model_cls(from_dict(config_cls, meta["config"], path=str(cfg_file)))
    state = load_state_dict(path / WEIGHTS_NAME, map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_NAME}: weights do not fit the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(map_location).eval()


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Atomic safetensors write; tensors that share storage are cloned (safetensors forbids it)."""
    owners = Counter(v.untyped_storage().data_ptr() for v in state.values())
    tensors = {k: v.detach().clone() if owners[v.untyped_storage().data_ptr()] > 1 else v.detach().contiguous()
               for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; `CorruptFileError` when the file is truncated or not safetensors."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device=str(map_location))
    except SafetensorError as err:
        # safetensors says what is wrong ("incomplete metadata, file not fully covered") but not where
        raise CorruptFileError(path, f"truncated or corrupt safetensors file {path}: {err}") from None


class PickleRefusedError(ValueError):
    """A weights file that only loads by unpickling arbitrary Python objects: refused, never run."""


def read_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A peer's weights file -> {name: tensor}, without running pickled code.

    `.safetensors` is read with safetensors; anything else (`.pt`, `.pth`, `.bin`, `.ckpt`) with
    `torch.load(weights_only=True)`, which reads tensors, numbers and strings but no objects. The
    usual wrappers are opened: {"state_dict": ...} (Lightning, LDM), {"model": ...} (LlamaGen, DiT
    training checkpoints), {"ema": ...} when it is the only state dict, and DataParallel's "module."
    prefix. A file that needs pickle raises `PickleRefusedError` saying how to convert it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_state_dict(path, map_location)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "pickle" in text.lower():
            raise PickleRefusedError(
                f"{path}: this file stores Python objects that only load by unpickling, which can run arbitrary "
                "code, so latentforge refuses it. If you trust the file, convert it once in a separate Python:\n"
                "    import torch; from safetensors.torch import save_file\n"
                f"    sd = torch.load({str(path)!r}, map_location='cpu', weights_only=False)\n"
                "    sd = sd.get('state_dict', sd.get('model', sd))\n"
                f"    save_file({{k: v.contiguous() for k, v in sd.items()}}, {str(path.with_suffix('.safetensors'))!r})\n"
                f"and give that .safetensors file instead. ({text.splitlines()[0][:200]})") from None
        raise CorruptFileError(path, f"{path}: not a torch weights file ({text.splitlines()[0][:200]})") from None
    for key in ("state_dict", "model", "ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not any(
                isinstance(v, torch.Tensor) for v in state.values()):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kinds = sorted({type(v).__name__ for v in state.values()}) if isinstance(state, dict) else [type(state).__name__]
        raise CorruptFileError(path, f"{path}: expected a state dict of tensors, found {', '.join(kinds) or 'nothing'}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; `CorruptFileError` naming the file when it is not valid JSON text."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"truncated or corrupt JSON file {path}: {err}") from None

