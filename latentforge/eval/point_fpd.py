"""Probe-FPD: the Fréchet distance between sets of point clouds in the feature space of a data set's
own Point-MAE encoder (P17), trained once on its training shapes and cached
(eval/trained_probe.py). Published FPD uses a PointNet trained on ShapeNet, whose weights cannot be
downloaded here: these numbers are NOT comparable with published ones.

    features = dataset_features(dataset, None, "cpu", progress=True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentforge.eval.features import FeatureExtractor
from latentforge.eval.trained_probe import cached_probe, probe_extractor

PROBE_TRAIN_SHAPES = 1024
PROBE_STEPS = 600


def dataset_point_mae(dataset: Any, progress: bool = True, steps: int = PROBE_STEPS,
                      train_shapes: int = PROBE_TRAIN_SHAPES):
    """The folder of the data set's Point-MAE: cached, or trained (AdamW 1e-3, weight decay 0.05,
    cosine, batch 32) on up to `train_shapes` of its training shapes and saved."""
    from latentforge.pretraining.point_mae import PointMAE, PointMAEConfig

    points = dataset.config.points
    cfg = PointMAEConfig(groups=min(32, points // 8), group_size=min(32, max(8, points // 32)))

    def train():
        from latentforge.pretraining.point_mae import pretrain

        data = dataset.resized(train_size=train_shapes) if hasattr(dataset.config, "train_size") else dataset
        shapes = torch.from_numpy(np.asarray(data.split("train")["points"], np.float32))
        torch.manual_seed(0)
        model = PointMAE(cfg)
        stats = pretrain(model, shapes, steps, seed=0)
        return model, {"train_shapes": len(shapes), "train_seconds": stats["seconds_per_step"] * steps,
                       "final_chamfer": stats["chamfer"], "final_mean_group_chamfer": stats["mean_group_chamfer"]}

    return cached_probe(dataset, "points-mae", {"steps": steps, "train_shapes": train_shapes}, train, PointMAE, progress,
                        "the probe-FPD encoder (Point-MAE)")


def dataset_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                     progress: bool, steps: int = PROBE_STEPS, train_shapes: int = PROBE_TRAIN_SHAPES) -> FeatureExtractor:
    """`eval.features.FEATURES["points"]`: the data set's Point-MAE encoder as a FeatureExtractor."""
    from latentforge.pretraining.point_mae import PointMAE

    return probe_extractor(dataset_point_mae(dataset, progress, steps, train_shapes), "point-mae-probe", PointMAE, device,
                           {"comparable_with_published_fpd": False})
