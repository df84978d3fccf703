"""Shapes: a procedural 2D cousin of CLEVR, the library's embedded default data set.

Every scene is a few flat coloured shapes (circle, square, triangle; six colours;
two sizes) on a dark-grey background, together with its scene graph: the objects'
attributes and, for every pair, a horizontal and a vertical relation.

A scene is a pure function of (seed, split, index), so the data set needs no files:
any example can be regenerated anywhere, and train/val/test never share a scene.
Placement keeps objects apart and their centres well separated on both axes, so the
image alone determines the scene graph; `latentforge.eval.shapes` reads it back.

Coordinates are fractions of the image side: x grows to the right, y downwards.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

# --- vocabulary -------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated colours, each far from the others and from the background in RGB, so a
# pixel's colour (even anti-aliased against the background) names its object.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (50, 200, 50),
    "blue": (40, 70, 240),
    "yellow": (240, 220, 40),
    "magenta": (215, 50, 215),
    "cyan": (30, 220, 220),
}
SIZES: tuple[str, ...] = ("small", "large")
PREDICATES: tuple[str, ...] = ("left of", "right of", "above", "below")
BACKGROUND: tuple[int, int, int] = (48, 48, 48)

# --- geometry (fractions of the image side) ---------------------------------------

# Side of an object's bounding box: circle diameter, square side, triangle base/height.
SIZE_SIDE: dict[str, float] = {"small": 0.22, "large": 0.34}
# Empty space between bounding boxes: ~2 px at 32 px, so no pixel mixes two objects
# and same-coloured neighbours never merge into one connected component.
GAP = 0.06
# Minimum |dx| and |dy| between centres, so every relation is unambiguous in the image.
MARGIN = 0.06
# Distance kept from the image border.
BORDER = 0.02

_SPLITS = {"train": 0, "val": 1, "test": 2}
_CANDIDATES = (64, 1024)  # positions proposed per object: a cheap batch, then a thorough one
# Most large objects a scene of n objects may hold; beyond this, placement almost never
# succeeds (measured with `_place`), so surplus large objects are made small up front.
_MAX_LARGE = (0, 1, 2, 3, 3, 2, 1)
MAX_OBJECTS = len(_MAX_LARGE) - 1  # the most objects a 32-pixel scene is drawn with
_ATTEMPTS_PER_DOWNSIZE = 4  # failed layouts before one large object is made small
_ATTEMPTS_PER_DROP = 32  # failed all-small layouts before an object is dropped
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


def _one_of(valid: Sequence[str]) -> str:
    return ", ".join(valid)


# --- scene graphs -----------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object: its attributes and centroid (nan when unknown).

    For a triangle (upright, apex up) the centroid is the mean of its vertices.
    """

    shape: str
    color: str
    size: str
    x: float = math.nan
    y: float = math.nan

    def __post_init__(self) -> None:
        for key, valid in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", SIZES)):
            value = getattr(self, key)
            if value not in valid:
                raise ValueError(f"{key}: {value!r} is not one of {_one_of(valid)}")

    @property
    def has_position(self) -> bool:
        """True when both centroid coordinates are known."""
        return math.isfinite(self.x) and math.isfinite(self.y)


def _relations_from_positions(objects: Sequence[ShapeObject]) -> tuple[tuple[int, str, int], ...]:
    relations = []
    for i in range(len(objects)):
        for j in range(i + 1, len(objects)):
            a, b = objects[i], objects[j]
            relations.append((i, "left of" if a.x < b.x else "right of", j))
            relations.append((i, "above" if a.y < b.y else "below", j))
    return tuple(relations)


