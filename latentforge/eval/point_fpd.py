"""Probe-FPD: the Fréchet distance between sets of point clouds in the feature space of a data set's
own Point-MAE encoder (P17), trained once on its training shapes and cached
(eval/trained_probe.py). Published FPD uses a PointNet trained on ShapeNet, whose weights cannot be
downloaded here: these numbers are NOT comparable with published ones.

    features = dataset_features(dataset, None, "cpu", progress=True)
"""

from __future__ import annotations

import math
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
        import time

        data = dataset.resized(train_size=train_shapes) if hasattr(dataset.config, "train_size") else dataset
        shapes = torch.from_numpy(np.asarray(data.split("train")["points"], np.float32))
        torch.manual_seed(0)
        model = PointMAE(cfg)
        opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(steps):
            out = model.loss({"points": shapes[torch.randint(0, len(shapes), (32,), generator=g)]}, generator=g)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            schedule.step()
        return model.eval(), {"train_shapes": len(shapes), "train_seconds": time.perf_counter() - start,
                              "final_chamfer": float(out["chamfer"]),
                              "final_mean_group_chamfer": float(out["mean_group_chamfer"])}

    return cached_probe(dataset, "points-mae", {"steps": steps, "train_shapes": train_shapes}, train, PointMAE, progress,
                        "the probe-FPD encoder (Point-MAE)")


def dataset_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                     progress: bool, steps: int = PROBE_STEPS, train_shapes: int = PROBE_TRAIN_SHAPES) -> FeatureExtractor:
    """`eval.features.FEATURES["points"]`: the data set's Point-MAE encoder as a FeatureExtractor."""
    from latentforge.pretraining.point_mae import PointMAE

    return probe_extractor(dataset_point_mae(dataset, progress, steps, train_shapes), "point-mae-probe", PointMAE, device,
                           {"comparable_with_published_fpd": False})
