"""Feature networks a data set trains for itself once and keeps: the cache both probe-FAD (audio,
a MERT student) and probe-FPD (points, a Point-MAE encoder) use.

A probe is keyed by everything in the data config that changes the examples (not the split sizes
or the seed: a --quick run's few examples must not decide every later run's features), its kind and
its training steps; it lives in `<cache>/probes/<kind>-<data>-<hash>/` as config.json +
model.safetensors (atomic writes), and its weights' hash travels with every number measured on it.

    folder = cached_probe(dataset, "audio-mert", {"steps": 600}, train, Mert)   # train() -> (model, info), once
    extractor = probe_extractor(folder, "mert-probe", device)     # a FeatureExtractor
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from latentforge.eval.features import FeatureExtractor
from latentforge.eval.probe import cache_root, file_hash, probe_info
from latentforge.serialization import CONFIG_NAME, WEIGHTS_NAME, from_pretrained, save_pretrained

VERSION = 1
_NOT_CONTENT = ("train_size", "val_size", "seed")


def probe_folder(dataset: Any, kind: str, settings: dict) -> tuple[str, Path]:
    """(the probe's cache key, its folder) for this data set's content, kind and training settings."""
    from latentforge.config import to_dict

    content = {k: v for k, v in to_dict(dataset.config).items() if k not in _NOT_CONTENT}
    key = json.dumps({"data": content, "kind": kind, **settings, "version": VERSION}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return key, cache_root() / "probes" / f"{kind}-{dataset.config.name}-{digest}"


def cached_probe(dataset: Any, kind: str, settings: dict, train: Callable[[], tuple[nn.Module, dict]],
                 model_type: type, progress: bool = True, what: str = "") -> Path:
    """The folder of this data set's probe of `kind` trained with `settings` (steps, examples: part of
    the key), trained by `train()` and saved the first time."""
    key, folder = probe_folder(dataset, kind, settings)
    if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        return folder
    if progress:
        print(f"training {what or kind} ({', '.join(f'{k} {v}' for k, v in settings.items())}; once, cached in "
              f"{folder})", file=sys.stderr, flush=True)
    model, info = train()
    if not isinstance(model, model_type):
        raise TypeError(f"{kind}: training gave a {type(model).__name__}, not a {model_type.__name__}")
    save_pretrained(model, folder, extra={"cache_key": key, **settings, **info})
    return folder


def probe_extractor(folder: Path, name: str, model_type: type, device: Any = "cpu",
                    info: dict | None = None) -> FeatureExtractor:
    """The probe saved in `folder` as a FeatureExtractor (its `features` method, the weights' hash)."""
    model = from_pretrained(folder, device)
    if not isinstance(model, model_type):
        raise TypeError(f"{folder} holds a {type(model).__name__}, not a {model_type.__name__}: delete the folder")
    model.eval()
    saved = probe_info(folder)
    return FeatureExtractor(name, str(folder), file_hash(folder / WEIGHTS_NAME), model.features,
                            {"dim": model.config.feature_dim, "steps": saved.get("steps"), **(info or {})})