def _join(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _names(objects: Sequence[ShapeObject]) -> list[str]:
    """The shortest attribute phrase that tells each object apart from the others."""
    short = [f"{o.color} {o.shape}" for o in objects]
    full = [f"{o.size} {o.color} {o.shape}" for o in objects]
    names = []
    for i in range(len(objects)):
        if short.count(short[i]) == 1:
            names.append(short[i])
        elif full.count(full[i]) == 1:
            names.append(full[i])
        else:
            names.append(f"{_ORDINALS[full[:i].count(full[i])]} {full[i]}")
    return names


def _check_index(value: object, where: str, n_objects: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: {value!r} is not an object index (an integer)")
    if not 0 <= value < n_objects:
        raise ValueError(f"{where}: {value} is out of range for {n_objects} object(s)")
    return int(value)


def _check_coordinate(raw: Mapping, key: str, where: str) -> float:
    value = raw.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}.{key}: {value!r} is not a number in [0, 1]")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}.{key}: {value!r} is not a number in [0, 1]")
    return float(value)


def _object_from_json(raw: object, where: str) -> ShapeObject:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected {{'shape': ..., 'color': ..., 'size': ...}}, got {raw!r}")
    valid_keys = ("shape", "color", "size", "x", "y")
    for key in raw:
        if key not in valid_keys:
            raise ValueError(f"{where}: unknown key {key!r} (valid keys: {_one_of(valid_keys)})")
    attributes = {}
    for key, valid in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", SIZES)):
        if key not in raw:
            raise ValueError(f"{where}: missing key {key!r} (one of {_one_of(valid)})")
        if not isinstance(raw[key], str) or raw[key] not in valid:
            raise ValueError(f"{where}.{key}: {raw[key]!r} is not one of {_one_of(valid)}")
        attributes[key] = raw[key]
    x = _check_coordinate(raw, "x", where)
    y = _check_coordinate(raw, "y", where)
    return ShapeObject(attributes["shape"], attributes["color"], attributes["size"], x, y)


def _relation_from_json(raw: object, where: str, n_objects: int) -> tuple[int, str, int]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or len(raw) != 3:
        raise ValueError(f"{where}: expected [subject index, predicate, object index], got {raw!r}")
    subject = _check_index(raw[0], f"{where}[0]", n_objects)
    predicate = raw[1]
    if not isinstance(predicate, str) or predicate not in PREDICATES:
        raise ValueError(f"{where}[1]: {predicate!r} is not one of {_one_of(PREDICATES)}")
    obj = _check_index(raw[2], f"{where}[2]", n_objects)
    if subject == obj:
        raise ValueError(f"{where}: an object cannot be related to itself ({subject})")
    return subject, predicate, obj


