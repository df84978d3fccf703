"""Point-set geometry shared by the 3D data, tokenizers and pretraining: Fourier features of
coordinates, farthest point sampling, k nearest neighbours, and surfaces (area-uniform samples of a
triangle mesh; the 0.5 level set of an occupancy grid by marching cubes).

Legend: B shapes, P points, M sampled points, F Fourier frequencies. Coordinates live in [-1, 1]^3.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


class FourierPointEmbedding(nn.Module):
    """xyz [..., 3] -> [..., dim]: [x, sin(2^k π x), cos(2^k π x)] for k < bands, then a Linear
    (3DShape2VecSet's point embedding; without the raw x a network cannot tell +x from -x at
    coarse bands)."""

    def __init__(self, dim: int, bands: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(bands)) * math.pi, persistent=False)
        self.proj = nn.Linear(3 + 6 * bands, dim)

    def forward(self, xyz: Tensor) -> Tensor:
        angles = (xyz[..., None] * self.freqs).flatten(-2)                 # [..., 3F]
        return self.proj(torch.cat([xyz, angles.sin(), angles.cos()], -1))


def farthest_point_sample(points: Tensor, m: int, start: Tensor | None = None) -> Tensor:
    """Indices [B, M] of m points of points [B, P, 3], each the farthest from those already taken
    (the first: `start` [B], default index 0, so the result is deterministic)."""
    B, P, _ = points.shape
    if not 1 <= m <= P:
        raise ValueError(f"farthest_point_sample: need 1 <= m <= {P} points, got m = {m}")
    idx = torch.zeros(B, m, dtype=torch.long, device=points.device)
    idx[:, 0] = 0 if start is None else start
    nearest = torch.full((B, P), float("inf"), device=points.device, dtype=points.dtype)
    rows = torch.arange(B, device=points.device)
    for i in range(1, m):
        last = points[rows, idx[:, i - 1]]                                  # [B, 3]
        nearest = torch.minimum(nearest, (points - last[:, None]).square().sum(-1))
        idx[:, i] = nearest.argmax(1)
    return idx


def knn(points: Tensor, centres: Tensor, k: int) -> Tensor:
    """Indices [B, M, k] of the k points of points [B, P, 3] nearest each centre [B, M, 3]."""
    return torch.cdist(centres, points).topk(k, dim=-1, largest=False).indices


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """points [B, P, C] at indices [B, *S] -> [B, *S, C]."""
    B = points.shape[0]
    flat = idx.reshape(B, -1)
    out = points.gather(1, flat[..., None].expand(-1, -1, points.shape[-1]))
    return out.view(*idx.shape, points.shape[-1])


def sample_mesh_surface(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points [n, 3] uniform by area on a triangle mesh (vertices [V, 3], faces [T, 3])."""
    tri = verts[faces]                                                      # [T, 3, 3]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    if not len(tri) or area.sum() <= 0:
        raise ValueError("sample_mesh_surface: the mesh has no area")
    pick = rng.choice(len(tri), n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[pick]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])


def occupancy_queries(near_surface: np.ndarray, total: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """total query points [total, 3]: the surface points `near_surface` [total // 2, 3] jittered by
    N(0, sigma), after total - total // 2 points uniform in the cube (the 3D data sets' queries)."""
    near = near_surface + rng.normal(0, sigma, (total // 2, 3))
    return np.concatenate([rng.uniform(-1, 1, (total - total // 2, 3)), near])


def grid_points(resolution: int) -> Tensor:
    """The centres-and-corners lattice of [-1, 1]^3 with `resolution` points a side: [R^3, 3]."""
    axis = torch.linspace(-1, 1, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def level_set_points(values: np.ndarray, level: float, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """n points [n, 3] uniform by area on the `level` iso-surface of a field sampled on the
    `grid_points(R)` lattice (values [R, R, R]), by marching cubes; None when the field never
    crosses the level (an empty or full shape)."""
    from skimage.measure import marching_cubes

    if not values.min() < level < values.max():
        return None
    R = values.shape[0]
    verts, faces, _, _ = marching_cubes(values, level=level, spacing=(2 / (R - 1),) * 3)
    return (sample_mesh_surface(verts - 1.0, faces, n, rng)).astype(np.float32)
