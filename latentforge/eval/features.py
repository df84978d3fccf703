"""Feature extractors for distribution metrics, each with a name and a hash of its weights.

A FID is only comparable with another FID from the very same network, so every number in
`metrics.json` carries the extractor's name, where its weights came from and their hash.

    features = pick_features(data_config, inception_weights=None)  # probe, else Inception
    f = features(images)                                           # uint8 [N, H, W, 3] -> [N, D]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

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


def inception_features(path: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    from latentforge.eval.inception import FEATURES, InceptionFeatures

    extractor = InceptionFeatures.from_file(path, device)
    variant = "pytorch-fid" if extractor.model.fid else "torchvision"
    return FeatureExtractor("inception", str(path), file_hash(path), extractor,
                            {"variant": variant, "dim": FEATURES})


def pick_features(data_config: Any, inception_weights: str | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> FeatureExtractor | None:
    """Inception when the user gives its weights, else the data set's probe; None when neither
    exists (photos without Inception weights): distribution metrics are then left out."""
    if inception_weights:
        return inception_features(inception_weights, device)
    if has_probe(data_config):
        return probe_features(data_config, device, progress)
    return None