@dataclass(frozen=True)
class SceneGraph:
    """Objects and (subject index, predicate, object index) relations between them."""

    objects: tuple[ShapeObject, ...]
    relations: tuple[tuple[int, str, int], ...] = ()

    @classmethod
    def from_objects(cls, objects: Sequence[ShapeObject]) -> SceneGraph:
        """Build the graph of positioned objects: two relations per unordered pair.

        For i < j: (i, "left of"/"right of", j) and (i, "above"/"below", j).

        Raises:
            ValueError: if an object has no position.
        """
        objects = tuple(objects)
        for i, obj in enumerate(objects):
            if not obj.has_position:
                raise ValueError(f"objects[{i}] has no position; relations need x and y")
        return cls(objects, _relations_from_positions(objects))

    def without_positions(self) -> SceneGraph:
        """The same objects and relations with the object centres forgotten."""
        return SceneGraph(tuple(ShapeObject(o.shape, o.color, o.size) for o in self.objects), self.relations)

    def caption(self) -> str:
        """Deterministic English description, e.g.

        "a large red circle and a small blue square; the red circle is left of the
        blue square and above it".
        """
        if not self.objects:
            return "an empty scene"
        listing = _join([f"a {o.size} {o.color} {o.shape}" for o in self.objects])
        names = _names(self.objects)
        grouped: dict[tuple[int, int], list[str]] = {}
        for subject, predicate, obj in self.relations:
            grouped.setdefault((subject, obj), []).append(predicate)
        clauses = []
        for (subject, obj), predicates in grouped.items():
            parts = [f"{predicates[0]} the {names[obj]}"] + [f"{p} it" for p in predicates[1:]]
            clauses.append(f"the {names[subject]} is {_join(parts)}")
        return "; ".join([listing] + clauses)

    def to_json(self) -> dict:
        """JSON-ready dict, positions included when known:

        {"objects": [{"shape", "color", "size"[, "x", "y"]}, ...], "relations": [[i, p, j], ...]}.
        """
        objects = []
        for obj in self.objects:
            entry: dict = {"shape": obj.shape, "color": obj.color, "size": obj.size}
            if math.isfinite(obj.x):
                entry["x"] = float(obj.x)
            if math.isfinite(obj.y):
                entry["y"] = float(obj.y)
            objects.append(entry)
        return {"objects": objects, "relations": [[s, p, o] for s, p, o in self.relations]}

    @classmethod
    def from_json(cls, d: Mapping) -> SceneGraph:
        """Parse and validate the `to_json` format; "relations", "x" and "y" are optional.

        Raises:
            ValueError: naming the offending key and the valid values.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a scene graph must be a JSON object, got {type(d).__name__}")
        valid_keys = ("objects", "relations")
        for key in d:
            if key not in valid_keys:
                raise ValueError(f"unknown key {key!r} (valid keys: {_one_of(valid_keys)})")
        if "objects" not in d:
            raise ValueError("missing key 'objects' (a list of {'shape', 'color', 'size'} objects)")
        raw_objects = d["objects"]
        if isinstance(raw_objects, (str, bytes, Mapping)) or not isinstance(raw_objects, Sequence):
            raise ValueError(f"objects: expected a list, got {type(raw_objects).__name__}")
        objects = tuple(_object_from_json(raw, f"objects[{i}]") for i, raw in enumerate(raw_objects))
        raw_relations = d.get("relations", [])
        if isinstance(raw_relations, (str, bytes, Mapping)) or not isinstance(raw_relations, Sequence):
            raise ValueError(f"relations: expected a list, got {type(raw_relations).__name__}")
        relations = tuple(
            _relation_from_json(raw, f"relations[{i}]", len(objects)) for i, raw in enumerate(raw_relations)
        )
        return cls(objects, relations)


# --- configuration ----------------------------------------------------------------


@dataclass
class ShapesConfig:
    """How scenes are drawn: image side, object count range, anti-aliasing, seed."""

    size: int = 32
    min_objects: int = 1
    max_objects: int = 3
    supersample: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 128:
            raise ValueError(f"ShapesConfig.size must be in [16, 128], got {self.size}")
        if not 1 <= self.min_objects <= MAX_OBJECTS:
            raise ValueError(f"ShapesConfig.min_objects must be in [1, {MAX_OBJECTS}], got {self.min_objects}")
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"ShapesConfig.max_objects must be in [1, {MAX_OBJECTS}], got {self.max_objects}")
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"ShapesConfig.min_objects ({self.min_objects}) must not exceed "
                f"max_objects ({self.max_objects})"
            )
        if not 1 <= self.supersample <= 16:
            raise ValueError(f"ShapesConfig.supersample must be in [1, 16], got {self.supersample}")
        if self.seed < 0:
            raise ValueError(f"ShapesConfig.seed must be >= 0, got {self.seed}")


def _split_id(split: str) -> int:
    if split not in _SPLITS:
        raise ValueError(f"split: {split!r} is not one of {_one_of(tuple(_SPLITS))}")
    return _SPLITS[split]


# --- geometry ---------------------------------------------------------------------


def box_offsets(shape: str, side: float) -> tuple[float, float, float, float]:
    """Bounding box (left, top, right, bottom) relative to the centroid.

    A triangle's centroid sits 2/3 of the way down from its apex, so its box is
    not centred on it.
    """
    half = side / 2
    if shape == "triangle":
        return -half, -2 * side / 3, half, side / 3
    return -half, -half, half, half


def shape_coverage(
    shape: str,
    side: float,
    x: float,
    y: float,
    size: int,
    supersample: int,
    window: tuple[int, int, int, int],
) -> np.ndarray:
    """Fraction of each pixel covered by one shape, inside a pixel window.

    Args:
        shape: one of SHAPES.
        side: bounding-box side as a fraction of the image side.
        x, y: centroid as fractions of the image side.
        size: image side in pixels.
        supersample: sub-pixels per pixel side used for the box filter.
        window: (y0, y1, x0, x1) pixel rows/columns to cover (half-open).

    Returns:
        float32 [y1 - y0, x1 - x0] coverage in [0, 1].
    """
    y0, y1, x0, x1 = window
    fine = size * supersample
    v = (np.arange(y0 * supersample, y1 * supersample, dtype=np.float32) + 0.5) / fine - y  # [h*ss]
    u = (np.arange(x0 * supersample, x1 * supersample, dtype=np.float32) + 0.5) / fine - x  # [w*ss]
    v, u = v[:, None], u[None, :]
    half = side / 2
    if shape == "circle":
        inside = u * u + v * v <= half * half
    elif shape == "square":
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    elif shape == "triangle":
        depth = v + 2 * side / 3  # distance below the apex; the half-width grows as depth / 2
        inside = (depth <= side) & (np.abs(u) <= depth / 2)
    else:
        raise ValueError(f"shape: {shape!r} is not one of {_one_of(SHAPES)}")
    h, w = y1 - y0, x1 - x0
    return inside.reshape(h, supersample, w, supersample).mean(axis=(1, 3), dtype=np.float32)


def pixel_window(box: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    """Pixel rows/columns (y0, y1, x0, x1) touched by a (left, top, right, bottom) box, clipped."""
    left, top, right, bottom = box
    x0 = min(max(math.floor(left * size), 0), size)
    x1 = min(max(math.ceil(right * size), 0), size)
    y0 = min(max(math.floor(top * size), 0), size)
    y1 = min(max(math.ceil(bottom * size), 0), size)
    return y0, y1, x0, x1


def object_box(obj: ShapeObject) -> tuple[float, float, float, float]:
    """An object's bounding box (left, top, right, bottom) in image fractions."""
    left, top, right, bottom = box_offsets(obj.shape, SIZE_SIDE[obj.size])
    return obj.x + left, obj.y + top, obj.x + right, obj.y + bottom


