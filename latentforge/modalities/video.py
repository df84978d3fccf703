"""Video: uint8 clips [N, T, H, W, 3] on disk, float [N, 3, T, H, W] in [-1, 1] for the networks.

Previews are what a person would rather look at than read: an animated GIF of all clips side by
side, looping, and a filmstrip PNG (one row per clip, up to eight frames each) for a page that
must not move. Reconstruction numbers are per frame (PSNR, SSIM) plus the temporal error: how far
the reconstruction's frame-to-frame changes are from the data's, |Δrecon − Δreal|, which a
tokenizer that smears or freezes motion raises while its per-frame PSNR stays good.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latentforge.modalities.animation import save_filmstrip, save_gif
from latentforge.modalities.base import Modality, train_copies

TILE = 96               # pixels per clip in the previews (clips are scaled up, nearest neighbour)
CAPTION = 28            # pixels of caption under each tile
STRIP_FRAMES = 8        # frames per clip in the filmstrip


@dataclass(frozen=True)
class VideoModality(Modality):
    frames: int                                 # T
    size: int                                   # side of the square frames
    fps: float = 8.0
    name = "video"
    key = "video"
    noun = "clips"
    layout = "video"

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    def to_model(self, array: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(np.array(array) if isinstance(array, np.ndarray) else array)  # uint8 [N, T, H, W, 3]
        return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [N, 3, T, H, W] in [-1, 1]

    def from_model(self, x: Tensor) -> np.ndarray:
        out = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return out.permute(0, 2, 3, 4, 1).cpu().numpy()  # [N, T, H, W, 3]

    @property
    def inference_batch(self) -> int:
        # as many pixels per batch as 500 32x32 images: a convolutional tokenizer's activations
        # on 500 clips of 17x64x64 would take tens of GB
        return max(4, 500 * 32 * 32 // (self.frames * self.size * self.size))

    def tokenizer_fields(self) -> dict[str, Any]:
        return {"frames": self.frames, "image_size": self.size}

    def check(self, array: np.ndarray, where: str) -> None:
        if array.dtype != np.uint8 or array.ndim != 5 or array.shape[-1] != 3:
            raise ValueError(f"{where}: expected uint8 clips [N, T, H, W, 3], got {array.dtype} {list(array.shape)}")

    # -- previews ----------------------------------------------------------------------------
    def preview(self, samples: np.ndarray, captions: list[str] | None, path: Path, title: str) -> list[str]:
        self.check(samples, "preview")
        captions = captions or [""] * len(samples)
        gif, strip = path.with_suffix(".gif"), path.with_name(path.name + "_strip.png")
        tiles = [[_tile(frame) for frame in clip] for clip in samples]
        save_gif(tiles, captions, gif, self.fps, ncols=6, caption_px=CAPTION)
        save_filmstrip(tiles, captions, strip, title, moments=STRIP_FRAMES, label_px=160, caption_lines=5)
        return [gif.name, strip.name]

    def preview_pairs(self, real: np.ndarray, recon: np.ndarray, path: Path, title: str) -> list[str]:
        clips = np.stack([c for pair in zip(real, recon) for c in pair])  # data, its reconstruction, next ...
        captions = [t for _ in range(len(real)) for t in ("data", "reconstruction")]
        return self.preview(clips, captions, path, title)

    # -- numbers -----------------------------------------------------------------------------
    def recon_metrics(self, real: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
        """PSNR and SSIM over every frame, PSNR of the first frame (encoded alone by a causal
        tokenizer) and of the rest, and the temporal error (`temporal_error`)."""
        from latentforge.modalities.image_metrics import psnr, ssim, to_unit

        self.check(real, "recon_metrics real")
        self.check(recon, "recon_metrics recon")
        if real.shape != recon.shape:
            raise ValueError(f"recon_metrics: real {list(real.shape)} and recon {list(recon.shape)} differ")
        N, T = real.shape[:2]
        x, y = to_unit(real.reshape(N * T, *real.shape[2:])), to_unit(recon.reshape(N * T, *recon.shape[2:]))
        frame_psnr = psnr(x, y).clamp_max(100).view(N, T)
        out: dict[str, Any] = {"psnr": float(frame_psnr.mean()), "ssim": float(ssim(x, y).mean()),
                               "psnr_first_frame": float(frame_psnr[:, 0].mean())}
        if T > 1:
            out["psnr_later_frames"] = float(frame_psnr[:, 1:].mean())
            out["temporal_error"] = temporal_error(real, recon)
        return out

    def baselines(self, train: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
        """Independent per-pixel Gaussians over every frame (right colours, no structure, no
        motion), a training clip's first frame held still (real content, no motion), and copies
        of training clips."""
        rng = np.random.default_rng(seed)
        picks = rng.permutation(len(train))[:n] if len(train) >= n else rng.integers(0, len(train), n)
        mean, std = _pixel_moments(train)
        noise = np.clip(np.rint(mean + std * rng.standard_normal((n, *train.shape[1:]))), 0, 255).astype(np.uint8)
        still = np.repeat(np.asarray(train[np.sort(picks)][:, :1]), train.shape[1], axis=1)
        return {"pixel gaussian": noise, "static first frame": still, "train copies": train_copies(train, n, seed)}

    def flat(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array).reshape(len(array), -1).astype(np.float32) / 255.0  # pixels in [0, 1]


def temporal_error(real: np.ndarray, recon: np.ndarray) -> float:
    """Mean |Δrecon − Δreal| over consecutive frames, pixels in [0, 1]: 0 when the
    reconstruction changes from frame to frame exactly as the data do (a constant offset costs
    nothing), large when it freezes, flickers or smears motion."""
    dr = np.diff(np.asarray(real, dtype=np.float32), axis=1)
    dx = np.diff(np.asarray(recon, dtype=np.float32), axis=1)
    return float(np.abs(dx - dr).mean() / 255.0)


def _pixel_moments(train: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std over clips, read in chunks (a memory-mapped split stays on disk)."""
    total = np.zeros(train.shape[1:], np.float64)
    square = np.zeros(train.shape[1:], np.float64)
    for i in range(0, len(train), chunk):
        x = np.asarray(train[i:i + chunk], dtype=np.float64)
        total += x.sum(0)
        square += (x * x).sum(0)
    mean = total / len(train)
    return mean, np.sqrt(np.maximum(square / len(train) - mean * mean, 0.0))


# -- drawing -----------------------------------------------------------------------------------

def _tile(frame: np.ndarray) -> Image.Image:
    """One frame scaled up to TILE pixels (nearest neighbour: pixels stay pixels)."""
    return Image.fromarray(np.asarray(frame)).resize((TILE, TILE), Image.NEAREST)
