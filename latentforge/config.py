"""Typed dataclass configs: build from YAML/JSON dicts, apply dotted overrides, check everything.

Every config in the library is a plain `@dataclass`. `from_dict(cls, d)` builds one from a
nested dict and stops on the first problem with a message that names the dotted key and lists
what is valid there. A field whose type is a `ModelConfig` subclass is polymorphic: its `name`
key picks the concrete config class from the registry (e.g. `tokenizer.name: conv`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it."""


@dataclasses.dataclass
class ModelConfig:
    """Base of every model config. `kind` is set on the subclasses that name a registry."""

    name: str = ""
    kind = ""  # class attribute: "tokenizer", "generator" or "conditioner"


T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from `data`, validating keys and types recursively."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    cls = _resolve_registered(cls, data, path)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = _join(path, unknown[0])
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, dict) and "name" not in value:
            value = _with_default_name(fields[name], value)
        kwargs[name] = _coerce(hints[name], value, _join(path, name))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path or 'config'}: {err}") from err


# Field metadata for an option added after runs were first fingerprinted: at its default it is left
# out of `identity`, so those runs still match (and go on resuming) after an upgrade.
#     simvq: bool = field(default=False, metadata=ADDED_LATER)
ADDED_LATER = {"added_later": True}


def identity(cfg: Any) -> Any:
    """`to_dict` without the ADDED_LATER fields that hold their default: what a run's fingerprint reads."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: identity(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not (f.metadata.get("added_later") and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, (list, tuple)):
        return [identity(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: identity(v) for k, v in cfg.items()}
    return cfg


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain dict/list/scalar tree (tuples become lists), for YAML and JSON."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
        return out
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `data` with `a.b.c=value` overrides set (values parsed as YAML).

    Overriding a section's `name` with a different one (`tokenizer.quantizer.name=fsq`) starts
    that section afresh from the new model's defaults: the file's other keys there belong to the
    old model. Name overrides apply first, so the section's other overrides land on the new one.
    """
    import copy

    data = copy.deepcopy(data)
    items = list(overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides))
    items.sort(key=lambda kv: not kv[0].split(".")[-1] == "name")  # stable: names first
    for key, value in items:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is a value, not a section")
            node = child
        if parts[-1] == "name" and len(parts) > 1 and node.get("name", value) != value:
            node.clear()
        node[parts[-1]] = value
    return data


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _resolve_registered(cls: type, data: dict[str, Any], path: str) -> type:
    """For a ModelConfig base with a registry kind, pick the concrete subclass by `name`."""
    if not (isinstance(cls, type) and issubclass(cls, ModelConfig) and cls.kind):
        return cls
    from latentforge import registry

    name = data.get("name") or _default_name(cls)
    try:
        concrete, _ = registry.lookup(cls.kind, name)
    except KeyError as err:
        raise ConfigError(f"{_join(path, 'name')}: {err.args[0]}") from None
    return concrete


def _with_default_name(f: dataclasses.Field, value: dict[str, Any]) -> dict[str, Any]:
    """A polymorphic section without `name` keeps the kind of model its field defaults to."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(default, ModelConfig) and default.name:
        return {"name": default.name, **value}
    return value


def _default_name(cls: type) -> str:
    field = {f.name: f for f in dataclasses.fields(cls)}["name"]
    return field.default if field.default is not dataclasses.MISSING else ""


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against annotation `tp`; convert where lossless (int->float, list->tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML reads 1e-3 as a string; accept it
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported config type {_describe(tp)}")
