"""Procedural 3D primitives with known class and size: the point-set modality's known-answer data.

Each row is one shape centred in the cube [-1, 1]^3, upright (axis of symmetry along z): a sphere,
box, cylinder, cone, torus or capsule whose half-extent (the largest |coordinate| it reaches) is
drawn from a "small" band [0.45, 0.6] or a "large" one [0.8, 0.95], with the other proportions drawn
per shape. Its signed distance function is exact (Inigo Quilez's formulas; the cone's is the exact
capped-cone distance), so occupancy labels are exact, and surface points are drawn uniformly by area
from a marching-cubes mesh of the SDF (scikit-image) and snapped back onto the surface along the
SDF's gradient.

A split holds:
    points     float32 [N, P, 3]   surface samples
    queries    float32 [N, Q, 3]   occupancy queries: half uniform in the cube, half near the surface
    occupancy  bool    [N, Q]      inside (sdf < 0) or not
    label      int64   [N]         the primitive's class; `size` int64 [N] (0 small, 1 large)
    params     float32 [N, 3]      its parameters (per class, see `sdf`); `captions` "a large torus"

The judge (`eval/primitive_fit.py`) fits every class's SDF to a point set and names the best fit's
class and size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentforge.data.base import DataConfig, RowwiseDataSet
from latentforge.data.video import row_rng
from latentforge.nn.geometry import level_set_points, occupancy_queries
from latentforge.registry import register

SHAPES = ("sphere", "box", "cylinder", "cone", "torus", "capsule")
SIZES = ("small", "large")
SIZE_BANDS = ((0.45, 0.6), (0.8, 0.95))     # half-extent of each size; the gap keeps the judge honest
GRID = 48                                    # marching-cubes resolution for surface sampling


@dataclass
class PrimitivesConfig(DataConfig):
    name: str = "primitives"
    points: int = 2048                       # P surface samples a shape
    queries: int = 2048                      # Q occupancy queries a shape
    near_sigma: float = 0.03                 # std of the near-surface queries' offsets
    shapes: tuple[str, ...] = SHAPES
    train_size: int = 2048
    val_size: int = 256

    def __post_init__(self) -> None:
        self.shapes = tuple(self.shapes)
        bad = [s for s in self.shapes if s not in SHAPES]
        if not self.shapes or bad:
            raise ValueError(f"PrimitivesConfig.shapes must list some of {', '.join(SHAPES)}; got {list(self.shapes)}")
        if self.points < 1 or self.queries < 2:
            raise ValueError(f"PrimitivesConfig needs points >= 1 and queries >= 2, got {self.points}, {self.queries}")
        if not 0 < self.near_sigma < 0.5:
            raise ValueError(f"PrimitivesConfig.near_sigma must be in (0, 0.5), got {self.near_sigma}")

    @classmethod
    def tiny(cls) -> PrimitivesConfig:
        return cls(points=64, queries=64, train_size=6, val_size=4)


def draw_params(shape: str, extent: float, rng: np.random.Generator) -> np.ndarray:
    """Parameters [3] of `shape` whose half-extent is `extent` (unused entries 0):
    sphere (r), box (half x, y, z), cylinder (r, half-height), cone (base r, half-height),
    torus (major R, minor r), capsule (r, half-length of the axis segment)."""
    e = extent
    if shape == "sphere":
        return np.array([e, 0, 0])
    if shape == "box":
        sides = rng.uniform(0.45, 1.0, 3) * e
        sides[rng.integers(3)] = e
        return sides
    if shape in ("cylinder", "cone"):
        if rng.random() < 0.5:
            return np.array([e, rng.uniform(0.45, 1.0) * e, 0])
        return np.array([rng.uniform(0.45, 1.0) * e, e, 0])
    if shape == "torus":
        minor = rng.uniform(0.2, 0.35) * e
        return np.array([e - minor, minor, 0])
    radius = rng.uniform(0.3, 0.5) * e                               # capsule: upright, z extent largest
    return np.array([radius, e - radius, 0])


def sdf(shape: str, params: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Exact signed distance of points p [..., 3] to `shape` (negative inside): [...]."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    a, b, c = params
    if shape == "sphere":
        return np.linalg.norm(p, axis=-1) - a
    if shape == "box":
        q = np.abs(p) - params
        return np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
    radial = np.hypot(x, y)
    if shape == "cylinder":
        d = np.stack([radial - a, np.abs(z) - b], -1)
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)
    if shape == "cone":                                          # base radius a at z = -b, apex at z = +b
        return _capped_cone(radial, z, b, a, 0.0)
    if shape == "torus":
        return np.hypot(radial - a, z) - b
    seg = np.clip(z, -b, b)                                      # capsule
    return np.sqrt(radial ** 2 + (z - seg) ** 2) - a


def _capped_cone(q_x: np.ndarray, q_y: np.ndarray, h: float, r1: float, r2: float) -> np.ndarray:
    """Exact distance to a capped cone of half-height h, radius r1 at y = -h and r2 at y = +h,
    in (radial, axial) coordinates."""
    k1 = np.array([r2, h])
    k2 = np.array([r2 - r1, 2 * h])
    ca_x = q_x - np.minimum(q_x, np.where(q_y < 0, r1, r2))
    ca_y = np.abs(q_y) - h
    dot = (k1[0] - q_x) * k2[0] + (k1[1] - q_y) * k2[1]
    t = np.clip(dot / (k2 @ k2), 0, 1)
    cb_x = q_x - k1[0] + k2[0] * t
    cb_y = q_y - k1[1] + k2[1] * t
    sign = np.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    return sign * np.sqrt(np.minimum(ca_x ** 2 + ca_y ** 2, cb_x ** 2 + cb_y ** 2))


def surface_points(shape: str, params: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points [n, 3] on the surface, uniform by area: marching cubes of the SDF on a GRID^3
    lattice, triangles drawn by area, a uniform point in each, then three Newton steps along the
    SDF's numerical gradient onto the exact surface."""
    axis = np.linspace(-1, 1, GRID)
    lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    pts = level_set_points(sdf(shape, params, lattice), 0.0, n, rng).astype(np.float64)
    eps = 1e-4
    for _ in range(3):
        d = sdf(shape, params, pts)
        grad = np.stack([(sdf(shape, params, pts + eps * e) - sdf(shape, params, pts - eps * e)) / (2 * eps)
                         for e in np.eye(3)], -1)
        pts = pts - d[:, None] * grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True) ** 2, 1e-12)
    return pts.astype(np.float32)


