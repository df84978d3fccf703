"""Real-image data sets: scikit-learn digits and crops of scikit-image's photographs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from latentforge.data.digits import (
    NUM_DIGITS,
    DigitsConfig,
    DigitsDataset,
    digits_images,
    interpolation_matrix,
    load_raw,
    split_indices,
    upsample,
)
from latentforge.data.photos import (
    PHOTOS,
    PhotosConfig,
    PhotosDataset,
    crop_sources,
    load_photo,
    photo_crops,
    split_region,
)

SPLITS = ("train", "val", "test")
# The data ship inside these packages; the loaders import them lazily, so skip without them.
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn")
needs_skimage = pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")

# --- digits -----------------------------------------------------------------------


@needs_sklearn
def test_digits_raw_data_is_the_bundled_set():
    images, labels = load_raw()
    assert images.shape == (NUM_DIGITS, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))


@needs_sklearn
def test_digits_splits_are_disjoint_cover_everything_and_are_stratified():
    cfg = DigitsConfig(val_fraction=0.1, test_fraction=0.2)
    parts = {s: split_indices(cfg, s) for s in SPLITS}
    joined = np.concatenate(list(parts.values()))
    assert len(joined) == NUM_DIGITS and len(np.unique(joined)) == NUM_DIGITS
    _, labels = load_raw()
    for split, fraction in (("val", 0.1), ("test", 0.2)):
        counts = np.bincount(labels[parts[split]], minlength=10)
        totals = np.bincount(labels, minlength=10)
        assert np.all(np.abs(counts - fraction * totals) <= 0.5)  # rounded per class


@needs_sklearn
def test_digits_are_deterministic_and_depend_on_the_seed():
    a_images, a_labels = digits_images(DigitsConfig(size=16, seed=3), "val")
    b_images, b_labels = digits_images(DigitsConfig(size=16, seed=3), "val")
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    assert not np.array_equal(split_indices(DigitsConfig(seed=3), "val"), split_indices(DigitsConfig(seed=4), "val"))


@needs_sklearn
@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes_dtypes_and_labels(size):
    images, labels = digits_images(DigitsConfig(size=size), "test")
    n = len(split_indices(DigitsConfig(), "test"))
    assert images.shape == (n, size, size, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    # grey copied to RGB, full 0..255 range used
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    assert images.max() == 255 and images.min() == 0


@needs_sklearn
def test_digits_at_size_8_are_the_raw_pixels_rescaled():
    cfg = DigitsConfig()
    images, labels = digits_images(cfg, "train")
    raw, raw_labels = load_raw()
    idx = split_indices(cfg, "train")
    np.testing.assert_array_equal(images[..., 0], np.rint(raw[idx] * 255.0 / 16).astype(np.uint8))
    np.testing.assert_array_equal(labels, raw_labels[idx])


def test_bilinear_upsampling_matches_torch_and_nearest_copies_blocks():
    images = np.random.default_rng(0).uniform(0, 16, (3, 8, 8))
    ours = upsample(images, 32, "bilinear")
    ref = torch.nn.functional.interpolate(torch.from_numpy(images)[:, None], size=32, mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    np.testing.assert_allclose(interpolation_matrix(8, 16).sum(1), 1.0)
    np.testing.assert_array_equal(upsample(images, 16, "nearest")[:, ::2, ::2], images)
    np.testing.assert_array_equal(upsample(images, 16, "nearest")[:, 1::2, 1::2], images)
    np.testing.assert_array_equal(upsample(images, 8, "bilinear"), images)


@needs_sklearn
def test_digits_dataset_items():
    ds = DigitsDataset(DigitsConfig(size=16), "val")
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64
    assert len(ds) == len(split_indices(DigitsConfig(), "val"))
    with pytest.raises(IndexError, match=str(len(ds))):
        ds[len(ds)]


def test_digits_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="12"):
        DigitsConfig(size=12)
    with pytest.raises(ValueError, match="'bicubic'"):
        DigitsConfig(resample="bicubic")
    with pytest.raises(ValueError, match="test_fraction"):
        DigitsConfig(test_fraction=1.5)
    with pytest.raises(ValueError, match="0.6 \\+ 0.5"):
        DigitsConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="'dev'"):
        split_indices(DigitsConfig(), "dev")


# --- photos -----------------------------------------------------------------------


@needs_skimage
def test_every_bundled_photo_loads_offline_as_rgb():
    for name in PHOTOS:
        image = load_photo(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, name
        assert min(image.shape[:2]) >= 64, name
        assert image.std() > 5, name  # a real picture, not a blank
    grey = load_photo("camera")
    assert np.array_equal(grey[..., 0], grey[..., 2])  # greyscale copied to RGB
    with pytest.raises(ValueError, match="'eagle'"):
        load_photo("eagle")  # ships only by download


@needs_skimage
@pytest.mark.parametrize("size", [32, 64])
def test_photo_crops_shapes_and_content(size):
    cfg = PhotosConfig(size=size, seed=1)
    crops = photo_crops(cfg, "train", 12)
    assert crops.shape == (12, size, size, 3) and crops.dtype == np.uint8
    for crop, (photo, y, x) in zip(crops, crop_sources(cfg, "train", 12)):
        np.testing.assert_array_equal(crop, load_photo(PHOTOS[photo])[y:y + size, x:x + size])


@needs_skimage
def test_crop_i_is_a_pure_function_of_seed_split_and_index():
    cfg = PhotosConfig(seed=5)
    whole = photo_crops(cfg, "val", 10)
    np.testing.assert_array_equal(photo_crops(PhotosConfig(seed=5), "val", 10), whole)
    np.testing.assert_array_equal(photo_crops(cfg, "val", 4, start=6), whole[6:])
    assert not np.array_equal(photo_crops(PhotosConfig(seed=6), "val", 10), whole)
    assert not np.array_equal(photo_crops(cfg, "train", 10), whole)


@needs_skimage
def test_held_out_photos_never_feed_train_or_val():
    cfg = PhotosConfig(test_images=("coffee", "moon"))
    held_out = {PHOTOS.index("coffee"), PHOTOS.index("moon")}
    for split in ("train", "val"):
        used = set(crop_sources(cfg, split, 400)[:, 0].tolist())
        assert not used & held_out, split
        assert len(used) > 5, split  # many train photographs are drawn from
    assert set(crop_sources(cfg, "test", 100)[:, 0].tolist()) == held_out


@needs_skimage
def test_train_and_val_crops_never_share_a_pixel():
    cfg = PhotosConfig(size=32)
    for name in cfg.train_images:
        tr, va = split_region(cfg, "train", name), split_region(cfg, "val", name)
        rows_apart = tr[1] <= va[0] or va[1] <= tr[0]
        cols_apart = tr[3] <= va[2] or va[3] <= tr[2]
        assert rows_apart or cols_apart, name
    for split in ("train", "val"):
        for photo, y, x in crop_sources(cfg, split, 300):
            top, bottom, left, right = split_region(cfg, split, PHOTOS[photo])
            assert top <= y and y + 32 <= bottom and left <= x and x + 32 <= right


@needs_skimage
def test_photos_dataset_items():
    cfg = PhotosConfig(size=32)
    ds = PhotosDataset(cfg, "test", 5)
    item = ds[2]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    expected = torch.from_numpy(photo_crops(cfg, "test", 1, start=2)[0]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(item["image"], expected)
    assert torch.equal(ds[-3]["image"], item["image"])
    with pytest.raises(IndexError, match="5"):
        ds[5]


@needs_skimage
def test_photos_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="48"):
        PhotosConfig(size=48)
    with pytest.raises(ValueError, match="'lily'"):
        PhotosConfig(test_images=("lily",))
    with pytest.raises(ValueError, match="none is left"):
        PhotosConfig(images=("camera",), test_images=("camera",))
    with pytest.raises(ValueError, match="'camera' is not in images"):
        PhotosConfig(images=("moon", "coins"), test_images=("camera",))
    with pytest.raises(ValueError, match="empty"):
        photo_crops(PhotosConfig(test_images=()), "test", 1)
    with pytest.raises(ValueError, match="'page'"):
        # page is 191 x 384: a 10% band of its long side is 38 px, too narrow for a 64 px crop
        photo_crops(PhotosConfig(size=64, val_fraction=0.1, images=("page", "camera"), test_images=()), "val", 1)
    with pytest.raises(ValueError, match="'holdout'"):
        crop_sources(PhotosConfig(), "holdout", 1)
    with pytest.raises(ValueError, match="'chelsea' is not used by the 'train' split"):
        split_region(PhotosConfig(), "train", "chelsea")  # a held-out test photograph
