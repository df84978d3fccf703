"""Moving Shapes (`data.name: moving_shapes`): Shapes objects (data/shapes.py's renderer) in motion,
bouncing off the frame's edges and passing over one another; condition: a caption of each object's
motion. Conventions (coordinates, directions, row seeding): data/video.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from latentforge.data.base import DataConfig
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
from latentforge.data.video import (
    DIRECTIONS,
    STEPS,
    VideoDataSet,
    check_common,
    check_int,
    first_contact,
    reflect,
    row_rng,
    start_range,
)
from latentforge.registry import register

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
        check_common(self)
        check_int(self, "size", 16, 128)
        check_int(self, "max_objects", 1, MAX_MOVING)
        check_int(self, "min_objects", 1, self.max_objects)
        check_int(self, "supersample", 1, 16)
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
    rng = row_rng(cfg.seed, split, i)
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
        a, b = start_range(velocity, lo, hi)
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
class MovingShapesData(VideoDataSet):
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
