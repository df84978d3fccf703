"""Data sets as a recipe sees them: a config picked by `data.name`, and a `DataSet` that cuts splits.

A split is a dict of NumPy arrays with one row per example:
    examples  under the modality's key: `images` uint8 [N, H, W, 3], `motion` float32 [N, T, J, 3]
    numeric   condition entries for a conditioner (Shapes' obj_* / rel_* graph tensors, `label`)
    text      str [N] entries a person or a parser reads (Shapes' `graphs` JSON, `captions`)
The recipe stores the splits once (`runs/<name>/data/`), feeds the numeric entries to whatever
conditioner the generator has (it selects its keys), and asks the data set for what only it knows:
its modality (how its examples become tensors and previews), how to caption a sample, what a
sampler must not be told (Shapes' true object centres), which judge scores whether samples follow
their condition (`judge`, a name in `latentforge.eval.judges`), and how to read a condition a
user writes (`parse_conditions`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from latentforge.config import ModelConfig
from latentforge.modalities.base import Modality
from latentforge.modalities.image import ImageModality

SPLITS = ("train", "val")


@dataclass
class DataConfig(ModelConfig):
    kind = "dataset"
    size: int = 32                   # image side in pixels
    seed: int = 0


class DataSet:
    """Subclasses implement `split`; the rest has defaults for unlabelled image sets."""

    config: DataConfig
    judge: str | None = None                 # the judge of adherence (latentforge.eval.judges), if any
    natural_conditioner: str | None = None   # the conditioner its condition entries feed
    condition_keys: tuple[str, ...] = ()     # the numeric condition entries of a split
    condition_text = "unconditional samples"  # for the report: what a sample was drawn for
    caption_key: str | None = None           # the text entry of a split holding captions, if any
    class_names: tuple[str, ...] = ()        # the classes' names, for conditions a user writes
    probe_shift = 0                          # a probe's training shift, in pixels per 32 of image side
    run_dir = None                           # the run folder (set by the recipe): for caches
    progress = True                          # progress bars on long work (the recipe passes its own)

    def __init__(self, config: DataConfig) -> None:
        self.config = config

    def split(self, name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def split_pieces(self, name: str) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
        """A split's row count and the split in consecutive pieces of rows, for writing it without
        holding it whole (`data.store.write_split`). Data sets read from a source give it in one
        piece; `RowwiseDataSet`s in pieces of `chunk_rows`, made as they are consumed."""
        arrays = self.split(name)
        return len(self.examples(arrays)), iter([arrays])

    @property
    def modality(self) -> Modality:
        """How the examples are stored, fed to networks, previewed and scored: square RGB images
        of side `config.size` unless a subclass says otherwise."""
        return ImageModality(self.config.size)

    def examples(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The examples of a split (the modality's entry), or an error naming what is there."""
        key = self.modality.key
        if key not in arrays:
            raise KeyError(f"data {self.config.name!r}: a split without {key!r} (it has {', '.join(arrays)})")
        return arrays[key]

    def resized(self, **changes: Any) -> "DataSet":
        """The same data set with other config fields (a larger val split, say)."""
        other = build_dataset(dataclasses.replace(self.config, **changes))
        other.run_dir, other.progress = self.run_dir, self.progress
        return other

    def content_key(self) -> str:
        """What the config does not say about the data (a user folder's files); part of the data
        stage's fingerprint, so a changed folder is noticed. Generated data sets: empty."""
        return ""

    def numeric(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The condition entries: every array but the examples and the text."""
        return {k: v for k, v in arrays.items() if k != self.modality.key and v.dtype.kind not in "USO"}

    def conditions(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every entry but the examples: what a sampler may be given, and what a judge reads."""
        return {k: v for k, v in arrays.items() if k != self.modality.key}

    def parse_conditions(self, raw: Any, where: str) -> dict[str, np.ndarray]:
        """Conditions a user wrote (JSON: one or a list) -> split-like rows without the examples,
        as `for_sampling` gives them. `where` names the file in errors. This default reads class
        labels (`3`, `{"label": 3}`, `{"class": "walk"}` by `class_names`) and captions
        (`{"caption": "a 3"}`) for data sets that have them; Shapes reads scene graphs."""
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise ValueError(f"{where}: no conditions given")
        labels, texts = [], []
        for i, item in enumerate(items):
            item = {"label": item} if isinstance(item, int) and not isinstance(item, bool) else item
            if not isinstance(item, dict) or not item.keys() <= {"label", "class", "caption"} or not item:
                raise ValueError(f"{where}: condition {i}: expected a class label (an int, {{\"label\": k}} or "
                                 f"{{\"class\": name}}) or {{\"caption\": text}}, got {json.dumps(item)}")
            if "caption" in item:
                if self.caption_key is None:
                    raise ValueError(f"{where}: condition {i}: data {self.config.name!r} has no captions")
                texts.append(str(item["caption"]))
            if "label" in item or "class" in item:
                labels.append(self._label_of(item, f"{where}: condition {i}"))
        if labels and len(labels) != len(items) or texts and len(texts) != len(items):
            raise ValueError(f"{where}: give every condition the same entries (a label, a caption or both)")
        rows: dict[str, np.ndarray] = {}
        if labels:
            rows["label"] = np.array(labels, dtype=np.int64)
        if texts:
            rows[self.caption_key] = np.array(texts)
        return rows

    def _label_of(self, item: dict[str, Any], where: str) -> int:
        if "label" not in self.condition_keys:
            raise ValueError(f"{where}: data {self.config.name!r} has no class labels")
        if "class" in item:
            if item["class"] not in self.class_names:
                raise ValueError(f"{where}: unknown class {item['class']!r}; known: {', '.join(self.class_names)}")
            return self.class_names.index(item["class"])
        label = item["label"]
        count = self.num_classes()
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < count:
            raise ValueError(f"{where}: label {label!r} is not a class of data {self.config.name!r} (0..{count - 1})")
        return label

    def num_classes(self) -> int:
        """How many classes `label` takes (data sets with labels say)."""
        return len(self.class_names)

    def link_conditioner(self, cfg: Any) -> Any:
        """Set the conditioner fields that follow from the data (object slots, classes)."""
        return cfg

    def for_sampling(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows as a sampler is given them: by default everything."""
        return arrays

    def layout_critic(self) -> Any:
        """For data whose conditions are placed as layouts (scene graphs): a function
        (condition tensors, centres [B, M, 2]) -> [B] count of placement rules broken, which the
        layout sampler minimises over its candidates (`layout_rejection`); None by default."""
        return None

    def training_captions(self) -> list[str]:
        """The captions of the training split, for a caption conditioner's vocabulary."""
        raise NotImplementedError(f"data {self.config.name!r} has no captions")

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        """One line per row to print under a sample: the split's captions when it stores them."""
        if self.caption_key is not None and self.caption_key in arrays:
            return [str(c) for c in arrays[self.caption_key]]
        rows = len(next(iter(arrays.values()))) if arrays else 0
        return [""] * rows

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        """Ground truth for a probe network (`latentforge.eval.probe`): head name ->
        (int labels [N, K], number of classes). Empty when the data carry no labels."""
        return {}



class RowwiseDataSet(DataSet):
    """A generated data set whose row i of a split is made from (seed, split, i) alone: any range
    of rows is made without the others, so a split is written piece by piece in bounded memory
    and rows come out the same whatever the piece size. Subclasses implement `rows`; the split
    sizes come from the config's train_size and val_size."""

    chunk_rows: ClassVar[int] = 1024

    def split_size(self, name: str) -> int:
        """Rows of a split: `train_size` for train, `val_size` for val and for test."""
        check_split(name)
        return self.config.train_size if name == "train" else self.config.val_size

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows start..stop-1 of split `name`."""
        raise NotImplementedError

    def split(self, name: str) -> dict[str, np.ndarray]:
        check_split(name)
        return self.rows(name, 0, self.split_size(name))

    def split_pieces(self, name: str) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
        check_split(name)
        n, step = self.split_size(name), self.chunk_rows
        return n, (self.rows(name, start, min(n, start + step)) for start in range(0, n, step))


def build_dataset(config: DataConfig) -> DataSet:
    from latentforge.registry import lookup

    return lookup("dataset", config.name)[1](config)


def check_split(name: str) -> None:
    if name not in SPLITS + ("test",):
        raise ValueError(f"unknown split {name!r}; expected train, val or test")
