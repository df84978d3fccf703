"""Name -> (config class, model class) tables, one per kind of model.

A recipe picks a data set, tokenizer, generator, conditioner, quantizer or probe by `name`; a
saved model records the name in its `config.json` so `from_pretrained` can rebuild it. Each
model file registers itself with the decorator below.

The registry imports nothing of the library itself: `MODULES` lists, per kind, the modules whose
`@register` decorators fill that kind's table, and a lookup imports that kind's modules by name
on first use. So parsing a config loads only the kinds it names, and no room of the package
imports the registry while the registry imports it back. Adding a model is adding its file and
its line here (tests/test_registry.py fails on a registered file that is missing from the list).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

MODULES: dict[str, tuple[str, ...]] = {
    "quantizer": ("latentforge.quantize.vq", "latentforge.quantize.rvq", "latentforge.quantize.grouped_vq",
                  "latentforge.quantize.fsq", "latentforge.quantize.lfq", "latentforge.quantize.gumbel",
                  "latentforge.quantize.gaussian", "latentforge.quantize.topk",
                  "latentforge.quantize.multiscale"),
    "tokenizer": ("latentforge.tokenizers.conv", "latentforge.tokenizers.conv1d", "latentforge.tokenizers.vit",
                  "latentforge.tokenizers.causal3d", "latentforge.tokenizers.codec",
                  "latentforge.tokenizers.pointset", "latentforge.tokenizers.implicit",
                  "latentforge.tokenizers.rae", "latentforge.tokenizers.ldm"),
    "conditioner": ("latentforge.conditioning.class_label", "latentforge.conditioning.caption",
                    "latentforge.conditioning.scene_graph", "latentforge.conditioning.latents"),
    "generator": ("latentforge.generators.autoregressive", "latentforge.generators.axial",
                  "latentforge.generators.masked", "latentforge.generators.diffusion",
                  "latentforge.generators.mar", "latentforge.generators.hierarchical",
                  "latentforge.generators.next_scale"),
    "dataset": ("latentforge.data.sets", "latentforge.data.folder", "latentforge.data.motion",
                "latentforge.data.moving_mnist", "latentforge.data.moving_shapes", "latentforge.data.atari",
                "latentforge.data.notes", "latentforge.data.music",
                "latentforge.data.speech", "latentforge.data.audio_folder", "latentforge.data.primitives",
                "latentforge.data.meshes"),
    "probe": ("latentforge.eval.probe", "latentforge.eval.motion_probe", "latentforge.eval.video_probe",
              "latentforge.pretraining.mert", "latentforge.pretraining.point_mae"),
}
KINDS = tuple(MODULES)
_TABLES: dict[str, dict[str, tuple[type, type]]] = {kind: {} for kind in KINDS}
_LOADED: set[str] = set()

M = TypeVar("M", bound=type)


def register(kind: str, name: str, config_cls: type) -> Callable[[M], M]:
    """Class decorator: make `cls` buildable from `config_cls` under `kind`/`name`."""
    if kind not in _TABLES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")

    def wrap(cls: M) -> M:
        if name in _TABLES[kind]:
            raise ValueError(f"{kind} {name!r} is registered twice")
        _TABLES[kind][name] = (config_cls, cls)
        cls.registry_kind = kind
        cls.registry_name = name
        return cls

    return wrap


def _load(kind: str) -> dict[str, tuple[type, type]]:
    if kind not in _TABLES:
        raise KeyError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind not in _LOADED:
        for module in MODULES[kind]:
            importlib.import_module(module)
        _LOADED.add(kind)
    return _TABLES[kind]


def lookup(kind: str, name: str) -> tuple[type, type]:
    table = _load(kind)
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def names(kind: str) -> list[str]:
    return sorted(_load(kind))
