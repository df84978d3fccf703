"""Differentiable volume rendering of a triplane: camera rays, samples along them, triplane
features at the samples, and alpha compositing (NeRF, Mildenhall et al. 2020; triplanes from EG3D,
Chan et al. 2022). Shared by the novel-view models (views/) and their data (data/multiview.py
renders with the same camera convention, so a pose means the same thing in both).

Camera convention (OpenCV): a camera-to-world matrix `c2w` [4, 4] maps camera coordinates to the
world; in camera coordinates x points right, y down and z forward, along the view axis. Intrinsics
K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] in pixels; pixel (row i, column j) spans [j, j + 1) x
[i, i + 1), so its centre is (j + 0.5, i + 0.5) and a centred camera has cx = W / 2, cy = H / 2.

Legend: B batch, R rays, S samples a ray, C feature channels, P plane side, N points.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Camera(NamedTuple):
    """A batch of pinhole cameras: intrinsics [B, 3, 3] (pixels) and camera-to-world poses [B, 4, 4]."""

    intrinsics: Tensor
    c2w: Tensor

    @property
    def position(self) -> Tensor:
        return self.c2w[:, :3, 3]                                           # [B, 3]


def in_frame_of(reference: Camera, camera: Camera) -> Camera:
    """`camera` expressed in the frame of `reference`'s rotation: the world turned so that the
    reference camera's axes are the coordinate axes, the world origin kept. For cameras looking at
    the origin (the object's centre), the reference then sits at (0, 0, -d) looking along +z, and
    only the relative pose and d remain: the world's own orientation is never seen."""
    turn = torch.eye(4, dtype=camera.c2w.dtype, device=camera.c2w.device).repeat(len(camera.c2w), 1, 1)
    turn[:, :3, :3] = reference.c2w[:, :3, :3].transpose(1, 2)              # R_ref^T
    return Camera(camera.intrinsics, turn @ camera.c2w)


def camera_rays(camera: Camera, height: int, width: int, pixels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres: origins [B, R, 3] and unit directions [B, R, 3] in world space.

    Args:
        pixels: [B, R] int64 flat indices (row * width + column) of the pixels to cast, e.g. a
            random batch for training; None casts every pixel in raster order (R = H * W).
    """
    K, c2w = camera
    B = c2w.shape[0]
    if pixels is None:
        pixels = torch.arange(height * width, device=c2w.device).expand(B, -1)
    u = (pixels % width).to(c2w.dtype) + 0.5                                # [B, R] column centres
    v = torch.div(pixels, width, rounding_mode="floor").to(c2w.dtype) + 0.5  # [B, R] row centres
    fx, fy, cx, cy = K[:, 0, 0, None], K[:, 1, 1, None], K[:, 0, 2, None], K[:, 1, 2, None]
    local = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)  # [B, R, 3] camera frame
    dirs = local @ c2w[:, :3, :3].transpose(1, 2)                           # rotate into the world
    origins = c2w[:, None, :3, 3].expand_as(dirs)
    return origins, F.normalize(dirs, dim=-1)


def ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Where rays enter and leave the cube [-bound, bound]^3 (slab method): near, far [B, R] as
    distances along the unit directions. A ray that misses gets near == far (an empty segment, so
    it renders pure background)."""
    # a direction component of exactly 0 would divide to ±inf, which the min/max below handle,
    # but 0 * inf = nan for an origin on the slab's plane: nudge it
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0)                      # [B, R] last entry
    far = torch.maximum(t0, t1).amin(-1)                                    # [B, R] first exit
    return near, torch.maximum(far, near)


def stratified_depths(near: Tensor, far: Tensor, samples: int, jitter: bool = False,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """S depths a ray in S equal bins between near and far [B, R], and each bin's width.

    Returns (t [B, R, S], delta [B, R, S]). Without jitter each sample is its bin's centre (a
    deterministic render); with jitter it is uniform in its bin (training: over many steps the
    network is queried everywhere, not on a fixed lattice). The bin width is the length each
    sample's density acts over, so a constant density σ over the segment gives a transmittance of
    exactly exp(-σ (far - near)).
    """
    frac = torch.arange(samples, device=near.device, dtype=near.dtype)     # [S]
    if jitter:
        offset = torch.rand((*near.shape, samples), device=near.device, dtype=near.dtype, generator=generator)
    else:
        offset = torch.full((*near.shape, samples), 0.5, device=near.device, dtype=near.dtype)
    width = ((far - near) / samples)[..., None]                             # [B, R, 1]
    t = near[..., None] + (frac + offset) * width                           # [B, R, S]
    return t, width.expand_as(t)


def sample_triplane(planes: Tensor, xyz: Tensor, bound: float) -> Tensor:
    """Bilinear features of points xyz [B, N, 3] in [-bound, bound]^3 from three axis-aligned planes
    planes [B, 3, C, P, P] (the xy, xz and yz planes), summed: [B, N, C].

    Plane k's first grid axis (its width) is the first coordinate it names and its second (its
    height) the second one: the xy plane is read at (x, y), xz at (x, z), yz at (y, z). Texel
    (row r, column q) covers [-1 + 2q/P, -1 + 2(q+1)/P] x [...] of the normalised plane and its
    value sits at the cell's centre (grid_sample's align_corners=False); points off the planes
    read zeros.
    """
    B, three, C, P, _ = planes.shape
    if three != 3:
        raise ValueError(f"sample_triplane: expected 3 planes [B, 3, C, P, P], got {list(planes.shape)}")
    unit = xyz / bound                                                      # [B, N, 3] in [-1, 1]
    coords = torch.stack([unit[..., [0, 1]], unit[..., [0, 2]], unit[..., [1, 2]]], 1)  # [B, 3, N, 2]
    grids = coords.reshape(B * 3, 1, -1, 2)                                 # [3B, 1, N, 2]
    feats = F.grid_sample(planes.reshape(B * 3, C, P, P), grids, mode="bilinear", padding_mode="zeros",
                          align_corners=False)                              # [3B, C, 1, N]
    return feats.view(B, 3, C, -1).sum(1).transpose(1, 2)                   # [B, N, C]


def composite(sigma: Tensor, rgb: Tensor, delta: Tensor, background: Tensor | float) -> tuple[Tensor, Tensor]:
    """Alpha compositing front to back along each ray (NeRF's quadrature).

    alpha_i = 1 - exp(-σ_i δ_i); T_i = Π_{j<i} (1 - alpha_j) the light that reaches sample i;
    colour = Σ T_i alpha_i c_i + T_S * background, T_S the light that passes the whole ray.

    Args:
        sigma: densities [B, R, S] (>= 0), rgb: colours [B, R, S, 3], delta: bin widths [B, R, S].
        background: a colour [3] (or a grey level) seen through what is left.
    Returns:
        colour [B, R, 3] and the weights T_i alpha_i [B, R, S] (their sum is the opacity).
    """
    # in fp32 under any autocast: exp of a sum of many small terms loses the background in bf16
    with torch.autocast(sigma.device.type, enabled=False):
        optical = sigma.float() * delta.float()                             # [B, R, S]
        alpha = 1 - torch.exp(-optical)
        # exclusive cumulative sum: the light reaching sample i has crossed samples 0..i-1 only
        before = torch.cumsum(optical, -1) - optical
        weights = alpha * torch.exp(-before)                                # [B, R, S]
        left = torch.exp(-optical.sum(-1, keepdim=True))                    # [B, R, 1] transmittance
        background = torch.as_tensor(background, dtype=torch.float32, device=sigma.device)
        colour = (weights[..., None] * rgb.float()).sum(-2) + left * background
    return colour.to(rgb.dtype), weights
