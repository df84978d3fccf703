"""The embedded data sets as recipe data: `data.name: shapes | digits | photos`.

    shapes   procedural scenes with scene graphs (conditions: the graph; P1's task)
    digits   scikit-learn's handwritten digits (condition: the class label)
    photos   crops of scikit-image's photographs, held-out photographs for test (unconditional)
Each adapts a generator in this folder (shapes.py, digits.py, photos.py) to the `DataSet` contract.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from latentforge.data.base import DataConfig, DataSet, RowwiseDataSet, check_split
from latentforge.data.digits import NUM_CLASSES, DigitsConfig, digits_images
from latentforge.data.photos import PHOTOS, PhotosConfig, photo_crops
from latentforge.data.shapes import (
    COLORS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    SceneGraph,
    ShapesConfig,
    encode_graphs,
    layout_violations,
    sample_and_render,
    sample_scene,
)
from latentforge.registry import register


def _check_sizes(cfg: DataConfig) -> None:
    for key in ("train_size", "val_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")


# ------------------------------------------------------------------------------------- shapes

@dataclass
class ShapesDataConfig(DataConfig):
    name: str = "shapes"
    size: int = 32
    min_objects: int = 1
    max_objects: int = 3
    supersample: int = 4
    train_size: int = 20000
    val_size: int = 1000

    def __post_init__(self) -> None:
        _check_sizes(self)
        self.shapes()  # validates size and object counts

    def shapes(self) -> ShapesConfig:
        return ShapesConfig(size=self.size, min_objects=self.min_objects, max_objects=self.max_objects,
                            supersample=self.supersample, seed=self.seed)

    @classmethod
    def tiny(cls) -> "ShapesDataConfig":
        """A few small examples: the registry's contract tests use it."""
        return cls(size=16, train_size=8, val_size=4)


