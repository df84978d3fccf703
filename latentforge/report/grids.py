"""Image grids for reports: captioned samples, labelled rows, plain tiled grids.

Figures are drawn with matplotlib's object API (`Figure`, saved through the Agg PNG
renderer) rather than pyplot: nothing here needs a display, switches the caller's
backend, or leaks figures into pyplot's global state. Small images are
upscaled with nearest neighbour so pixels stay crisp, and every file is written
atomically (temporary file beside the target, then rename).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

from latentforge.atomic import atomic_path

_DPI = 100
_CAPTION_FONT = 6.5  # points
_LINE_HEIGHT = 1.3 * _CAPTION_FONT / 72  # inches
_TITLE_HEIGHT = 0.45  # inches


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{name}: expected uint8 [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    return images


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, facecolor="white")


def _show(fig: Figure, image: np.ndarray, rect: Sequence[float]) -> None:
    ax = fig.add_axes(rect)
    ax.imshow(image, interpolation="nearest")  # crisp pixels, no smoothing
    ax.set_axis_off()


def save_captioned_grid(
    images: np.ndarray,
    captions: Sequence[str],
    path: str | os.PathLike,
    ncols: int = 4,
    title: str | None = None,
) -> None:
    """Save images in a grid, each with its caption wrapped beneath it.

    Args:
        images: uint8 [N, H, W, 3].
        captions: N strings.
        path: PNG file to write.
        ncols: images per row.
        title: optional figure title.
    """
    images = _check_images(images)
    if len(captions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    n = len(images)
    ncols = max(min(ncols, n), 1)
    nrows = max(math.ceil(n / ncols), 1)
    tile, cell_w, pad = 1.6, 2.3, 0.15  # inches: image side, cell width, spacing
    wrapped = [textwrap.fill(str(c), width=42) for c in captions]
    n_lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    cell_h = pad + tile + 0.05 + n_lines * _LINE_HEIGHT + pad
    top = _TITLE_HEIGHT if title else 0.0
    width, height = ncols * cell_w, top + nrows * cell_h

    fig = Figure(figsize=(width, height), dpi=_DPI)
    if title:
        fig.text(0.5, 1 - 0.5 * top / height, title, ha="center", va="center", fontsize=11)
    for i, (image, caption) in enumerate(zip(images, wrapped)):
        row, col = divmod(i, ncols)
        cell_top = height - top - row * cell_h  # inches from the bottom
        image_bottom = cell_top - pad - tile
        left = col * cell_w + (cell_w - tile) / 2
        _show(fig, image, [left / width, image_bottom / height, tile / width, tile / height])
        fig.text(
            (col + 0.5) * cell_w / width,
            (image_bottom - 0.05) / height,
            caption,
            ha="center",
            va="top",
            fontsize=_CAPTION_FONT,
            family="sans-serif",
        )
    _save(fig, path)


def save_image_rows(
    rows: Sequence[np.ndarray], labels: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> None:
    """Save each [N, H, W, 3] uint8 array as one labelled row (e.g. originals / reconstructions).

    Args:
        rows: arrays of images; rows may hold different numbers of images.
        labels: one label per row, drawn at its left.
        path: PNG file to write.
        title: optional figure title.
    """
    rows = [_check_images(r, f"rows[{i}]") for i, r in enumerate(rows)]
    if not rows:
        raise ValueError("save_image_rows needs at least one row")
    if len(labels) != len(rows):
        raise ValueError(f"got {len(rows)} rows but {len(labels)} labels")
    tile, gap, label_w = 1.0, 0.06, 1.4  # inches
    ncols = max(max(len(r) for r in rows), 1)
    top = _TITLE_HEIGHT if title else 0.0
    width = label_w + ncols * (tile + gap) + gap
    height = top + len(rows) * (tile + gap) + gap

    fig = Figure(figsize=(width, height), dpi=_DPI)
    if title:
        fig.text(0.5, 1 - 0.5 * top / height, title, ha="center", va="center", fontsize=11)
    for r, (images, label) in enumerate(zip(rows, labels)):
        bottom = height - top - (r + 1) * (tile + gap)
        fig.text(
            (label_w - 0.1) / width,
            (bottom + tile / 2) / height,
            textwrap.fill(str(label), width=18),
            ha="right",
            va="center",
            fontsize=9,
        )
        for c, image in enumerate(images):
            left = label_w + gap + c * (tile + gap)
            _show(fig, image, [left / width, bottom / height, tile / width, tile / height])
    _save(fig, path)


def tile_images(images: np.ndarray, ncols: int = 8, min_tile: int = 128, border: int = 2) -> np.ndarray:
    """Tile images into one uint8 [rows * (h + border) + border, ..., 3] mosaic.

    Each image is upscaled by an integer factor (nearest neighbour) to at least
    `min_tile` pixels per side; tiles are separated by white borders.
    """
    images = _check_images(images)
    n, h, w, _ = images.shape
    scale = max(1, math.ceil(min_tile / max(h, w, 1)))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)  # [N, h*s, w*s, 3]
    h, w = h * scale, w * scale
    ncols = max(min(ncols, n), 1)
    nrows = max(math.ceil(n / ncols), 1)
    grid = np.full((nrows * (h + border) + border, ncols * (w + border) + border, 3), 255, np.uint8)
    for i, image in enumerate(images):
        row, col = divmod(i, ncols)
        y, x = border + row * (h + border), border + col * (w + border)
        grid[y : y + h, x : x + w] = image
    return grid


def save_image_grid(images: np.ndarray, path: str | os.PathLike, ncols: int = 8) -> None:
    """Save uint8 [N, H, W, 3] images as one plain tiled PNG, upscaled to >= 128 px per tile."""
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    grid = tile_images(images, ncols)
    with atomic_path(path) as tmp:
        matplotlib.image.imsave(tmp, grid, format="png")
