"""Data sets as a recipe sees them: a config picked by `data.name`, and a `DataSet` that cuts splits.

A split is a dict of NumPy arrays with one row per example:
    images    uint8 [N, H, W, 3]            always
    numeric   condition entries for a conditioner (Shapes' obj_* / rel_* graph tensors, `label`)
    text      str [N] entries a person or a parser reads (Shapes' `graphs` JSON, `captions`)
The recipe stores the splits once (`runs/<name>/data/`), feeds the numeric entries to whatever
conditioner the generator has (it selects its keys), and asks the data set for what only it knows:
how to caption a sample, what a sampler must not be told (Shapes' true object centres), and how
to score whether samples follow their condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latentforge.config import ModelConfig

SPLITS = ("train", "val")


@dataclass
class DataConfig(ModelConfig):
    kind = "dataset"
    size: int = 32                   # image side in pixels
    seed: int = 0


class DataSet:
    """Subclasses implement `split`; the rest has defaults for unlabelled image sets."""

    config: DataConfig
    natural_conditioner: str | None = None   # the conditioner its condition entries feed
    condition_keys: tuple[str, ...] = ()     # the numeric condition entries of a split
    condition_text = "unconditional samples"  # for the report: what a sample was drawn for
    caption_key: str | None = None           # the text entry of a split holding captions, if any
    probe_shift = 0                          # a probe's training shift, in pixels per 32 of image side
    run_dir = None                           # the run folder (set by the recipe): for caches
    progress = True                          # progress bars on long work (the recipe passes its own)

    def __init__(self, config: DataConfig) -> None:
        self.config = config

    def split(self, name: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def content_key(self) -> str:
        """What the config does not say about the data (a user folder's files); part of the data
        stage's fingerprint, so a changed folder is noticed. Generated data sets: empty."""
        return ""

    @staticmethod
    def numeric(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The condition entries: every array but the images and the text."""
        return {k: v for k, v in arrays.items() if k != "images" and v.dtype.kind not in "USO"}

    def link_conditioner(self, cfg: Any) -> Any:
        """Set the conditioner fields that follow from the data (object slots, classes)."""
        return cfg

    def for_sampling(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The rows as a sampler is given them: by default everything."""
        return arrays

    def training_captions(self) -> list[str]:
        """The captions of the training split, for a caption conditioner's vocabulary."""
        raise NotImplementedError(f"data {self.config.name!r} has no captions")

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        """One line per row to print under an image."""
        return [""] * len(arrays["images"]) if "images" in arrays else []

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        """Ground truth for a probe network (`latentforge.eval.probe`): head name ->
        (int labels [N, K], number of classes). Empty when the data carry no labels."""
        return {}

    def adherence(self, samples: np.ndarray, arrays: dict[str, np.ndarray],
                  real: np.ndarray) -> dict[str, float]:
        """How well `samples` follow the conditions in `arrays` (one row each); `real` are the
        data's own images for the same conditions, the floor. Empty when nothing is measurable."""
        return {}


def build_dataset(config: DataConfig) -> DataSet:
    from latentforge.registry import lookup

    return lookup("dataset", config.name)[1](config)


def check_split(name: str) -> None:
    if name not in SPLITS + ("test",):
        raise ValueError(f"unknown split {name!r}; expected train, val or test")
