"""Real meshes shipped in pybullet's wheel, as point sets with occupancy (the `points` modality).

`pybullet_data/random_urdfs/` holds 1,000 watertight random blobs (000 .. 999); every tenth is held
out for validation and testing (meshes 9, 19, ...), so no held-out shape is ever trained on. Each
mesh is centred on its bounding box and scaled so its largest half-extent is 0.9 (inside the cube
[-1, 1]^3 with a margin), then sampled like the primitives (data/primitives.py): `points` uniform by
area on the surface, `queries` half uniform in the cube and half near the surface, `occupancy` from
the sign of point-cloud-utils' signed distance (exact for a watertight mesh). Row i of a split is
mesh i mod (the split's meshes), so a split larger than its meshes sees each mesh again with other
samples. A mesh that is not watertight is repaired (trimesh's hole filling) or skipped and listed.

`meshfolder` reads the user's own `.obj/.ply/.off/.stl` files the same way (classes from subfolders);
unreadable, empty, degenerate or unrepairable files are skipped and listed in skipped.txt, like
image folders.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from latentforge.data.base import DataConfig, RowwiseDataSet
from latentforge.data.folder import FolderData
from latentforge.data.video import row_rng
from latentforge.nn.geometry import occupancy_queries, sample_mesh_surface
from latentforge.registry import register

HALF_EXTENT = 0.9
HELD_OUT_EVERY = 10
MESH_SUFFIXES = (".obj", ".ply", ".off", ".stl")


@dataclass
class MeshesConfig(DataConfig):
    name: str = "meshes"
    points: int = 2048
    queries: int = 2048
    near_sigma: float = 0.03
    meshes: int = 1000                     # how many of the random blobs to use (000 .. meshes - 1)
    train_size: int = 2048
    val_size: int = 128

    def __post_init__(self) -> None:
        if not 20 <= self.meshes <= 1000:
            raise ValueError(f"MeshesConfig.meshes must be in 20..1000 (pybullet ships 1,000), got {self.meshes}")
        if self.points < 1 or self.queries < 2:
            raise ValueError(f"MeshesConfig needs points >= 1 and queries >= 2, got {self.points}, {self.queries}")

    @classmethod
    def tiny(cls) -> "MeshesConfig":
        return cls(points=64, queries=64, meshes=20, train_size=4, val_size=3)


def normalise(vertices: np.ndarray) -> np.ndarray:
    """Centre on the bounding box, largest half-extent HALF_EXTENT."""
    low, high = vertices.min(0), vertices.max(0)
    half = float((high - low).max()) / 2
    if not np.isfinite(half) or half <= 0:
        raise ValueError("a degenerate mesh (no extent)")
    return (vertices - (low + high) / 2) * (HALF_EXTENT / half)


def load_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3] float64 normalised, faces [F, 3] int32) of a watertight mesh file, repaired
    when holes can be filled; a ValueError saying what is wrong otherwise."""
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh")
    except Exception as err:  # trimesh raises many kinds for a bad file
        raise ValueError(f"unreadable mesh: {type(err).__name__}: {err}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError("no triangles")
    if not np.isfinite(mesh.vertices).all():
        raise ValueError("non-finite vertex coordinates")
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
        if not mesh.is_watertight:
            raise ValueError("not watertight (holes could not be filled): occupancy is undefined")
    return normalise(np.asarray(mesh.vertices, np.float64)), np.asarray(mesh.faces, np.int32)


def sample_shape(vertices: np.ndarray, faces: np.ndarray, points: int, queries: int, near_sigma: float,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One row: surface points [P, 3], queries [Q, 3] and their occupancy [Q]."""
    import point_cloud_utils as pcu

    surface = sample_mesh_surface(vertices, faces, points + queries // 2, rng)
    q = occupancy_queries(surface[points:], queries, near_sigma, rng)
    signed, _, _ = pcu.signed_distance_to_mesh(np.ascontiguousarray(q), vertices, faces)
    return {"points": surface[:points].astype(np.float32), "queries": q.astype(np.float32), "occupancy": signed < 0}


@lru_cache(maxsize=4)
def blob_meshes(count: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """(train ids, held-out ids, skipped 'id: reason') among random_urdfs 000 .. count - 1; the
    skipped ones are listed once per process."""
    train, held, skipped = [], [], []
    for i in range(count):
        try:
            load_mesh(blob_path(i))
        except ValueError as err:
            skipped.append(f"{i:03d}: {err}")
            continue
        (held if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else train).append(i)
    if skipped:
        print(f"[data] meshes: skipped {len(skipped)} of {count} pybullet blobs: {'; '.join(skipped)}", file=sys.stderr)
    return tuple(train), tuple(held), tuple(skipped)


def blob_path(i: int) -> Path:
    import pybullet_data

    return Path(pybullet_data.getDataPath()) / "random_urdfs" / f"{i:03d}" / f"{i:03d}.obj"


@register("dataset", "meshes", MeshesConfig)
class MeshesData(RowwiseDataSet):
    condition_text = "unconditional samples"

    @property
    def modality(self):
        from latentforge.modalities.points import PointsModality

        return PointsModality(self.config.points)

    def meshes_of(self, split: str) -> tuple[int, ...]:
        train, held, _ = blob_meshes(self.config.meshes)
        return train if split == "train" else held

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        cfg = self.config
        ids = self.meshes_of(name)
        out: dict[str, list] = {"points": [], "queries": [], "occupancy": [], "mesh": []}
        for i in range(start, stop):
            mesh_id = ids[i % len(ids)]
            # test rows draw other samples of the held-out meshes than val rows
            rng = row_rng(cfg.seed, name, i)
            row = sample_shape(*load_mesh(blob_path(mesh_id)), cfg.points, cfg.queries, cfg.near_sigma, rng)
            for key, value in row.items():
                out[key].append(value)
            out["mesh"].append(mesh_id)
        return {k: np.stack(v) if k != "mesh" else np.array(v, np.int64) for k, v in out.items()}


@dataclass
class MeshFolderConfig(DataConfig):
    name: str = "meshfolder"
    path: str = ""                          # the folder (searched recursively)
    points: int = 2048
    queries: int = 2048
    near_sigma: float = 0.03
    labels: str = "auto"                    # auto: classes from first-level subfolders; "none"
    val_fraction: float = 0.1
    strict: bool = False                    # stop at the first file that does not load

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.labels not in ("auto", "none"):
            raise ValueError(f"labels must be 'auto' or 'none', got {self.labels!r}")

    @classmethod
    def tiny(cls) -> "MeshFolderConfig":
        """A user's folder in the temp directory (made once): four of pybullet's blobs, a file that is
        not a mesh and an open surface (one triangle), for the registry's contract tests."""
        import shutil
        import tempfile

        root = Path(tempfile.gettempdir()) / "latentforge-meshfolder-tiny"
        if not (root / "open.obj").is_file():
            root.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                shutil.copy(blob_path(i), root / f"blob{i}.obj")
            (root / "broken.ply").write_text("this is not a mesh\n")
            (root / "open.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
        return cls(path=str(root), points=32, queries=32, labels="none", val_fraction=0.25)


@register("dataset", "meshfolder", MeshFolderConfig)
class MeshFolderData(FolderData):
    """A folder of .obj / .ply / .off / .stl meshes, each loaded by `load_mesh` (repaired or skipped
    and listed when not watertight) and sampled once into points, queries and occupancy (packed as
    [P + Q, 4] per file in the decode cache: xyz, and the queries' occupancy in the last column)."""

    extensions = MESH_SUFFIXES
    noun = "mesh"
    nouns = "meshes"
    example = "~/my_meshes"

    @property
    def modality(self):
        from latentforge.modalities.points import PointsModality

        return PointsModality(self.config.points)

    def decode_file(self, path: Path) -> np.ndarray:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, int.from_bytes(path.name.encode()[:8].ljust(8, b"\0"), "little")])
        row = sample_shape(*load_mesh(path), cfg.points, cfg.queries, cfg.near_sigma, rng)
        packed = np.zeros((cfg.points + cfg.queries, 4), np.float32)
        packed[: cfg.points, :3] = row["points"]
        packed[cfg.points:, :3] = row["queries"]
        packed[cfg.points:, 3] = row["occupancy"]
        return packed

    def decode_fields(self) -> dict:
        cfg = self.config
        return {"points": cfg.points, "queries": cfg.queries, "near_sigma": cfg.near_sigma, "seed": cfg.seed}

    def split(self, name: str) -> dict[str, np.ndarray]:
        out = super().split(name)
        packed, P = out.pop("points"), self.config.points
        return {"points": np.ascontiguousarray(packed[:, :P, :3]), "queries": np.ascontiguousarray(packed[:, P:, :3]),
                "occupancy": packed[:, P:, 3] > 0.5, **out}