def layout_violations(cond: Mapping[str, torch.Tensor], centres: torch.Tensor) -> torch.Tensor:
    """How many of the placement rules scenes are drawn with a layout breaks, per graph [B].

    `cond` holds encoded graphs (`encode_graphs`: obj_shape, obj_size, obj_mask, rel_*), `centres`
    [B, M, 2] object centroids in image fractions. One count for each pair of objects whose boxes
    come closer than GAP or whose centres are closer than MARGIN on either axis, each object whose
    box leaves the BORDER, and each relation of the graph the centres do not satisfy. The data's own
    layouts score 0; a sampler can reject layouts that score more (P1's layout stage samples centres,
    and crowded or misplaced ones are what its image model then draws as merged objects).
    """
    shape, size, mask = cond["obj_shape"], cond["obj_size"], cond["obj_mask"].bool()  # [B, M]
    side = torch.tensor([SIZE_SIDE[s] for s in SIZES], device=centres.device)[size]   # [B, M]
    triangle = shape == SHAPES.index("triangle")
    x, y = centres[..., 0].to(side.dtype), centres[..., 1].to(side.dtype)
    left, right = x - side / 2, x + side / 2
    top = y + torch.where(triangle, -2 * side / 3, -side / 2)                             # box_offsets
    bottom = y + torch.where(triangle, side / 3, side / 2)
    apart = ((left[:, :, None] >= right[:, None] + GAP) | (right[:, :, None] <= left[:, None] - GAP)
             | (top[:, :, None] >= bottom[:, None] + GAP) | (bottom[:, :, None] <= top[:, None] - GAP))  # [B, M, M]
    separated = (((x[:, :, None] - x[:, None]).abs() >= MARGIN - 1e-6)
                 & ((y[:, :, None] - y[:, None]).abs() >= MARGIN - 1e-6))
    M = mask.shape[1]
    pairs = mask[:, :, None] & mask[:, None] & torch.ones(M, M, dtype=torch.bool, device=mask.device).triu(1)
    clashes = (pairs & ~(apart & separated)).sum((1, 2))
    outside = (mask & ((left < BORDER - 1e-6) | (right > 1 - BORDER + 1e-6)
                       | (top < BORDER - 1e-6) | (bottom > 1 - BORDER + 1e-6))).sum(1)
    subj, obj, pred = cond["rel_subj"], cond["rel_obj"], cond["rel_pred"]                # [B, R]
    dx = x.gather(1, obj) - x.gather(1, subj)  # > 0: the subject is left of the object
    dy = y.gather(1, obj) - y.gather(1, subj)  # > 0: the subject is above it
    holds = torch.stack([dx > 0, dx < 0, dy > 0, dy < 0], -1).gather(-1, pred[..., None])[..., 0]
    broken = (cond["rel_mask"].bool() & ~holds).sum(1)
    return clashes + outside + broken