@register("dataset", "shapes", ShapesDataConfig)
class ShapesData(RowwiseDataSet):
    judge = "shapes"
    natural_conditioner = "scene_graph"
    condition_keys = ("obj_shape", "obj_color", "obj_size", "obj_mask", "obj_x", "obj_y",
                      "rel_subj", "rel_pred", "rel_obj", "rel_mask")
    condition_text = "Each sample is drawn for the scene graph in its caption (validation graphs, never trained on)."
    caption_key = "captions"

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        cfg = self.config
        graphs, images = sample_and_render(cfg.shapes(), name, range(start, stop))
        cond = encode_graphs(graphs, cfg.max_objects)
        return {"images": images,
                "graphs": np.array([json.dumps(g.to_json()) for g in graphs]),
                "captions": np.array([g.caption() for g in graphs]),
                **{k: v.numpy() for k, v in cond.items()}}

    def layout_critic(self):
        """Counts the placement rules a sampled layout breaks (overlaps, border, relations)."""
        return layout_violations

    def link_conditioner(self, cfg):
        # slots for the largest scene the data set can draw, whatever the training graphs hold
        return dataclasses.replace(cfg, max_objects=MAX_OBJECTS) if hasattr(cfg, "max_objects") else cfg

    def training_captions(self) -> list[str]:
        scfg = self.config.shapes()  # scenes without rendering: captions are cheap
        return [sample_scene(scfg, "train", i).caption() for i in range(self.config.train_size)]

    def for_sampling(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # the graphs only: the true object centres stay hidden, so layouts are the model's own (P1)
        out = {k: v for k, v in arrays.items() if k not in ("obj_x", "obj_y")}
        out["graphs"] = np.array([json.dumps(scene_of(g).without_positions().to_json()) for g in arrays["graphs"]])
        return out

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        return [scene_of(g).caption() for g in arrays["graphs"]]

    def parse_conditions(self, raw, where: str) -> dict[str, np.ndarray]:
        """Scene graphs as JSON (one or a list; format in the README): the rows a sampler gets."""
        items = raw if isinstance(raw, list) else [raw]
        try:
            graphs = [SceneGraph.from_json(g) for g in items]
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{where}: {err}") from None
        too_big = [i for i, g in enumerate(graphs) if len(g.objects) > MAX_OBJECTS]
        if too_big:
            raise ValueError(f"{where}: graph {too_big[0]} has {len(graphs[too_big[0]].objects)} objects; "
                             f"Shapes scenes hold at most {MAX_OBJECTS}")
        # padded as the training graphs were, or to the largest graph given
        cond = encode_graphs(graphs, max(self.config.max_objects, *(len(g.objects) for g in graphs)))
        rows = {"graphs": np.array([json.dumps(g.to_json()) for g in graphs]),
                "captions": np.array([g.caption() for g in graphs]), **{k: v.numpy() for k, v in cond.items()}}
        return self.for_sampling(rows)

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        # how many objects of each shape, colour and size, and in all: what a scene is, up to placement
        scenes = [scene_of(g) for g in arrays["graphs"]]
        counts = self.config.max_objects + 1
        out = {}
        for key, values in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", SIZES)):
            out[key] = (np.array([[sum(getattr(o, key) == v for o in s.objects) for v in values]
                                  for s in scenes], dtype=np.int64), counts)
        out["count"] = (np.array([[len(s.objects)] for s in scenes], dtype=np.int64), counts)
        return out


def scene_of(text: str) -> SceneGraph:
    return SceneGraph.from_json(json.loads(str(text)))


# ------------------------------------------------------------------------------------- digits

@dataclass
class DigitsDataConfig(DataConfig):
    name: str = "digits"
    size: int = 32                  # 8 (the original pixels), 16 or 32 (upsampled)
    resample: Literal["bilinear", "nearest"] = "bilinear"
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        self.digits()

    def digits(self) -> DigitsConfig:
        return DigitsConfig(size=self.size, seed=self.seed, val_fraction=self.val_fraction,
                            test_fraction=self.test_fraction, resample=self.resample)

    @classmethod
    def tiny(cls) -> "DigitsDataConfig":
        """A few small examples: the registry's contract tests use it."""
        return cls(size=8)


@register("dataset", "digits", DigitsDataConfig)
class DigitsData(DataSet):
    judge = "digits"
    natural_conditioner = "class"
    condition_keys = ("label",)
    condition_text = "Each sample is drawn for the digit class in its caption."
    probe_shift = 2  # handwriting sits anywhere near the centre: a class does not depend on it

    def split(self, name: str) -> dict[str, np.ndarray]:
        images, labels = digits_images(self.config.digits(), name)
        return {"images": images, "label": labels}

    class_names = tuple(str(d) for d in range(NUM_CLASSES))

    def link_conditioner(self, cfg):
        return dataclasses.replace(cfg, num_classes=NUM_CLASSES) if hasattr(cfg, "num_classes") else cfg

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        return [f"digit {int(label)}" for label in arrays["label"]]

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        return {"class": (arrays["label"].astype(np.int64)[:, None], NUM_CLASSES)}


# ------------------------------------------------------------------------------------- photos

@dataclass
class PhotosDataConfig(DataConfig):
    name: str = "photos"
    size: int = 32                  # 32 or 64
    train_size: int = 20000         # crops per split
    val_size: int = 1000
    test_images: tuple[str, ...] = ("chelsea", "coins", "gravel")
    val_fraction: float = 0.2
    images: tuple[str, ...] = field(default_factory=lambda: PHOTOS)

    def __post_init__(self) -> None:
        _check_sizes(self)
        self.photos()

    def photos(self) -> PhotosConfig:
        return PhotosConfig(size=self.size, seed=self.seed, test_images=self.test_images,
                            val_fraction=self.val_fraction, images=self.images)

    @classmethod
    def tiny(cls) -> "PhotosDataConfig":
        """A few small examples: the registry's contract tests use it."""
        return cls(size=32, train_size=8, val_size=4)


@register("dataset", "photos", PhotosDataConfig)
class PhotosData(DataSet):
    condition_text = "Unconditional samples (the photographs carry no labels)."

    def split(self, name: str) -> dict[str, np.ndarray]:
        check_split(name)
        n = self.config.train_size if name == "train" else self.config.val_size
        return {"images": photo_crops(self.config.photos(), name, n)}
