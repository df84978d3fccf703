"""The memorisation check that sits beside the distribution metrics.

A FID of 3.1 means nothing alone. Beside every model's value the report puts the floor (real
examples against other real examples, val against test: the best a model can do at this N) and
the modality's trivial models (`Modality.baselines`: per-pixel Gaussians for images, the mean
pose for motion, ...), among them copies of training examples. Their FID sits near the floor,
which is why a low FID alone does not prove a model generalises; `nearest_train_ratio` does.
Distances are between rows of `Modality.flat` (pixels in [0, 1], joint positions in metres).
"""

from __future__ import annotations

import numpy as np
import torch


def nearest_distances(rows: np.ndarray, train: np.ndarray, batch: int = 256) -> np.ndarray:
    """RMS distance from each row (float [N, D]) to its nearest training row ([M, D])."""
    t = torch.from_numpy(np.array(train, dtype=np.float32))  # a copy: train may be memory-mapped
    out = []
    for i in range(0, len(rows), batch):
        q = torch.from_numpy(np.asarray(rows[i:i + batch], dtype=np.float32))
        out.append(torch.cdist(q, t).min(1).values / q.shape[1] ** 0.5)
    return torch.cat(out).numpy()


def nearest_train_ratio(samples: np.ndarray, real: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Median distance of samples to their nearest training example, over the same for held-out
    real examples (all float [N, D] rows). Near 1: samples are as novel as new data; well below 1:
    copies of training examples (0 for exact copies)."""
    d_samples = float(np.median(nearest_distances(samples, train)))
    d_real = float(np.median(nearest_distances(real, train)))
    return {"nearest_train_ratio": d_samples / d_real if d_real > 0 else float("nan"),
            "nearest_train_distance": d_samples, "real_nearest_train_distance": d_real}
