"""data/multiview.py: the renders agree with the cameras they are stored with, rows are seeded."""

import dataclasses

import numpy as np
import pytest
import trimesh

from latentforge.data.meshes import blob_meshes
from latentforge.data.multiview import (
    BLOB,
    MultiViewConfig,
    Renderer,
    cache_path,
    draw_cameras,
    load_multiview,
    look_at,
    primitive_mesh,
    render_rows,
    view_pairs,
)
from latentforge.data.primitives import SHAPES, draw_params, sdf


def test_look_at_is_an_opencv_pose_facing_the_target():
    eye = np.array([1.0, -2.0, 1.5])
    c2w = look_at(eye)
    R = c2w[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R[:, 2], -eye / np.linalg.norm(eye))   # z forward, at the origin
    assert R[:, 1] @ np.array([0, 0, 1.0]) < 0                        # y down: against the world's up
    np.testing.assert_allclose(c2w[:3, 3], eye)


def test_an_off_centre_sphere_appears_where_the_camera_says():
    """Known answer: the silhouette centroid of a small sphere at p is p's projection by K and c2w."""
    cfg = MultiViewConfig(size=32, distance=(2.5, 3.5), views=5)
    centre = np.array([0.45, -0.3, 0.25])
    verts, faces = primitive_mesh("sphere", np.array([0.12, 0, 0]))
    cameras = draw_cameras(cfg, np.random.default_rng(0))
    with Renderer() as r:
        images = r.render(verts + centre, faces, np.array([0.8, 0.1, 0.1]), cameras, cfg.size, cfg.fov, supersample=4)
    K = cfg.intrinsics()
    for image, c2w in zip(images, cameras):
        ink = 1 - image.astype(np.float64).mean(-1) / 255       # coverage of each pixel, background 0
        rows, cols = np.mgrid[: cfg.size, : cfg.size] + 0.5      # pixel centres
        seen = np.array([(ink * cols).sum(), (ink * rows).sum()]) / ink.sum()
        local = np.linalg.inv(c2w) @ np.append(centre, 1.0)
        projected = (K @ (local[:3] / local[2]))[:2]
        # a sphere's image is an ellipse whose centre sits slightly off the projected centre
        # (perspective); for this small sphere that is well under a pixel
        np.testing.assert_allclose(seen, projected, atol=0.35)


@pytest.mark.parametrize("shape", SHAPES)
def test_primitive_meshes_lie_on_their_exact_sdf(shape):
    rng = np.random.default_rng(SHAPES.index(shape))
    params = draw_params(shape, 0.8, rng)
    verts, faces = primitive_mesh(shape, params)
    assert np.abs(sdf(shape, params, verts)).max() < 1e-6
    assert trimesh.Trimesh(verts, faces).is_watertight


def test_rows_are_seeded_and_independent_of_each_other():
    cfg = MultiViewConfig.tiny()
    both = render_rows(cfg, "train", 0, 2)
    second = render_rows(cfg, "train", 1, 2)
    for key, value in second.items():
        np.testing.assert_array_equal(value[0], both[key][1])
    assert both["images"].shape == (2, cfg.views, cfg.size, cfg.size, 3) and both["images"].dtype == np.uint8
    assert not np.array_equal(render_rows(cfg, "test", 0, 1)["images"], both["images"][:1])
    # every view sees the object and its border is background
    assert (both["images"] < 250).any(axis=(2, 3, 4)).all()
    assert (both["images"][:, :, 0] == 255).mean() > 0.9


def test_held_out_objects_never_use_training_blobs():
    cfg = dataclasses.replace(MultiViewConfig.tiny(), blob_fraction=1.0, held_out=3)
    train_ids, held_ids, _ = blob_meshes(cfg.meshes)
    test = render_rows(cfg, "test", 0, 3)
    assert (test["label"] == BLOB).all() and set(test["mesh"]) <= set(held_ids) and not set(test["mesh"]) & set(train_ids)


def test_split_is_cached_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path))
    cfg = MultiViewConfig.tiny()
    first = load_multiview(cfg, "val")
    assert cache_path(cfg, "val").is_file() and str(cache_path(cfg, "val")).startswith(str(tmp_path))
    again = load_multiview(cfg, "val")
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert first["images"].shape[0] == cfg.held_out


def test_view_pairs_never_pair_a_view_with_itself():
    cfg = MultiViewConfig.tiny()
    split = render_rows(cfg, "train", 0, 2)
    pairs = view_pairs(split, np.random.default_rng(0), 64)
    assert pairs["image"].shape == (64, cfg.size, cfg.size, 3)
    assert not (pairs["input_c2w"] == pairs["target_c2w"]).all(axis=(1, 2)).any()


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="distance"):
        MultiViewConfig(distance=(1.0, 2.0))