# --- sampling ---------------------------------------------------------------------


def _place(rng: np.random.Generator, shapes: Sequence[str], sides: Sequence[float]) -> np.ndarray | None:
    """Rejection-sample centroids one object at a time; None if an object finds no room.

    Larger objects go first: they are the hardest to fit into leftover space. A small
    batch of candidate positions usually suffices; crowded scenes get a larger one.

    Returns:
        float64 [n, 2] centroids (x, y) in the input order, or None.
    """
    n = len(shapes)
    centres = np.full((n, 2), np.nan)
    boxes = np.zeros((0, 4))  # [k, (left, top, right, bottom)] of objects placed so far
    placed = np.zeros((0, 2))  # [k, (x, y)]
    for k in sorted(range(n), key=lambda i: -sides[i]):
        left, top, right, bottom = box_offsets(shapes[k], sides[k])
        for batch in _CANDIDATES:
            cx = rng.uniform(BORDER - left, 1 - BORDER - right, batch)[:, None]  # [C, 1]
            cy = rng.uniform(BORDER - top, 1 - BORDER - bottom, batch)[:, None]
            apart = (
                (cx + left >= boxes[:, 2] + GAP)
                | (cx + right <= boxes[:, 0] - GAP)
                | (cy + top >= boxes[:, 3] + GAP)
                | (cy + bottom <= boxes[:, 1] - GAP)
            )  # [C, k]
            separated = (np.abs(cx - placed[:, 0]) >= MARGIN) & (np.abs(cy - placed[:, 1]) >= MARGIN)
            ok = np.flatnonzero((apart & separated).all(axis=1))
            if ok.size:
                break
        else:
            return None
        x, y = cx[ok[0], 0], cy[ok[0], 0]
        centres[k] = x, y
        boxes = np.vstack([boxes, [x + left, y + top, x + right, y + bottom]])
        placed = np.vstack([placed, [x, y]])
    return centres


def sample_scene(cfg: ShapesConfig, split: str, index: int) -> SceneGraph:
    """The scene graph of example `index` of `split`: a pure function of (cfg.seed, split, index).

    Object count, shapes and colours are uniform, and so are sizes except in crowded
    scenes: six large objects never fit, so a scene of n objects keeps at most
    `_MAX_LARGE[n]` large ones. Positions are uniform among those that keep objects
    inside the image, apart, and with separated centres. When a layout still fails
    repeatedly, one more large object is made small, and if all are small an object
    is dropped (never seen in practice); every choice is drawn from the same generator.

    Raises:
        ValueError: for an unknown split or a negative index.
    """
    split_id = _split_id(split)
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([cfg.seed, split_id, int(index)])
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    shape_ids = rng.integers(len(SHAPES), size=n)
    color_ids = rng.integers(len(COLORS), size=n)
    size_ids = rng.integers(len(SIZES), size=n)
    large = np.flatnonzero(size_ids == SIZES.index("large"))
    if large.size > _MAX_LARGE[n]:
        size_ids[rng.choice(large, large.size - _MAX_LARGE[n], replace=False)] = SIZES.index("small")
    colors = tuple(COLORS)
    failures = 0
    while True:  # terminates: a single object always fits
        shapes = [SHAPES[s] for s in shape_ids]
        sizes = [SIZES[s] for s in size_ids]
        centres = _place(rng, shapes, [SIZE_SIDE[s] for s in sizes])
        if centres is not None:
            objects = [
                ShapeObject(shapes[k], colors[color_ids[k]], sizes[k], float(x), float(y))
                for k, (x, y) in enumerate(centres)
            ]
            return SceneGraph.from_objects(objects)
        failures += 1
        large = np.flatnonzero(size_ids == SIZES.index("large"))
        if large.size and failures >= _ATTEMPTS_PER_DOWNSIZE:
            size_ids[rng.choice(large)] = SIZES.index("small")
            failures = 0
        elif not large.size and failures >= _ATTEMPTS_PER_DROP:
            drop = int(rng.integers(len(shape_ids)))
            shape_ids, color_ids, size_ids = (np.delete(a, drop) for a in (shape_ids, color_ids, size_ids))
            failures = 0


