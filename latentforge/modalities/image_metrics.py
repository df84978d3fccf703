"""Reconstruction metrics on images in [0, 1]: PSNR, SSIM (Wang et al. 2004) and MS-SSIM (2003)."""

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


def _ssim_terms(x: Tensor, y: Tensor, window: int, sigma: float,
                sample_covariance: bool) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel means of the SSIM map and of its contrast-structure part
    (Gaussian window, 'valid' borders, K1 = 0.01, K2 = 0.03), each [N, C]."""
    C1, C2 = 0.01**2, 0.03**2
    c = x.shape[1]
    win = min(window, x.shape[-1], x.shape[-2])
    kernel = _gaussian_window(win, sigma, x.dtype).to(x.device).expand(c, 1, win, win)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    # scikit-image's use_sample_covariance factor NP / (NP - 1), NP = pixels in the window,
    # applied even with Gaussian weights; SSIM keeps it so our numbers match that reference
    cov_norm = win * win / (win * win - 1.0) if sample_covariance else 1.0
    var_x = cov_norm * (blur(x * x) - mu_x**2)
    var_y = cov_norm * (blur(y * y) - mu_y**2)
    cov = cov_norm * (blur(x * y) - mu_x * mu_y)
    cs = (2 * cov + C2) / (var_x + var_y + C2)
    full = (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1) * cs
    return full.flatten(2).mean(2), cs.flatten(2).mean(2)


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM of [N, C, H, W] images in [0, 1] (Gaussian window, 'valid' borders,
    K1 = 0.01, K2 = 0.03, averaged over channels), as in scikit-image's gaussian_weights mode."""
    return _ssim_terms(x, y, window, sigma, sample_covariance=True)[0].mean(1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003


def ms_ssim_scales(size: int, window: int = 11) -> int:
    """How many of the standard five scales fit an image side: each halving must leave at
    least one full window (a 32-pixel image has 2, a 64-pixel one 3, 176 pixels and up all 5)."""
    scales = 0
    while scales < len(MS_SSIM_WEIGHTS) and size >= window:
        scales, size = scales + 1, (size + 1) // 2
    return scales


def ms_ssim(x: Tensor, y: Tensor, weights: tuple[float, ...] | None = None, window: int = 11,
            sigma: float = 1.5) -> Tensor:
    """Per-image multi-scale SSIM of [N, C, H, W] images in [0, 1] (Wang et al. 2003).

    At each scale but the last the contrast-structure term, at the last the full SSIM, each
    raised to its weight and multiplied, per channel, then averaged over channels; 2x2 average
    pooling between scales. Terms are clamped at 0 before the power (a negative base has no
    real fractional power), as pytorch-msssim does. `weights=None` takes as many of the
    standard five as the image size allows (`ms_ssim_scales`), renormalised to sum to 1 when
    fewer than five fit.
    """
    if weights is None:
        scales = ms_ssim_scales(min(x.shape[-2:]), window)
        if scales < 2:
            raise ValueError(f"MS-SSIM needs images of at least {2 * window - 1} pixels a side for two "
                             f"scales of an {window}-pixel window, got {list(x.shape[-2:])}")
        # the standard five sum to 1.0001: kept as published; a truncated set sums to 1
        weights = MS_SSIM_WEIGHTS if scales == len(MS_SSIM_WEIGHTS) else \
            tuple(w / sum(MS_SSIM_WEIGHTS[:scales]) for w in MS_SSIM_WEIGHTS[:scales])
    terms = []
    for i in range(len(weights)):
        if min(x.shape[-2:]) < window:
            raise ValueError(f"MS-SSIM scale {i + 1} of {len(weights)}: image side {min(x.shape[-2:])} "
                             f"is below the {window}-pixel window; use fewer weights")
        full, cs = _ssim_terms(x, y, window, sigma, sample_covariance=False)
        if i < len(weights) - 1:
            terms.append(cs.clamp_min(0))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    terms.append(full.clamp_min(0))
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (torch.stack(terms) ** w).prod(0).mean(1)
