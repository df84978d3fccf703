"""Digits: scikit-learn's 1,797 real handwritten digits (8x8, 17 grey levels), as RGB images.

The data ship inside scikit-learn (`sklearn.datasets.load_digits`, UCI "optdigits" test
set), so nothing is downloaded. Pixel values 0..16 are mapped to 0..255 with 0 the
background and 255 full ink (bright strokes on black, as in MNIST), and the grey value is
copied to the three RGB channels so the images fit the RGB tokenizers.

Splits are stratified by class and a pure function of the seed: for every digit class
the examples are shuffled by a generator seeded with (seed, class), and the first
`round(test_fraction * n)` go to test, the next `round(val_fraction * n)` to val, the
rest to train. The three splits are disjoint and together hold all 1,797 digits.

Upsampling to 16 or 32 pixels is bilinear by default (half-pixel centres, edge pixels
repeated, the convention of `torch.nn.functional.interpolate(align_corners=False)`):
nearest-neighbour copies would make every 2x2 block flat, leaving the finest wavelet
bands exactly zero and the task an 8x8 one in disguise. "nearest" is kept for exact,
lossless copies of the original pixels.

Shapes: N images, S = cfg.size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

NUM_DIGITS = 1797
NUM_CLASSES = 10
SOURCE_SIZE = 8
MAX_VALUE = 16  # the data set's full-ink grey level
SIZES: tuple[int, ...] = (8, 16, 32)
RESAMPLE: tuple[str, ...] = ("bilinear", "nearest")
_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class DigitsConfig:
    """Image side, upsampling, and the seeded stratified split."""

    size: int = 8                                     # 8 (original), 16 or 32
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    resample: Literal["bilinear", "nearest"] = "bilinear"  # how 8x8 becomes size x size

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"DigitsConfig.size must be one of {', '.join(map(str, SIZES))}, got {self.size!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"DigitsConfig.resample: {self.resample!r} is not one of {', '.join(RESAMPLE)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"DigitsConfig.seed must be an integer >= 0, got {self.seed!r}")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"DigitsConfig.{key} must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"DigitsConfig.val_fraction + test_fraction must be < 1 to leave training data, "
                             f"got {self.val_fraction} + {self.test_fraction}")


def _split_id(split: str) -> int:
    if split not in _SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(_SPLITS)}")
    return _SPLITS[split]


@functools.lru_cache(maxsize=1)
def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """All digits in scikit-learn's order: (uint8 [1797, 8, 8] in 0..16, int64 [1797] labels).

    Cached: the bundled CSV is parsed once per process. The arrays are read-only.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits data set needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    if images.shape != (NUM_DIGITS, SOURCE_SIZE, SOURCE_SIZE) or labels.shape != (NUM_DIGITS,):
        raise RuntimeError(f"scikit-learn's load_digits returned images {images.shape} and labels "
                           f"{labels.shape}, expected ({NUM_DIGITS}, 8, 8) and ({NUM_DIGITS},)")
    images = images.astype(np.uint8)  # stored as float64 but integral: 0..16
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def split_indices(cfg: DigitsConfig, split: str) -> np.ndarray:
    """Indices into `load_raw()` of one split: int64 [N], ascending."""
    split_id = _split_id(split)
    _, labels = load_raw()
    chosen = []
    for label in range(NUM_CLASSES):
        members = np.flatnonzero(labels == label)
        # One generator per class: a class's split never depends on the others' sizes.
        members = np.random.default_rng([cfg.seed, label]).permutation(members)
        n_test = round(cfg.test_fraction * members.size)
        n_val = round(cfg.val_fraction * members.size)
        # Per class: [test | val | train] along the shuffled order.
        start, stop = ((n_test + n_val, members.size), (n_test, n_test + n_val), (0, n_test))[split_id]
        chosen.append(members[start:stop])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def interpolation_matrix(src: int, dst: int) -> np.ndarray:
    """float64 [dst, src] linear-interpolation weights with half-pixel centres.

    Output pixel j samples the source at s = (j + 0.5) * src / dst - 0.5, clamped to the
    edge pixel centres, and blends its two neighbours linearly; each row sums to 1.
    """
    s = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)  # [dst]
    left = np.floor(s).astype(np.int64)
    right = np.minimum(left + 1, src - 1)
    frac = s - left
    m = np.zeros((dst, src))
    np.add.at(m, (np.arange(dst), left), 1 - frac)
    np.add.at(m, (np.arange(dst), right), frac)
    return m


def upsample(images: np.ndarray, size: int, resample: str) -> np.ndarray:
    """float64 [N, 8, 8] -> float64 [N, size, size] by `resample` ("bilinear" or "nearest")."""
    if resample not in RESAMPLE:
        raise ValueError(f"resample: {resample!r} is not one of {', '.join(RESAMPLE)}")
    src = images.shape[-1]
    if size % src:
        raise ValueError(f"size {size} is not a multiple of the source side {src}")
    if resample == "nearest":
        k = size // src
        return images.repeat(k, axis=-2).repeat(k, axis=-1)
    m = interpolation_matrix(src, size)
    return m @ images @ m.T  # separable: rows, then columns -> [N, size, size]


def digits_images(cfg: DigitsConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as images and labels.

    Returns:
        images: uint8 [N, S, S, 3], grey replicated to RGB, 0 = background.
        labels: int64 [N] in 0..9.
    """
    idx = split_indices(cfg, split)
    raw, labels = load_raw()
    grey = upsample(raw[idx].astype(np.float64), cfg.size, cfg.resample) * (255.0 / MAX_VALUE)  # [N, S, S]
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), labels[idx].copy()


class DigitsDataset(Dataset):
    """One split, held in memory (at most 1,797 tiny images).

    An item is {"image": float32 [3, S, S] in [-1, 1], "label": int64 scalar}.
    """

    def __init__(self, cfg: DigitsConfig, split: str) -> None:
        images, labels = digits_images(cfg, split)
        self.cfg = cfg
        self.split = split
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, S, S]
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a data set of length {len(self)}")
        return {"image": self.images[i], "label": self.labels[i]}