# --- rendering --------------------------------------------------------------------


def object_coverages(scene: SceneGraph, size: int, supersample: int):
    """For each object, in drawing order: (object, its pixel window (y0, y1, x0, x1), its coverage of
    the window's pixels [y1 - y0, x1 - x0] in [0, 1]). Raises ValueError for an unpositioned object."""
    for i, obj in enumerate(scene.objects):
        if not obj.has_position:
            raise ValueError(f"objects[{i}] has no position; cannot render it")
        window = pixel_window(object_box(obj), size)
        yield obj, window, shape_coverage(obj.shape, SIZE_SIDE[obj.size], obj.x, obj.y, size, supersample, window)


def render(scene: SceneGraph, size: int = 32, supersample: int = 4) -> np.ndarray:
    """Draw a positioned scene, anti-aliased by box-filtering a supersampled mask.

    Returns:
        uint8 [size, size, 3] RGB image.

    Raises:
        ValueError: if an object has no position or the sizes are not positive.
    """
    if size < 1 or supersample < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size} and {supersample}")
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = BACKGROUND
    for obj, (y0, y1, x0, x1), coverage in object_coverages(scene, size, supersample):
        patch = canvas[y0:y1, x0:x1]  # view: composited in place
        # "over" compositing keeps hand-made, overlapping scenes well defined too
        patch += coverage[..., None] * (np.asarray(COLORS[obj.color], np.float32) - patch)
    return np.rint(canvas).astype(np.uint8)


def _sample_and_render_chunk(job: tuple[ShapesConfig, str, list[int]]) -> tuple[list[SceneGraph], np.ndarray]:
    cfg, split, indices = job
    scenes = [sample_scene(cfg, split, i) for i in indices]
    images = np.empty((len(indices), cfg.size, cfg.size, 3), np.uint8)
    for n, scene in enumerate(scenes):
        images[n] = render(scene, cfg.size, cfg.supersample)
    return scenes, images


def sample_and_render(cfg: ShapesConfig, split: str, indices: Sequence[int],
                      workers: int | None = None) -> tuple[list[SceneGraph], np.ndarray]:
    """Scenes and their renders, uint8 [N, cfg.size, cfg.size, 3], over `workers` processes
    (default: every core for 2,000 scenes or more). Scene i is a pure function of (seed, split, i),
    so the result does not depend on the number of workers."""
    indices = list(indices)
    if workers is None:
        workers = (os.cpu_count() or 1) if len(indices) >= 2000 else 1
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _sample_and_render_chunk((cfg, split, indices))
    chunks = [c.tolist() for c in np.array_split(np.array(indices, dtype=np.int64), 4 * workers) if len(c)]
    # fork: workers inherit the imported modules, so they start at once (spawn would re-import torch)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(pool.map(_sample_and_render_chunk, [(cfg, split, c) for c in chunks]))
    return [s for scenes, _ in parts for s in scenes], np.concatenate([images for _, images in parts])


def render_batch(cfg: ShapesConfig, split: str, indices: Sequence[int], workers: int | None = None) -> np.ndarray:
    """Sample and render several examples: uint8 [N, cfg.size, cfg.size, 3]."""
    return sample_and_render(cfg, split, indices, workers)[1]


