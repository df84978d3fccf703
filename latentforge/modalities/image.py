"""Images: uint8 [N, H, W, 3] on disk, float [N, 3, H, W] in [-1, 1] for the networks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentforge.modalities.base import Modality, train_copies


@dataclass(frozen=True)
class ImageModality(Modality):
    size: int                                  # side of the square images
    name = "image"
    key = "images"
    noun = "images"
    layout = "image"

    def to_model(self, array: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(np.array(array) if isinstance(array, np.ndarray) else array)  # uint8 [N, H, W, 3]
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, H, W] in [-1, 1]

    def from_model(self, x: Tensor) -> np.ndarray:
        out = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 1).cpu().numpy()

    def tokenizer_fields(self) -> dict[str, Any]:
        return {"image_size": self.size}

    def check(self, array: np.ndarray, where: str) -> None:
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"{where}: expected uint8 images [N, H, W, 3], got {array.dtype} {list(array.shape)}")

    def preview(self, samples: np.ndarray, captions: list[str] | None, path: Path, title: str) -> list[str]:
        from latentforge.report.grids import save_captioned_grid

        out = path.with_suffix(".png")
        save_captioned_grid(samples, captions or [""] * len(samples), out, title=title)
        return [out.name]

    def preview_pairs(self, real: np.ndarray, recon: np.ndarray, path: Path, title: str) -> list[str]:
        from latentforge.report.grids import save_image_rows

        out = path.with_suffix(".png")
        save_image_rows([real, recon], ["data", "reconstruction"], out, title=title)
        return [out.name]

    def recon_metrics(self, real: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
        """PSNR, SSIM, MS-SSIM (as many scales as the size allows) and per-Haar-band PSNR."""
        from latentforge.modalities.image_metrics import ms_ssim, ms_ssim_scales, psnr, ssim, to_unit
        from latentforge.tokenizers.losses import band_psnr

        x, y = to_unit(real), to_unit(recon)
        out: dict[str, Any] = {"psnr": float(psnr(x, y).clamp_max(100).mean()), "ssim": float(ssim(x, y).mean())}
        scales = ms_ssim_scales(min(x.shape[-2:]))
        if scales >= 2:
            out["ms_ssim"] = float(ms_ssim(x, y).mean())
            out["ms_ssim_scales"] = scales
        if x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0:
            bands = band_psnr(2 * y - 1, 2 * x - 1)  # one Haar level: low band and finest details
            out["psnr_low"] = _finite_mean(bands["low"])
            out["psnr_high_1"] = _finite_mean(bands["high_1"])
        return out

    def baselines(self, train: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
        """Independent per-pixel Gaussians fitted to `train` (right colours, no structure), and
        copies of training images (near the floor: why nearest_train_ratio sits beside FID)."""
        x = train.astype(np.float64)
        mean, std = x.mean(0), x.std(0)
        rng = np.random.default_rng(seed)
        noise = np.clip(np.rint(mean + std * rng.standard_normal((n, *train.shape[1:]))), 0, 255).astype(np.uint8)
        return {"pixel gaussian": noise, "train copies": train_copies(train, n, seed)}

    def flat(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(len(array), -1).astype(np.float32) / 255.0  # pixels in [0, 1]


def _finite_mean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("inf")
