"""Multi-view renders with exactly known cameras: the novel-view models' data (views/nvist.py).

Each object is a coloured 3D shape centred at the origin: a procedural primitive (data/primitives.py:
sphere, box, cylinder, cone, torus or capsule, its class and size drawn as there) or one of
pybullet's random_urdfs blobs (data/meshes.py, with its split: held-out meshes are never in train).
It is seen from `views` cameras on spheres around it, each with its own azimuth, elevation and
distance, all looking at the origin with the world's z up; every view has the same field of view,
so a farther camera sees a smaller object (which is why a model must be told the distance).

Rendering is pybullet's CPU TinyRenderer (`connect(DIRECT)`, `getCameraImage(renderer=
ER_TINY_RENDERER)`) with view and projection matrices computed here from the pose, so the camera
is exact: a render at `supersample` times the side, the background set from the segmentation
mask, then a box filter down to `size` (antialiased edges, as a volume renderer's pixels are).
The light is fixed in the world and has no specular part, so an object's colour at a surface point
does not depend on the viewpoint (what a triplane radiance field can represent).

A split is a dict of arrays, row i a pure function of (config, split, i):
    images      uint8   [N, V, S, S, 3]   the renders, background `BACKGROUND`
    c2w         float32 [N, V, 4, 4]      camera-to-world poses (OpenCV axes, nn/rendering.py)
    intrinsics  float32 [N, V, 3, 3]      pixels
    label       int64   [N]               primitives' class index in SHAPES, len(SHAPES) for a blob
    mesh        int64   [N]               the blob's id, -1 for a primitive
    colour      float32 [N, 3]            the object's base colour in [0, 1]
Splits are cached as .npz under $LATENTFORGE_CACHE/data/ keyed by the config.

Legend: N objects, V views, S image side.
"""

from __future__ import annotations

import colorsys
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentforge.atomic import write_npz
from latentforge.data.base import check_split
from latentforge.data.meshes import blob_meshes, blob_path, load_mesh
from latentforge.data.primitives import SHAPES, SIZE_BANDS, draw_params
from latentforge.data.store import cache_root
from latentforge.data.video import row_rng

BACKGROUND = (255, 255, 255)
BLOB = len(SHAPES)                          # the label of a pybullet blob
LIGHT = (0.4, 0.3, 1.0)                     # world direction towards the light
NEAR, FAR = 0.05, 20.0                      # clipping planes of the renderer's projection


@dataclass(frozen=True)
class MultiViewConfig:
    objects: int = 600                      # objects in the train split
    held_out: int = 60                      # objects in the val and test splits
    views: int = 6                          # V cameras an object
    size: int = 32                          # S image side
    fov: float = 45.0                       # vertical = horizontal field of view, degrees
    distance: tuple[float, float] = (2.4, 4.0)     # camera distance range from the object's centre
    elevation: tuple[float, float] = (-15.0, 60.0)  # degrees above the xy plane
    blob_fraction: float = 0.5              # share of objects that are pybullet blobs
    meshes: int = 1000                      # random_urdfs blobs to draw from (000 .. meshes - 1)
    supersample: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "distance", tuple(self.distance))
        object.__setattr__(self, "elevation", tuple(self.elevation))
        lo, hi = self.distance
        # the cube [-1, 1]^3 (every object fits it) must stay in front of the camera
        if not 1.8 < lo <= hi:
            raise ValueError(f"MultiViewConfig.distance must satisfy 1.8 < lo <= hi, got {self.distance}")
        if not -89 < self.elevation[0] <= self.elevation[1] < 89:
            raise ValueError(f"MultiViewConfig.elevation must lie within (-89, 89) degrees, got {self.elevation}")
        if self.views < 2 or self.objects < 1 or self.held_out < 1 or self.size < 4 or self.supersample < 1:
            raise ValueError("MultiViewConfig needs views >= 2, objects >= 1, held_out >= 1, size >= 4, supersample >= 1")
        if not 0 <= self.blob_fraction <= 1:
            raise ValueError(f"MultiViewConfig.blob_fraction must be in [0, 1], got {self.blob_fraction}")

    @classmethod
    def tiny(cls) -> MultiViewConfig:
        return cls(objects=4, held_out=2, views=4, meshes=20)

    @property
    def focal(self) -> float:
        """Focal length in pixels of the `size`-pixel image."""
        return 0.5 * self.size / np.tan(np.radians(self.fov) / 2)

    def intrinsics(self) -> np.ndarray:
        f, c = self.focal, self.size / 2
        return np.array([[f, 0, c], [0, f, c], [0, 0, 1]], np.float32)