def caption(shape: str, size: int) -> str:
    return f"a {SIZES[size]} {shape}"


@register("dataset", "primitives", PrimitivesConfig)
class PrimitivesData(RowwiseDataSet):
    judge = "primitives"
    natural_conditioner = "class"
    condition_keys = ("label",)
    class_names = SHAPES
    caption_key = "captions"
    condition_text = "Each sample is drawn for the primitive (and size, with captions) it should be."

    @property
    def modality(self):
        from latentforge.modalities.points import PointsModality

        return PointsModality(self.config.points)

    def draw(self, split: str, i: int) -> tuple[str, int, np.random.Generator]:
        """Row i's class and size, and the generator that goes on to draw its proportions and points."""
        cfg = self.config
        rng = row_rng(cfg.seed, split, i)
        shape = cfg.shapes[rng.integers(len(cfg.shapes))]
        return shape, int(rng.integers(2)), rng

    def training_captions(self) -> list[str]:
        return [caption(*self.draw("train", i)[:2]) for i in range(self.config.train_size)]

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        cfg = self.config
        n = stop - start
        out = {"points": np.zeros((n, cfg.points, 3), np.float32), "queries": np.zeros((n, cfg.queries, 3), np.float32),
               "occupancy": np.zeros((n, cfg.queries), bool), "label": np.zeros(n, np.int64),
               "size": np.zeros(n, np.int64), "params": np.zeros((n, 3), np.float32)}
        captions = []
        for r, i in enumerate(range(start, stop)):
            shape, size, rng = self.draw(name, i)
            params = draw_params(shape, rng.uniform(*SIZE_BANDS[size]), rng)
            surface = surface_points(shape, params, cfg.points + cfg.queries // 2, rng)
            out["points"][r] = surface[: cfg.points]
            queries = occupancy_queries(surface[cfg.points:], cfg.queries, cfg.near_sigma, rng).astype(np.float32)
            out["queries"][r] = queries
            out["occupancy"][r] = sdf(shape, params, queries.astype(np.float64)) < 0
            out["label"][r] = SHAPES.index(shape)
            out["size"][r] = size
            out["params"][r] = params
            captions.append(caption(shape, size))
        return {**out, "captions": np.array(captions)}

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        return {"shape": (arrays["label"][:, None], len(SHAPES)), "size": (arrays["size"][:, None], 2)}
