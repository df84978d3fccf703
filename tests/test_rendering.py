"""nn/rendering.py against known answers: rays, ray-box, depths, compositing, triplane sampling."""

import math

import numpy as np
import pytest
import torch

from latentforge.nn.rendering import Camera, camera_rays, composite, in_frame_of, ray_box, sample_triplane, stratified_depths


def random_rotation(g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def camera(rotation: torch.Tensor, position: torch.Tensor, f: float = 10.0, size: int = 5) -> Camera:
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3], c2w[:3, 3] = rotation, position
    return Camera(K[None], c2w[None])


def test_centre_pixel_ray_points_along_the_view_axis():
    g = torch.Generator().manual_seed(0)
    R, pos = random_rotation(g), torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    cam = camera(R, pos, size=5)                           # odd side: pixel 12 is centred on (2.5, 2.5)
    origins, dirs = camera_rays(cam, 5, 5, torch.tensor([[12]]))
    assert torch.allclose(dirs[0, 0], R[:, 2], atol=1e-12)  # the camera's z axis in the world
    assert torch.allclose(origins[0, 0], pos)


def test_rays_project_back_onto_their_pixels():
    g = torch.Generator().manual_seed(1)
    R, pos = random_rotation(g), torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    cam = camera(R, pos, f=7.0, size=6)
    origins, dirs = camera_rays(cam, 6, 6)                 # [1, 36, 3], raster order
    points = origins + 3.7 * dirs                          # any point along each ray
    local = (points - pos) @ R                             # world -> camera frame (R^T x)
    uv = (local[..., :2] / local[..., 2:]) * 7.0 + 3.0     # pinhole projection in pixels
    j, i = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="xy")
    expected = torch.stack([j.flatten() + 0.5, i.flatten() + 0.5], -1).double()  # pixel centres, x right, y down
    assert torch.allclose(uv[0], expected, atol=1e-9)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 36, dtype=torch.float64))


def test_ray_box_enters_and_leaves_the_cube():
    origins = torch.tensor([[[0.0, 0.0, -3.0], [0.5, 0.2, 0.0], [5.0, 5.0, -3.0]]])
    dirs = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    near, far = ray_box(origins, dirs, 1.0)
    assert torch.allclose(near[0, :2], torch.tensor([2.0, 0.0]))  # from outside; from inside starts at 0
    assert torch.allclose(far[0, :2], torch.tensor([4.0, 0.5]))
    assert near[0, 2] == far[0, 2]                                # a miss: an empty segment
    diag = torch.nn.functional.normalize(torch.ones(1, 1, 3), dim=-1)
    near, far = ray_box(-3 * diag, diag, 1.0)
    assert torch.allclose(far - near, torch.tensor([[2 * math.sqrt(3)]]))  # the cube's diagonal


def test_stratified_depths_fill_their_bins():
    near, far = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 2.5]])
    t, delta = stratified_depths(near, far, 4)
    assert torch.allclose(t[0, 0], torch.tensor([1.25, 1.75, 2.25, 2.75]))
    assert torch.allclose(delta.sum(-1), far - near)
    tj, _ = stratified_depths(near, far, 4, jitter=True, generator=torch.Generator().manual_seed(0))
    lo = near[..., None] + torch.arange(4) * (far - near)[..., None] / 4
    assert ((tj >= lo) & (tj <= lo + delta)).all() and not torch.allclose(tj, t)


def test_slab_of_unit_density_transmits_exp_minus_sigma_length():
    sigma_value, S = 2.5, 40
    near, far = torch.zeros(1, 1), torch.full((1, 1), 4.0)
    t, delta = stratified_depths(near, far, S)
    inside = (t > 1.0) & (t < 2.5)                          # a slab [1, 2.5], on bin edges (width 0.1)
    sigma = torch.where(inside, sigma_value, 0.0)
    red, background = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    colour, weights = composite(sigma, red.expand(1, 1, S, 3), delta, background)
    transmitted = math.exp(-sigma_value * 1.5)
    assert weights.sum().item() == pytest.approx(1 - transmitted, rel=1e-6)
    assert torch.allclose(colour[0, 0], torch.tensor([1 - transmitted, 0.0, transmitted]), atol=1e-6)
    empty, w = composite(torch.zeros(1, 1, S), red.expand(1, 1, S, 3), delta, 0.7)
    assert torch.allclose(empty, torch.full((1, 1, 3), 0.7)) and w.abs().max() == 0


def test_front_sample_hides_what_is_behind():
    # an opaque first sample: the second colour and the background must not show
    sigma = torch.tensor([[[1e4, 1e4]]])
    rgb = torch.tensor([[[[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]]]])
    colour, _ = composite(sigma, rgb, torch.ones(1, 1, 2), 0.0)
    assert torch.allclose(colour[0, 0], rgb[0, 0, 0])


def bilinear(plane: np.ndarray, a: float, b: float) -> np.ndarray:
    """Reference: plane [C, P, P] read at normalised (a along the width, b along the height) with
    texel centres at -1 + (2k + 1) / P."""
    P = plane.shape[-1]
    x, y = ((a + 1) * P - 1) / 2, ((b + 1) * P - 1) / 2   # continuous texel coordinates
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    return ((1 - fx) * (1 - fy) * plane[:, y0, x0] + fx * (1 - fy) * plane[:, y0, x0 + 1]
            + (1 - fx) * fy * plane[:, y0 + 1, x0] + fx * fy * plane[:, y0 + 1, x0 + 1])


def test_triplane_sampling_is_bilinear_interpolation_summed_over_planes():
    g = torch.Generator().manual_seed(0)
    B, C, P, bound = 2, 3, 6, 1.5
    planes = torch.randn(B, 3, C, P, P, generator=g, dtype=torch.float64)
    # inside the outer texel centres, so no padding enters
    xyz = (torch.rand(B, 7, 3, generator=g, dtype=torch.float64) * 2 - 1) * (1 - 1 / P) * bound
    got = sample_triplane(planes, xyz, bound)                               # [B, 7, C]
    for b in range(B):
        for n in range(7):
            x, y, z = (xyz[b, n] / bound).tolist()
            pl = planes[b].numpy()
            want = bilinear(pl[0], x, y) + bilinear(pl[1], x, z) + bilinear(pl[2], y, z)
            np.testing.assert_allclose(got[b, n].numpy(), want, atol=1e-10)


def test_relative_pose_ignores_a_turn_of_the_whole_world():
    g = torch.Generator().manual_seed(3)
    ref = camera(random_rotation(g), torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64))
    other = camera(random_rotation(g), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    rel = in_frame_of(ref, other)
    assert torch.allclose(in_frame_of(ref, ref).c2w[0, :3, :3], torch.eye(3, dtype=torch.float64), atol=1e-12)
    turn = torch.eye(4, dtype=torch.float64)
    turn[:3, :3] = random_rotation(g)
    turned = in_frame_of(Camera(ref.intrinsics, turn @ ref.c2w), Camera(other.intrinsics, turn @ other.c2w))
    assert torch.allclose(turned.c2w, rel.c2w, atol=1e-12)