# ------------------------------------------------------------------------------------- cameras

def look_at(eye: np.ndarray, target: np.ndarray = np.zeros(3), up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Camera-to-world [4, 4] (OpenCV: x right, y down, z forward) of a camera at eye looking at target."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], 1)
    c2w[:3, 3] = eye
    return c2w


def orbit(azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """Camera-to-world [4, 4] on the sphere of radius `distance` (angles in radians), looking at the origin."""
    eye = distance * np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                               np.sin(elevation)])
    return look_at(eye)


def draw_cameras(cfg: MultiViewConfig, rng: np.random.Generator) -> np.ndarray:
    """V camera-to-world poses [V, 4, 4], each at its own azimuth, elevation and distance."""
    az = rng.uniform(0, 2 * np.pi, cfg.views)
    el = np.radians(rng.uniform(*cfg.elevation, cfg.views))
    dist = rng.uniform(*cfg.distance, cfg.views)
    return np.stack([orbit(a, e, d) for a, e, d in zip(az, el, dist)])


# ------------------------------------------------------------------------------------- objects

def primitive_mesh(shape: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3], faces [F, 3]) of a primitive with data/primitives.py's parameters, placed
    as its `sdf` places it (upright along z, centred; the cone's base at z = -half-height)."""
    import trimesh

    a, b, c = (float(v) for v in params)
    if shape == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3, radius=a)
    elif shape == "box":
        mesh = trimesh.creation.box(extents=2 * np.asarray(params, np.float64))
    elif shape == "cylinder":
        mesh = trimesh.creation.cylinder(radius=a, height=2 * b, sections=32)
    elif shape == "cone":                     # trimesh's cone stands on z = 0
        mesh = trimesh.creation.cone(radius=a, height=2 * b, sections=32)
        mesh.apply_translation([0, 0, -b])
    elif shape == "torus":
        mesh = trimesh.creation.torus(major_radius=a, minor_radius=b, major_sections=32, minor_sections=16)
    elif shape == "capsule":                  # trimesh's height is the distance between the caps' centres
        mesh = trimesh.creation.capsule(height=2 * b, radius=a, count=[16, 16])
    else:
        raise ValueError(f"unknown primitive {shape!r}; expected one of {', '.join(SHAPES)}")
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32)


def draw_object(cfg: MultiViewConfig, split: str, i: int) -> dict:
    """Object i of a split: its mesh, label, blob id, colour and cameras, from (seed, split, i) alone."""
    rng = row_rng(cfg.seed, split, i)
    if rng.random() < cfg.blob_fraction:
        train, held, _ = blob_meshes(cfg.meshes)
        ids = train if split == "train" else held
        mesh_id = int(ids[rng.integers(len(ids))])
        verts, faces = load_mesh(blob_path(mesh_id))
        label = BLOB
    else:
        shape = SHAPES[rng.integers(len(SHAPES))]
        params = draw_params(shape, rng.uniform(*SIZE_BANDS[rng.integers(2)]), rng)
        verts, faces = primitive_mesh(shape, params)
        label, mesh_id = SHAPES.index(shape), -1
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.55, 0.95)
    colour = np.array(colorsys.hsv_to_rgb(hue, sat, val))
    return {"vertices": verts, "faces": faces, "label": label, "mesh": mesh_id, "colour": colour,
            "c2w": draw_cameras(cfg, rng)}


# ------------------------------------------------------------------------------------- rendering

def gl_view_matrix(c2w: np.ndarray) -> list[float]:
    """pybullet's view matrix (OpenGL: y up, looking along -z; column-major) of an OpenCV pose."""
    w2c = np.linalg.inv(c2w)
    return (np.diag([1.0, -1.0, -1.0, 1.0]) @ w2c).T.reshape(-1).tolist()


