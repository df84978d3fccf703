"""Photos: random square crops of the photographs bundled with scikit-image.

Real photographs carry what procedural data lack: natural textures, noise and sharp edges
at every scale, which is what frequency-aware tokenizer losses (P34) are about. Only
images whose files ship inside the scikit-image wheel are used (read straight from the
installed package, never through `skimage.data`'s downloader), so nothing touches the
network; images that `skimage.data` would have to download (eagle, lily, kidney, ...) are
not offered. `retina` (a fundus disc on a large black surround) and `microaneurysms`
(102 px) are left out too: most of their crops would be blank or the image too small.

Splits work on whole images, then on regions of them:
* test: crops of the `test_images`, which never appear in train or val;
* train / val: crops of the other images. Each of those is cut once along its longer
  side: the last `val_fraction` of it is the val region, the rest the train region, so
  train and val crops never share a pixel (but do share photographs, so val measures fit
  to the training images' style and test measures generalisation to unseen ones).

Crop i of a split is a pure function of (cfg, split, i): a generator seeded with
(seed, split, i) picks the image (uniformly, so small and large photographs are equally
frequent) and then the top-left corner (uniformly inside that image's region). Greyscale
photographs are copied to the three RGB channels.

Shapes: N crops, S = cfg.size; sources are (photo index into PHOTOS, top, left).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
from torch.utils.data import Dataset

# name -> file inside the installed `skimage/data` folder (names follow `skimage.data`).
PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "clock": "clock_motion.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "page": "page.png",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
PHOTOS: tuple[str, ...] = tuple(PHOTO_FILES)
SIZES: tuple[int, ...] = (32, 64)
_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class PhotosConfig:
    """Crop side, seed, which photographs are used and which are held out for test."""

    size: int = 32                                           # 32 or 64
    seed: int = 0
    # One colour photograph, one coarse and one fine texture: unseen kinds of content.
    test_images: tuple[str, ...] = ("chelsea", "coins", "gravel")
    val_fraction: float = 0.2                                # of each train image's longer side
    images: tuple[str, ...] = field(default_factory=lambda: PHOTOS)  # the pool, test images included

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"PhotosConfig.size must be one of {', '.join(map(str, SIZES))}, got {self.size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"PhotosConfig.seed must be an integer >= 0, got {self.seed!r}")
        if not 0.0 < self.val_fraction <= 0.5:
            raise ValueError(f"PhotosConfig.val_fraction must be in (0, 0.5], got {self.val_fraction!r}")
        self.images, self.test_images = tuple(self.images), tuple(self.test_images)
        for key in ("images", "test_images"):
            names = getattr(self, key)
            for name in names:
                if name not in PHOTO_FILES:
                    raise ValueError(f"PhotosConfig.{key}: {name!r} is not a bundled photograph "
                                     f"(one of {', '.join(PHOTOS)})")
            if len(set(names)) != len(names):
                raise ValueError(f"PhotosConfig.{key} lists a photograph twice: {names}")
        for name in self.test_images:
            if name not in self.images:
                raise ValueError(f"PhotosConfig.test_images: {name!r} is not in images {self.images}")
        if not self.train_images:
            raise ValueError("PhotosConfig: every image is held out for test; none is left to train on")

    @property
    def train_images(self) -> tuple[str, ...]:
        """Photographs that feed the train and val splits."""
        return tuple(name for name in self.images if name not in self.test_images)


def _split_id(split: str) -> int:
    if split not in _SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(_SPLITS)}")
    return _SPLITS[split]


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as read-only uint8 [H, W, 3] RGB (cached per process).

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: when the installed scikit-image does not ship the file.
    """
    if name not in PHOTO_FILES:
        raise ValueError(f"photo: {name!r} is not one of {', '.join(PHOTOS)}")
    try:
        from skimage.io import imread
        from skimage.util import img_as_ubyte
    except ImportError as err:
        raise ImportError("the photos data set needs scikit-image: pip install scikit-image") from err
    path = resources.files("skimage") / "data" / PHOTO_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r}: {path} is not in the installed scikit-image; "
                                f"leave it out of PhotosConfig.images")
    image = img_as_ubyte(imread(str(path)))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)  # grey -> RGB
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]  # drop an alpha channel
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"photo {name!r}: expected a grey or RGB image, got shape {image.shape}")
    image = np.ascontiguousarray(image)
    image.flags.writeable = False
    return image


