"""Reconstruction metrics on images in [0, 1]: PSNR and SSIM (Wang et al. 2004)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def to_unit(images: np.ndarray | Tensor) -> Tensor:
    """uint8 [N, H, W, C] or float [N, C, H, W] in [-1, 1] -> float64 [N, C, H, W] in [0, 1]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 [N, H, W, C], got {images.dtype}")
        return torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255.0
    return ((images.double() + 1) / 2).clamp(0, 1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of [N, C, H, W] images in [0, 1]; identical images give +inf."""
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype) -> Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of [N, C, H, W] images in [0, 1] (Gaussian window, 'valid' borders,
    K1 = 0.01, K2 = 0.03, averaged over channels), as in scikit-image's gaussian_weights mode."""
    C1, C2 = 0.01**2, 0.03**2
    n, c = x.shape[:2]
    win = min(window, x.shape[-1], x.shape[-2])
    kernel = _gaussian_window(win, sigma, x.dtype).expand(c, 1, win, win)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    # scikit-image's use_sample_covariance factor NP / (NP - 1), NP = pixels in the window,
    # applied even with Gaussian weights; kept so our numbers match the reference's
    cov_norm = win * win / (win * win - 1.0)
    var_x = cov_norm * (blur(x * x) - mu_x**2)
    var_y = cov_norm * (blur(y * y) - mu_y**2)
    cov = cov_norm * (blur(x * y) - mu_x * mu_y)
    s = ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2))
    return s.flatten(1).mean(1)
