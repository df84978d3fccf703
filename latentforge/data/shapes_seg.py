"""Shapes-Seg: Shapes scenes with per-pixel class maps, and masks drawn as colour images (P33 CAM-Seg).

CAM-Seg encodes a segmentation mask with an image autoencoder by drawing it as an RGB picture
(each class one fixed colour) and reads a generated mask back by palette lookup: the class of a
pixel is the palette colour nearest to it. Here the classes are the object *shapes*
(background, circle, square, triangle): colour does not give them away (every shape comes in every
colour), so segmenting needs the object's outline, not a pixel-wise colour lookup.

A class map is drawn the way `shapes.render` draws the image: each object's anti-aliased coverage
on its pixel window, later objects over earlier ones; a pixel takes an object's class where that
object covers at least half of it. Masks and images of an index come from the same scene.

Legend: N scenes, H = W = cfg.size pixels, K = len(CLASSES).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from latentforge.data.shapes import SHAPES, SceneGraph, ShapesConfig, object_coverages, sample_and_render

CLASSES: tuple[str, ...] = ("background",) + SHAPES
# Corners of the RGB cube: every pair is >= 255 apart (L2), so a reconstruction must be off by
# more than half that distance (~128 grey levels, or 1.0 on [-1, 1]) before its argmax flips.
PALETTE = np.array([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)  # [K, 3]
COVERED = 0.5  # coverage from which a pixel belongs to the object


def class_map(scene: SceneGraph, size: int = 32, supersample: int = 4) -> np.ndarray:
    """Per-pixel class indices into CLASSES of a positioned scene: uint8 [size, size]."""
    classes = np.zeros((size, size), np.uint8)
    for obj, (y0, y1, x0, x1), coverage in object_coverages(scene, size, supersample):
        patch = classes[y0:y1, x0:x1]  # view: later objects overwrite earlier ones
        patch[coverage >= COVERED] = CLASSES.index(obj.shape)
    return classes


def colorize(classes: np.ndarray) -> np.ndarray:
    """Class indices uint8/int [..., H, W] -> their palette colours uint8 [..., H, W, 3]."""
    if classes.min(initial=0) < 0 or classes.max(initial=0) >= len(CLASSES):
        raise ValueError(f"class indices must be in [0, {len(CLASSES)}), got {classes.min()}..{classes.max()}")
    return PALETTE[classes]


def palette_argmax(masks: Tensor) -> Tensor:
    """Colour masks float [N, 3, H, W] in [-1, 1] (e.g. decoded latents) -> class indices int64 [N, H, W]:
    the nearest palette colour of each pixel (squared RGB distance)."""
    if masks.dim() != 4 or masks.shape[1] != 3:
        raise ValueError(f"expected colour masks [N, 3, H, W], got {list(masks.shape)}")
    palette = torch.as_tensor(PALETTE, dtype=torch.float32, device=masks.device) / 127.5 - 1.0  # [K, 3]
    dist = (masks.float()[:, None] - palette[None, :, :, None, None]).square().sum(2)          # [N, K, H, W]
    return dist.argmin(1)


def sample_segmentation(cfg: ShapesConfig, split: str, indices: Sequence[int],
                        workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, H, W, 3] and their class maps uint8 [N, H, W] of the scenes `indices` of `split`."""
    scenes, images = sample_and_render(cfg, split, indices, workers)
    classes = np.stack([class_map(s, cfg.size, cfg.supersample) for s in scenes]) if scenes else \
        np.zeros((0, cfg.size, cfg.size), np.uint8)
    return images, classes


def to_model_input(images: np.ndarray) -> Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1], the tokenizers' input range."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
