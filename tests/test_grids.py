"""Report grids: every function writes a readable PNG of plausible size, atomically."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from latentforge.report.grids import save_captioned_grid, save_image_grid, save_image_rows, tile_images


def _images(n: int, side: int = 32) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _read(path) -> np.ndarray:
    assert path.stat().st_size > 1000
    return matplotlib.image.imread(path)


def test_captioned_grid(tmp_path):
    path = tmp_path / "captions.png"
    captions = [f"a large red circle and a small blue square; caption number {i} " * 3 for i in range(10)]
    save_captioned_grid(_images(10), captions, path, ncols=4, title="samples")
    image = _read(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    # 4 columns of >= 160 px tiles, 3 rows with room for wrapped captions
    assert image.shape[1] >= 4 * 160 and image.shape[0] >= 3 * 160
    assert [p.name for p in tmp_path.iterdir()] == ["captions.png"]  # no temporary file left behind


def test_captioned_grid_scales_to_64_images(tmp_path):
    path = tmp_path / "many.png"
    save_captioned_grid(_images(64), ["caption"] * 64, path, ncols=8)
    image = _read(path)
    assert image.shape[1] >= 8 * 160 and image.shape[0] >= 8 * 160


def test_captioned_grid_checks_inputs(tmp_path):
    with pytest.raises(ValueError, match="captions"):
        save_captioned_grid(_images(3), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8"):
        save_captioned_grid(_images(2).astype(np.float32), ["a", "b"], tmp_path / "x.png")


def test_image_rows(tmp_path):
    path = tmp_path / "sub" / "rows.png"  # missing folders are created
    originals = _images(6)
    rows = [originals, 255 - originals, _images(3)]
    result = save_image_rows(rows, ["originals", "recon", "short"], path, title="t")
    assert result is None
    image = _read(path)
    assert image.shape[0] >= 3 * 100 and image.shape[1] >= 6 * 100


def test_image_rows_checks_labels(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        save_image_rows([_images(2)], ["a", "b"], tmp_path / "x.png")


def test_image_grid(tmp_path):
    path = tmp_path / "grid.png"
    images = _images(10)
    save_image_grid(images, path, ncols=4)
    image = _read(path)
    # 32 px tiles are upscaled x4 to 128 px, 2 px borders, 4 columns x 3 rows
    assert image.shape[:2] == (3 * 130 + 2, 4 * 130 + 2)
    pixels = np.rint(image[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(pixels[2:130:4, 2:130:4], images[0])  # nearest neighbour: exact copies


def test_tile_images_keeps_large_tiles_unscaled():
    grid = tile_images(_images(3, side=200), ncols=2)
    assert grid.shape == (2 * 202 + 2, 2 * 202 + 2, 3)
