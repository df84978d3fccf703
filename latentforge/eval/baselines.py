"""Reference sample sets that give a metric its scale, and a memorisation check.

A FID of 3.1 means nothing alone. Beside every model's value the report puts:
* the floor: real images against other real images (val against test), the best a model
  can do at this N;
* a trivial model: independent per-pixel Gaussians fitted to the training images (right
  colours on average, no structure), which any trained model must beat;
* a memorising model: copies of training images. Its FID sits near the floor, which is why
  a low FID alone does not prove a model generalises; `nearest_train_ratio` does that job.
"""

from __future__ import annotations

import numpy as np
import torch


def pixel_gaussian(train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n images whose pixels are drawn independently from per-pixel Gaussians of `train`
    (uint8 [N, H, W, C]), rounded and clipped to uint8."""
    x = train.astype(np.float64)
    mean, std = x.mean(0), x.std(0)
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(mean + std * rng.standard_normal((n, *train.shape[1:]))), 0, 255).astype(np.uint8)


def train_copies(train: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n distinct training images (all of them, repeated, when there are fewer than n)."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(train))
    return train[np.resize(idx, n)]


def nearest_distances(images: np.ndarray, train: np.ndarray, batch: int = 256) -> np.ndarray:
    """RMS pixel distance (in [0, 1] units) from each image to its nearest training image."""
    t = torch.from_numpy(train.reshape(len(train), -1)).float() / 255
    out = []
    for i in range(0, len(images), batch):
        q = torch.from_numpy(images[i:i + batch].reshape(len(images[i:i + batch]), -1)).float() / 255
        out.append(torch.cdist(q, t).min(1).values / q.shape[1] ** 0.5)
    return torch.cat(out).numpy()


def nearest_train_ratio(samples: np.ndarray, real: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Median distance of samples to their nearest training image, over the same for held-out
    real images. Near 1: samples are as novel as new data; well below 1: copies of training
    images (0 for exact copies)."""
    d_samples = float(np.median(nearest_distances(samples, train)))
    d_real = float(np.median(nearest_distances(real, train)))
    return {"nearest_train_ratio": d_samples / d_real if d_real > 0 else float("nan"),
            "nearest_train_distance": d_samples, "real_nearest_train_distance": d_real}
