"""3D primitives (the point-set modality's known-answer data): exact SDFs (signs, surface samples
on the surface), occupancy labels, the judge reading every real shape right and refusing noise,
and the modality's checks, renders and order-free vectors."""

import numpy as np
import pytest

from latentforge.data.primitives import SHAPES, PrimitivesConfig, PrimitivesData, draw_params, sdf
from latentforge.eval.primitive_fit import primitive_adherence, read_primitives


@pytest.fixture(scope="module")
def val():
    return PrimitivesData(PrimitivesConfig(points=384, queries=256, train_size=4, val_size=48)).split("val")


def test_sdfs_are_exact_on_known_points():
    # a point's distance to each upright shape, worked by hand
    p = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    assert np.allclose(sdf("sphere", np.array([1.0, 0, 0]), p), [-1, 1, 1])
    assert np.allclose(sdf("box", np.array([1.0, 0.5, 0.25]), p), [-0.25, 1, 1.75])
    assert np.allclose(sdf("cylinder", np.array([0.5, 1.0, 0]), p), [-0.5, 1.5, 1])
    assert np.allclose(sdf("torus", np.array([0.6, 0.2, 0]), p), [0.4, np.hypot(1.4, 0) - 0.2, np.hypot(0.6, 2) - 0.2])
    assert np.allclose(sdf("capsule", np.array([0.3, 0.5, 0]), p), [-0.3, 1.7, 1.2])
    # cone: base radius 1 at z = -1, apex at z = +1; the apex is on the surface, the base centre too
    cone = np.array([1.0, 1.0, 0])
    assert np.allclose(sdf("cone", cone, np.array([[0, 0, 1.0], [0, 0, -1.0], [0, 0, 2.0]])), [0, 0, 1], atol=1e-12)
    assert sdf("cone", cone, np.array([[0, 0, 0.0]]))[0] < 0


def test_every_shape_is_sampled_on_its_surface_within_its_size_band(val):
    for shape_id, params, points, size in zip(val["label"], val["params"], val["points"], val["size"]):
        shape = SHAPES[shape_id]
        assert np.abs(sdf(shape, params.astype(np.float64), points.astype(np.float64))).max() < 1e-4, shape
        half = np.abs(points).max()
        assert (0.44 < half < 0.61) if size == 0 else (0.79 < half < 0.96), (shape, size, half)
    # occupancy labels agree with the SDF's sign, and both classes occur
    inside = val["occupancy"]
    assert 0.05 < inside.mean() < 0.6
    assert set(val["label"].tolist()) == set(range(len(SHAPES)))
    assert [str(c) for c in val["captions"][:2]] == [f"a {('small', 'large')[s]} {SHAPES[k]}"
                                                     for k, s in zip(val["label"][:2], val["size"][:2])]


def test_draw_params_reach_the_asked_extent():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        params = draw_params(shape, 0.7, rng)
        axis = np.linspace(-1, 1, 81)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
        inside = grid[sdf(shape, params, grid) <= 0]
        assert np.abs(inside).max() == pytest.approx(0.7, abs=0.03), shape


def test_the_judge_reads_real_shapes_and_not_noise(val):
    real = primitive_adherence(val["points"], val["label"], val["size"])
    assert real == {"shape_acc": 1.0, "size_acc": 1.0, "exact": 1.0}
    # small surface noise (1 % of the half-extent) keeps the reading
    rng = np.random.default_rng(0)
    noisy = val["points"] + rng.normal(0, 0.008, val["points"].shape).astype(np.float32)
    assert primitive_adherence(noisy, val["label"])["shape_acc"] >= 0.9
    # points uniform in the cube are no primitive: at most chance agreement with the labels
    cube = rng.uniform(-0.9, 0.9, val["points"].shape)
    assert primitive_adherence(cube, val["label"])["shape_acc"] <= 0.35
    bad = val["points"][:2].copy()
    bad[1, 3] = np.nan
    assert read_primitives(bad)["label"][1] == -1
    with pytest.raises(ValueError, match=r"\[N, P, 3\]"):
        read_primitives(np.zeros((2, 5, 2)))


def test_the_points_modality(val):
    data = PrimitivesData(PrimitivesConfig.tiny())
    modality = data.modality
    pts = val["points"][:4]
    modality.check(pts, "ok")
    bad = pts.copy()
    bad[2, 0, 1] = np.inf
    with pytest.raises(ValueError, match=r"shapes \[2\]"):
        modality.check(bad, "samples.npz")
    with pytest.raises(ValueError, match="empty point sets"):
        modality.check(np.zeros((1, 0, 3), np.float32), "x")
    from latentforge.modalities.points import render

    images = render(pts)
    assert images.shape == (4, 96, 96, 3) and images.dtype == np.uint8
    assert ((images < 250).any(-1).mean((1, 2)) > 0.02).all()          # every shape paints some pixels
    # large shapes cover more of the picture than small ones
    big, small = val["size"] == 1, val["size"] == 0
    cover = (render(val["points"]) < 250).any(-1).mean((1, 2))
    assert cover[big].mean() > 1.5 * cover[small].mean()
    flat = modality.flat(pts)
    assert flat.shape == (4, 512) and np.allclose(flat.sum(1), 1)
    assert np.array_equal(modality.flat(pts[:, ::-1]), flat)            # order-free
    m = modality.recon_metrics(pts, pts)
    assert m["chamfer_l2"] == 0 and m["f_score_1pct"] == 1.0 and m["emd"] == pytest.approx(0, abs=1e-9)
    base = modality.baselines(val["points"], 8, seed=0)
    assert set(base) == {"uniform in the cube", "mean-radius sphere", "train copies"}
    assert all(v.shape == (8, 384, 3) for v in base.values())


def test_meshes_are_watertight_normalised_and_hold_out_whole_meshes():
    from latentforge.data.meshes import HALF_EXTENT, MeshesConfig, MeshesData, blob_meshes

    train_ids, held, skipped = blob_meshes(40)
    assert not set(train_ids) & set(held) and all(i % 10 == 9 for i in held)
    assert all(": " in s for s in skipped) and len(train_ids) + len(held) + len(skipped) == 40
    data = MeshesData(MeshesConfig(points=256, queries=256, meshes=40, train_size=4, val_size=4))
    val = data.split("val")
    assert set(val["mesh"].tolist()) <= set(held)
    assert np.abs(val["points"]).max() <= HALF_EXTENT + 1e-4
    assert 0.05 < val["occupancy"].mean() < 0.6
    # occupancy agrees with a ray-free check: near-surface queries are inside about half the time
    near = val["occupancy"][:, 128:]
    assert 0.3 < near.mean() < 0.7


def test_a_mesh_folder_skips_and_lists_bad_files(tmp_path):
    from latentforge.data.meshes import MeshFolderConfig, MeshFolderData

    data = MeshFolderData(MeshFolderConfig.tiny())
    data.run_dir = tmp_path
    train, val = data.split("train"), data.split("val")
    assert len(train["points"]) + len(val["points"]) == 4
    assert train["queries"].shape[1:] == (32, 3) and train["occupancy"].dtype == bool
    skipped = (tmp_path / "skipped.txt").read_text()
    assert "broken.ply" in skipped and "open.obj\tValueError: not watertight" in skipped