class Renderer:
    """One pybullet CPU renderer (a DIRECT connection, made once: connecting costs more than
    rendering an object's views); `with Renderer() as r: r.render(...)`."""

    def __enter__(self) -> Renderer:
        import pybullet as pb

        self.pb = pb
        self.client = pb.connect(pb.DIRECT)
        return self

    def __exit__(self, *exc) -> None:
        self.pb.disconnect(self.client)

    def render(self, vertices: np.ndarray, faces: np.ndarray, colour: np.ndarray, c2w: np.ndarray, size: int,
               fov: float, supersample: int = 2) -> np.ndarray:
        """Views uint8 [V, size, size, 3] of one mesh (vertices [V', 3], faces [F, 3], colour [3] in
        [0, 1]) from cameras c2w [V, 4, 4], on the white background."""
        pb, client = self.pb, self.client
        side = size * supersample
        pb.resetSimulation(physicsClientId=client)                      # the previous object goes
        shape = pb.createVisualShape(pb.GEOM_MESH, vertices=np.asarray(vertices, np.float64).tolist(),
                                     indices=np.asarray(faces).reshape(-1).tolist(),
                                     rgbaColor=[*map(float, colour), 1.0], physicsClientId=client)
        pb.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, physicsClientId=client)
        projection = pb.computeProjectionMatrixFOV(fov, 1.0, NEAR, FAR, physicsClientId=client)
        out = np.empty((len(c2w), size, size, 3), np.uint8)
        for v, pose in enumerate(c2w):
            _, _, rgba, _, seg = pb.getCameraImage(side, side, gl_view_matrix(pose), projection, shadow=0,
                                                   lightDirection=list(LIGHT), lightAmbientCoeff=0.55,
                                                   lightDiffuseCoeff=0.45, lightSpecularCoeff=0.0,
                                                   renderer=pb.ER_TINY_RENDERER, physicsClientId=client)
            rgb = np.asarray(rgba, np.float64).reshape(side, side, 4)[..., :3]
            rgb[np.asarray(seg).reshape(side, side) < 0] = BACKGROUND    # no object: exact background
            # box filter: each output pixel is the mean of its supersample x supersample block
            rgb = rgb.reshape(size, supersample, size, supersample, 3).mean((1, 3))
            out[v] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return out


def render_rows(cfg: MultiViewConfig, split: str, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows start..stop-1 of a split (see the module docstring)."""
    check_split(split)
    n = stop - start
    out = {"images": np.zeros((n, cfg.views, cfg.size, cfg.size, 3), np.uint8),
           "c2w": np.zeros((n, cfg.views, 4, 4), np.float32),
           "intrinsics": np.broadcast_to(cfg.intrinsics(), (n, cfg.views, 3, 3)).copy(),
           "label": np.zeros(n, np.int64), "mesh": np.zeros(n, np.int64), "colour": np.zeros((n, 3), np.float32)}
    with Renderer() as renderer:
        for r, i in enumerate(range(start, stop)):
            obj = draw_object(cfg, split, i)
            out["images"][r] = renderer.render(obj["vertices"], obj["faces"], obj["colour"], obj["c2w"], cfg.size,
                                               cfg.fov, cfg.supersample)
            out["c2w"][r] = obj["c2w"]
            out["label"][r], out["mesh"][r], out["colour"][r] = obj["label"], obj["mesh"], obj["colour"]
    return out


def cache_path(cfg: MultiViewConfig, split: str) -> Path:
    key = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), split, 1]).encode()).hexdigest()[:16]
    return cache_root() / "data" / f"multiview-{split}-{key}.npz"


def load_multiview(cfg: MultiViewConfig, split: str, cache: bool = True) -> dict[str, np.ndarray]:
    """A split (`objects` rows for train, `held_out` for val and test), rendered once and cached."""
    check_split(split)
    path = cache_path(cfg, split)
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            pass                                # unreadable cache: render again
    rows = render_rows(cfg, split, 0, cfg.objects if split == "train" else cfg.held_out)
    if cache:
        write_npz(path, **rows)
    return rows


# ------------------------------------------------------------------------------------- training pairs

def view_pairs(split: dict[str, np.ndarray], rng: np.random.Generator, batch: int,
               objects: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A batch of (input view, another view of the same object): `image`/`target` uint8 [B, S, S, 3]
    and their cameras `input_c2w`/`target_c2w` [B, 4, 4], `input_K`/`target_K` [B, 3, 3].

    Args:
        objects: the rows to draw from (default: all of the split).
    """
    pool = np.arange(len(split["images"])) if objects is None else np.asarray(objects)
    rows = pool[rng.integers(len(pool), size=batch)]
    V = split["images"].shape[1]
    src = rng.integers(V, size=batch)
    dst = (src + rng.integers(1, V, size=batch)) % V        # never the input view itself
    return {"image": split["images"][rows, src], "target": split["images"][rows, dst],
            "input_c2w": split["c2w"][rows, src], "target_c2w": split["c2w"][rows, dst],
            "input_K": split["intrinsics"][rows, src], "target_K": split["intrinsics"][rows, dst]}