def split_region(cfg: PhotosConfig, split: str, name: str) -> tuple[int, int, int, int]:
    """The part (top, bottom, left, right), half-open, of photograph `name` that `split` crops.

    Raises:
        ValueError: when `name` does not belong to `split`, or the region is smaller than
            a crop.
    """
    split_id = _split_id(split)
    is_test = name in cfg.test_images
    if (split_id == 2) != is_test or name not in cfg.images:
        raise ValueError(f"photo {name!r} is not used by the {split!r} split")
    h, w = load_photo(name).shape[:2]
    top, bottom, left, right = 0, h, 0, w
    if split_id != 2:
        # Cut along the longer side: the val band then keeps the full shorter side.
        band = round(cfg.val_fraction * max(h, w))
        if h >= w:
            top, bottom = (0, h - band) if split_id == 0 else (h - band, h)
        else:
            left, right = (0, w - band) if split_id == 0 else (w - band, w)
    if bottom - top < cfg.size or right - left < cfg.size:
        raise ValueError(f"photo {name!r}: its {split} region is {bottom - top}x{right - left} pixels, "
                         f"smaller than a {cfg.size}x{cfg.size} crop (lower val_fraction or size)")
    return top, bottom, left, right


def _pool(cfg: PhotosConfig, split: str) -> list[tuple[int, tuple[int, int, int, int]]]:
    names = cfg.test_images if _split_id(split) == 2 else cfg.train_images
    if not names:
        raise ValueError(f"the {split!r} split has no photographs (PhotosConfig.test_images is empty)")
    return [(PHOTOS.index(name), split_region(cfg, split, name)) for name in names]


def crop_sources(cfg: PhotosConfig, split: str, n: int, start: int = 0) -> np.ndarray:
    """Where crops start .. start + n - 1 of `split` come from: int64 [n, 3] rows of
    (photo index into PHOTOS, top, left)."""
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    split_id = _split_id(split)
    pool = _pool(cfg, split)
    sources = np.empty((n, 3), np.int64)
    for k in range(n):
        rng = np.random.default_rng([cfg.seed, split_id, start + k])
        photo, (top, bottom, left, right) = pool[int(rng.integers(len(pool)))]
        y = int(rng.integers(top, bottom - cfg.size + 1))
        x = int(rng.integers(left, right - cfg.size + 1))
        sources[k] = photo, y, x
    return sources


def photo_crops(cfg: PhotosConfig, split: str, n: int, start: int = 0) -> np.ndarray:
    """Crops start .. start + n - 1 of `split`: uint8 [n, S, S, 3] RGB."""
    s = cfg.size
    crops = np.empty((n, s, s, 3), np.uint8)
    for k, (photo, y, x) in enumerate(crop_sources(cfg, split, n, start)):
        crops[k] = load_photo(PHOTOS[photo])[y:y + s, x:x + s]
    return crops


class PhotosDataset(Dataset):
    """`length` crops of one split, cut on demand.

    An item is {"image": float32 [3, S, S] in [-1, 1]}.
    """

    def __init__(self, cfg: PhotosConfig, split: str, length: int) -> None:
        _pool(cfg, split)  # fail now, not in a worker, on a bad split or a too-small region
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.cfg = cfg
        self.split = split
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a data set of length {self.length}")
        crop = photo_crops(self.cfg, self.split, 1, start=i % self.length)[0]  # [S, S, 3] uint8
        return {"image": torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1.0}  # [3, S, S]
