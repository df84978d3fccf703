"""Name -> (config class, model class) tables, one per kind of model.

A recipe picks a data set, tokenizer, generator, conditioner or quantizer by `name`; a saved model records the
name in its `config.json` so `from_pretrained` can rebuild it. Each model file registers
itself with the decorator below, so adding a model is adding a file.
"""

from __future__ import annotations

from typing import Callable, TypeVar

KINDS = ("tokenizer", "generator", "conditioner", "quantizer", "dataset", "probe")
_TABLES: dict[str, dict[str, tuple[type, type]]] = {kind: {} for kind in KINDS}

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


def lookup(kind: str, name: str) -> tuple[type, type]:
    _import_all()
    table = _TABLES[kind]
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; available: {', '.join(sorted(table)) or 'none'}")
    return table[name]


def names(kind: str) -> list[str]:
    _import_all()
    return sorted(_TABLES[kind])


def _import_all() -> None:
    # Importing the packages runs their @register decorators.
    import latentforge.conditioning  # noqa: F401
    import latentforge.data  # noqa: F401
    import latentforge.eval.probe  # noqa: F401
    import latentforge.generators  # noqa: F401
    import latentforge.quantize  # noqa: F401
    import latentforge.tokenizers  # noqa: F401