# --- tensors for models -----------------------------------------------------------


def encode_graphs(graphs: Sequence[SceneGraph], max_objects: int) -> dict[str, torch.Tensor]:
    """Pad scene graphs into index tensors.

    Returns:
        obj_shape, obj_color, obj_size: int64 [B, M] indices into SHAPES, COLORS, SIZES
            (0 where padded); obj_mask: bool [B, M];
        rel_subj, rel_pred, rel_obj: int64 [B, R] with R = M * (M - 1), predicate
            indices into PREDICATES (0 where padded); rel_mask: bool [B, R];
        obj_x, obj_y: float32 [B, M] object centres in image fractions (nan where unknown
            or padded).

    Raises:
        ValueError: if a graph has more than `max_objects` objects or R relations.
    """
    m = max_objects
    r = m * (m - 1)
    b = len(graphs)
    obj = np.zeros((3, b, m), np.int64)  # shape, colour, size
    obj_mask = np.zeros((b, m), bool)
    centres = np.full((2, b, m), np.nan, np.float32)
    rel = np.zeros((3, b, r), np.int64)  # subject, predicate, object
    rel_mask = np.zeros((b, r), bool)
    colors = tuple(COLORS)
    for g, graph in enumerate(graphs):
        if len(graph.objects) > m:
            raise ValueError(f"graphs[{g}] has {len(graph.objects)} objects, more than max_objects={m}")
        if len(graph.relations) > r:
            raise ValueError(f"graphs[{g}] has {len(graph.relations)} relations, more than {r} = M * (M - 1)")
        for k, o in enumerate(graph.objects):
            obj[:, g, k] = SHAPES.index(o.shape), colors.index(o.color), SIZES.index(o.size)
            centres[:, g, k] = o.x, o.y
        obj_mask[g, : len(graph.objects)] = True
        for k, (s, p, o) in enumerate(graph.relations):
            rel[:, g, k] = s, PREDICATES.index(p), o
        rel_mask[g, : len(graph.relations)] = True
    return {
        "obj_shape": torch.from_numpy(obj[0]),
        "obj_color": torch.from_numpy(obj[1]),
        "obj_size": torch.from_numpy(obj[2]),
        "obj_mask": torch.from_numpy(obj_mask),
        "obj_x": torch.from_numpy(centres[0]),
        "obj_y": torch.from_numpy(centres[1]),
        "rel_subj": torch.from_numpy(rel[0]),
        "rel_pred": torch.from_numpy(rel[1]),
        "rel_obj": torch.from_numpy(rel[2]),
        "rel_mask": torch.from_numpy(rel_mask),
    }


# --- data set ---------------------------------------------------------------------


class ShapesDataset(Dataset):
    """`length` examples of one split; every example is regenerated on demand.

    An item is {"image": float32 [3, H, W] in [-1, 1]} plus one graph's tensors from
    `encode_graphs` (obj_* [M], rel_* [R] with M = cfg.max_objects).
    """

    def __init__(self, cfg: ShapesConfig, split: str, length: int) -> None:
        _split_id(split)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.cfg = cfg
        self.split = split
        self.length = length

    def __len__(self) -> int:
        return self.length

    def _index(self, i: int) -> int:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for a data set of length {self.length}")
        return i % self.length

    def scene(self, i: int) -> SceneGraph:
        """The scene graph of example `i`."""
        return sample_scene(self.cfg, self.split, self._index(i))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        scene = self.scene(i)
        image = render(scene, self.cfg.size, self.cfg.supersample)  # [H, W, 3] uint8
        item = {k: v[0] for k, v in encode_graphs([scene], self.cfg.max_objects).items()}
        item["image"] = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0  # [3, H, W]
        return item

    def images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Render examples [start, stop) as uint8 [N, H, W, 3] (stop defaults to the length)."""
        stop = self.length if stop is None else stop
        if not 0 <= start <= stop <= self.length:
            raise IndexError(f"range [{start}, {stop}) out of bounds for a data set of length {self.length}")
        return render_batch(self.cfg, self.split, range(start, stop))
