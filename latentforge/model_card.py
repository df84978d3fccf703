"""A model card beside every saved model, so a folder can be shared as it is.

`save_pretrained` writes `README.md` next to `config.json` and `model.safetensors`, in the layout
the Hugging Face Hub reads: a YAML header (library, tags, pipeline) and then what the model is,
the data it was trained on, its training configuration, its metrics and how to load it. Every
fact comes from the folder itself (the config and the `extra` dict `save_pretrained` stores, the
tensor shapes in the safetensors header) or from the caller (`data`, `metrics`), so the card is
rewritten whenever more is known: the recipe's eval stage adds the run's metrics to the cards of
its tokenizer and generator.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from latentforge.atomic import write_text

CARD_NAME = "README.md"
CONFIG_NAME = "config.json"          # the names serialization.py writes (it imports this module)
WEIGHTS_NAME = "model.safetensors"


def pipeline_tag(kind: str, config: dict[str, Any], modality: str) -> str | None:
    """The Hub's pipeline tag for what the model does, where one of the Hub's tags fits it."""
    if modality != "image":
        return None
    if kind == "tokenizer":
        return "image-to-image"
    if kind == "generator":
        conditioner = (config.get("conditioner") or {}).get("name")
        return {None: "unconditional-image-generation", "caption": "text-to-image"}.get(conditioner)
    return None


def count_parameters(weights: str | os.PathLike) -> int | None:
    """Number of values in a safetensors file, read from its header alone (no tensor is loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception:  # a missing or broken file: the card says nothing rather than failing the save
        return None


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json.dumps(value) if not isinstance(value, str) else value
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def _summary(kind: str, name: str) -> str:
    """The first paragraph of the registered class's docstring (or its module's)."""
    try:
        from latentforge import registry

        cls = registry.lookup(kind, name)[1]
    except Exception:
        return ""
    import sys

    doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip()


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    """Flat table of numbers; nested groups become `group.key` rows, lists and texts are left out."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            rows.append((prefix, node))

    walk("", metrics)
    if not rows:
        return ["No metrics recorded."]
    return ["| metric | value |", "|---|---|", *[f"| {k} | {_number(v)} |" for k, v in rows]]


def render_model_card(meta: dict[str, Any], *, parameters: int | None = None, data: dict[str, Any] | None = None,
                      metrics: dict[str, Any] | None = None, folder_name: str = "path/to/this/folder") -> str:
    """The README.md text of a saved model whose `config.json` holds `meta` ({kind, name, config, extra})."""
    kind, name = meta.get("kind", "model"), meta.get("name", "model")
    config, extra = meta.get("config", {}), dict(meta.get("extra") or {})
    data = data or extra.pop("data", None)
    training = extra.pop("training", None)
    tags = ["latentforge", kind, name] + ([str(data["modality"])] if data and data.get("modality") else [])
    header = ["---", "library_name: latentforge", "tags:", *[f"- {t}" for t in dict.fromkeys(tags)]]
    tag = pipeline_tag(kind, config, (data or {}).get("modality", "image"))
    if tag:
        header.append(f"pipeline_tag: {tag}")
    header.append("---")

    lines = [*header, "", f"# {name} ({kind})", ""]
    summary = _summary(kind, name)
    lines += [f"A latentforge {kind} of type `{name}`" + (f", {parameters:,} parameters" if parameters else "") + "."]
    if summary:
        lines += ["", summary]

    lines += ["", "## Training data", ""]
    if data:
        lines += [f"- {k}: {_number(v)}" for k, v in data.items()]
    else:
        lines += ["Not recorded (saved outside a recipe run)."]

    lines += ["", "## Training configuration", ""]
    if training:
        lines += [f"- {k}: {_number(v)}" for k, v in training.items()]
    lines += [f"- {k}: {_number(v)}" for k, v in extra.items()]
    lines += ["", "Model config (`config.json`):", "", "```json", json.dumps(config, indent=2), "```"]

    lines += ["", "## Evaluation", ""]
    if metrics:
        lines += ["Metrics of the run this model was trained in (its `metrics.json`; see the latentforge README for "
                  "what each one measures):", ""]
    lines += _metrics_table(metrics) if metrics else ["Not evaluated yet (a recipe's eval stage adds its metrics here)."]

    lines += ["", "## How to load", "", "```python", "from latentforge import from_pretrained", "",
              f'model = from_pretrained("{folder_name}")  # config.json + model.safetensors, never pickle', "```"]
    if kind in ("tokenizer", "generator"):
        lines += ["", "A whole run (tokenizer + generator) samples from the command line:",
                  "`latentforge sample RUN_DIR --condition ...`; `latentforge serve RUN_DIR` opens the app."]
    lines += ["", "## Files", "", "- `config.json`: registry kind and name, the model config, training facts",
              "- `model.safetensors`: the weights", "- `README.md`: this card", ""]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, *, data: dict[str, Any] | None = None,
                     metrics: dict[str, Any] | None = None) -> Path:
    """(Re)write `folder/README.md` from the folder's config.json and weights, plus `data` and `metrics`."""
    folder = Path(folder)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    text = render_model_card(meta, parameters=count_parameters(folder / WEIGHTS_NAME), data=data, metrics=metrics,
                             folder_name=folder.name if folder.name else str(folder))
    write_text(folder / CARD_NAME, text)
    return folder / CARD_NAME
