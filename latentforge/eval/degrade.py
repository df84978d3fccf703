"""Controlled degradations of image sets, to check that a metric ranks worse images worse.

    gaussian_noise(images, 16)   # additive noise, sigma in grey levels of 255
    gaussian_blur(images, 1.0)   # separable Gaussian blur, sigma in pixels, edges extended
Both take and return uint8 [N, H, W, C]; strength 0 returns the images unchanged.
"""

from __future__ import annotations

import numpy as np


def gaussian_noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    if sigma == 0:
        return images
    noisy = images + np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return images
    radius = int(np.ceil(3 * sigma))
    g = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    g /= g.sum()
    x = images.astype(np.float64)
    for axis in (1, 2):  # height, then width
        padded = np.pad(x, [(radius, radius) if a == axis else (0, 0) for a in range(x.ndim)], mode="edge")
        x = sum(w * np.take(padded, np.arange(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(g))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
