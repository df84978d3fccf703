"""Feature extractors for distribution metrics, each with a name and a hash of its weights.

A FID is only comparable with another FID from the very same network, so every number in
`metrics.json` carries the extractor's name, where its weights came from and their hash.

    features = pick_features(dataset, inception_weights=None)  # by modality: probe, else Inception
    f = features(examples)                                     # stored layout -> [N, D]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentforge.eval.probe import (
    file_hash,
    has_probe,
    load_probe,
    probe_dir,
    probe_info,
)
from latentforge.serialization import WEIGHTS_NAME


@dataclass
class FeatureExtractor:
    name: str                                    # "probe" or "inception"
    source: str                                  # the folder or file of its weights
    hash: str                                    # first 16 hex digits of the weights' sha256
    fn: Callable[[np.ndarray], Tensor]
    info: dict[str, Any]                         # e.g. the probe's own test accuracy

    def __call__(self, images: np.ndarray) -> Tensor:
        return self.fn(images)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "hash": self.hash, **self.info}


def probe_features(data_config: Any, device: str | torch.device = "cpu", progress: bool = True) -> FeatureExtractor:
    probe = load_probe(data_config, device=device, progress=progress)
    folder = probe_dir(data_config)
    info = probe_info(folder)
    return FeatureExtractor("probe", str(folder), file_hash(folder / WEIGHTS_NAME), probe.features,
                            {"test_accuracy": info.get("test_accuracy"), "dim": probe.config.feature_dim})


def inception_features(path: str | os.PathLike, device: str | torch.device = "cpu",
                       resize: str = "pytorch-fid") -> FeatureExtractor:
    from latentforge.eval.inception import FEATURES, InceptionFeatures

    extractor = InceptionFeatures.from_file(path, device, resize=resize)
    variant = "pytorch-fid" if extractor.model.fid else "torchvision"
    return FeatureExtractor("inception", str(path), file_hash(path), extractor,
                            {"variant": variant, "dim": FEATURES, "resize": resize})


def image_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                   progress: bool, resize: str = "pytorch-fid") -> FeatureExtractor | None:
    """Inception when the user gives its weights (resized by `resize`'s convention), else the data
    set's probe; None when neither exists (photos without Inception weights)."""
    if inception_weights:
        return inception_features(inception_weights, device, resize)
    if has_probe(dataset.config):
        return probe_features(dataset.config, device, progress)
    return None


def motion_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                    progress: bool) -> FeatureExtractor:
    from latentforge.eval.motion_probe import dataset_features

    return dataset_features(dataset, inception_weights, device, progress)


def video_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                   progress: bool) -> FeatureExtractor:
    """The data set's ViViT probe (probe-FVD: not comparable with published I3D FVD)."""
    from latentforge.eval.video_probe import dataset_features

    return dataset_features(dataset, inception_weights, device, progress)


def audio_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                   progress: bool) -> FeatureExtractor:
    """The data set's MERT student (probe-FAD: not comparable with published VGGish / CLAP FAD)."""
    from latentforge.eval.audio_fad import dataset_features

    return dataset_features(dataset, inception_weights, device, progress)


def points_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                    progress: bool) -> FeatureExtractor:
    """The data set's Point-MAE encoder (probe-FPD: not comparable with published PointNet FPD)."""
    from latentforge.eval.point_fpd import dataset_features

    return dataset_features(dataset, inception_weights, device, progress)


# modality name -> the feature network of its distribution metrics
FEATURES: dict[str, Callable[..., FeatureExtractor | None]] = {"image": image_features, "motion": motion_features,
                                                              "video": video_features, "audio": audio_features,
                                                              "points": points_features}


def pick_features(dataset: Any, inception_weights: str | None = None, device: str | torch.device = "cpu",
                  progress: bool = True, inception_resize: str = "pytorch-fid") -> FeatureExtractor | None:
    """The feature network for `dataset`'s modality; None when it has none: distribution metrics
    are then left out."""
    make = FEATURES.get(dataset.modality.name)
    if make is image_features:
        return make(dataset, inception_weights, device, progress, inception_resize)
    return None if make is None else make(dataset, inception_weights, device, progress)
