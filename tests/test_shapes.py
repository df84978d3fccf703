"""Shapes data set (sampling, rendering, graphs, tensors) and its scene parser."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from latentforge.data.shapes import (
    BACKGROUND,
    COLORS,
    GAP,
    MARGIN,
    PREDICATES,
    SHAPES,
    SIZES,
    SceneGraph,
    ShapeObject,
    ShapesConfig,
    ShapesDataset,
    encode_graphs,
    object_box,
    render,
    render_batch,
    sample_scene,
)
from latentforge.eval.shapes import compare_scenes, parse_scene, parse_scenes, scene_adherence


def _scenes(cfg: ShapesConfig, split: str, n: int) -> list[SceneGraph]:
    return [sample_scene(cfg, split, i) for i in range(n)]


# --- sampling and rendering -------------------------------------------------------


def test_same_seed_split_index_gives_identical_scene_and_image():
    cfg = ShapesConfig()
    for index in (0, 7, 12345):
        a, b = sample_scene(cfg, "train", index), sample_scene(ShapesConfig(), "train", index)
        assert a == b
        assert np.array_equal(render(a), render(b))


def test_different_seed_gives_different_scenes():
    a = _scenes(ShapesConfig(seed=0), "train", 20)
    b = _scenes(ShapesConfig(seed=1), "train", 20)
    assert all(x != y for x, y in zip(a, b))
    assert not np.array_equal(render(a[0]), render(b[0]))


def test_splits_share_no_scene():
    cfg = ShapesConfig()
    seen: dict[str, set] = {}
    for split in ("train", "val", "test"):
        scenes = _scenes(cfg, split, 2000)
        images = render_batch(cfg, split, range(2000))
        seen[split] = {s.objects for s in scenes} | {im.tobytes() for im in images}
    for a, b in itertools.combinations(seen, 2):
        assert not seen[a] & seen[b], f"{a} and {b} share a scene"


def test_unknown_split_and_negative_index_raise():
    with pytest.raises(ValueError, match="split: 'valid' is not one of train, val, test"):
        sample_scene(ShapesConfig(), "valid", 0)
    with pytest.raises(ValueError, match="index"):
        sample_scene(ShapesConfig(), "train", -1)


@pytest.mark.parametrize("lo,hi", [(1, 3), (6, 6), (1, 6)])
def test_object_counts_cover_the_configured_range(lo, hi):
    counts = {len(s.objects) for s in _scenes(ShapesConfig(min_objects=lo, max_objects=hi), "train", 300)}
    assert counts == set(range(lo, hi + 1))


def test_objects_inside_apart_and_relations_unambiguous():
    scenes = _scenes(ShapesConfig(max_objects=6), "val", 400)
    for scene in scenes:
        boxes = [object_box(o) for o in scene.objects]
        for left, top, right, bottom in boxes:
            assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        for (a, ba), (b, bb) in itertools.combinations(zip(scene.objects, boxes), 2):
            gap = max(bb[0] - ba[2], ba[0] - bb[2], bb[1] - ba[3], ba[1] - bb[3])
            assert gap >= GAP - 1e-9
            assert abs(a.x - b.x) >= MARGIN - 1e-9 and abs(a.y - b.y) >= MARGIN - 1e-9


def test_every_relation_agrees_with_the_centres():
    for scene in _scenes(ShapesConfig(max_objects=6), "train", 300):
        n = len(scene.objects)
        assert len(scene.relations) == n * (n - 1)
        pairs = {(s, o) for s, _, o in scene.relations}
        assert pairs == {(i, j) for i in range(n) for j in range(i + 1, n)}
        for s, p, o in scene.relations:
            a, b = scene.objects[s], scene.objects[o]
            expected = {"left of": a.x < b.x, "right of": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}
            assert expected[p], (s, p, o, a, b)


def test_render_colours_background_and_antialiasing():
    scene = SceneGraph.from_objects([ShapeObject("square", "red", "large", 0.3, 0.3)])
    image = render(scene, size=32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert tuple(image[0, 31]) == BACKGROUND
    assert tuple(image[int(0.3 * 32), int(0.3 * 32)]) == COLORS["red"]
    # edges are blends: some pixels are neither pure background nor pure red
    pure = np.all(image == BACKGROUND, axis=-1) | np.all(image == COLORS["red"], axis=-1)
    assert (~pure).any()
    big = render(scene, size=64)
    assert big.shape == (64, 64, 3)


def test_render_triangle_centroid_is_vertex_mean():
    scene = SceneGraph.from_objects([ShapeObject("triangle", "green", "large", 0.5, 0.5)])
    image = render(scene, size=128, supersample=8).astype(np.float64)
    coverage = (image[..., 1] - BACKGROUND[1]) / (COLORS["green"][1] - BACKGROUND[1])  # [H, W]
    centres = (np.arange(128) + 0.5) / 128
    assert coverage.sum(axis=1) @ centres / coverage.sum() == pytest.approx(0.5, abs=2e-3)
    assert coverage.sum(axis=0) @ centres / coverage.sum() == pytest.approx(0.5, abs=2e-3)
    assert coverage[:64].sum() < coverage[64:].sum()  # apex up: the mass sits low


def test_render_batch_matches_render():
    cfg = ShapesConfig(size=24, supersample=2)
    batch = render_batch(cfg, "test", [3, 1])
    assert batch.shape == (2, 24, 24, 3)
    assert np.array_equal(batch[1], render(sample_scene(cfg, "test", 1), 24, 2))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"size": 8}, "size must be in \\[16, 128\\], got 8"),
        ({"size": 256}, "size must be in"),
        ({"min_objects": 0}, "min_objects must be in \\[1, 6\\]"),
        ({"max_objects": 7}, "max_objects must be in \\[1, 6\\]"),
        ({"min_objects": 4, "max_objects": 2}, "min_objects \\(4\\) must not exceed max_objects \\(2\\)"),
        ({"supersample": 0}, "supersample"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**kwargs)


# --- scene graphs -----------------------------------------------------------------


def _two_objects() -> SceneGraph:
    return SceneGraph.from_objects(
        [ShapeObject("circle", "red", "large", 0.2, 0.2), ShapeObject("square", "blue", "small", 0.7, 0.5)]
    )


def test_from_objects_and_caption():
    graph = _two_objects()
    assert graph.relations == ((0, "left of", 1), (0, "above", 1))
    assert graph.caption() == (
        "a large red circle and a small blue square; the red circle is left of the blue square and above it"
    )
    assert SceneGraph(()).caption() == "an empty scene"


def test_caption_tells_look_alikes_apart():
    graph = SceneGraph.from_objects(
        [
            ShapeObject("circle", "red", "large", 0.2, 0.2),
            ShapeObject("circle", "red", "small", 0.5, 0.5),
            ShapeObject("circle", "red", "small", 0.8, 0.8),
        ]
    )
    caption = graph.caption()
    assert "the large red circle is left of the first small red circle" in caption
    assert "the first small red circle is left of the second small red circle" in caption


def test_from_objects_needs_positions():
    with pytest.raises(ValueError, match="no position"):
        SceneGraph.from_objects([ShapeObject("circle", "red", "large")])


def test_json_round_trip():
    for scene in _scenes(ShapesConfig(max_objects=6), "train", 50) + [_two_objects()]:
        assert SceneGraph.from_json(scene.to_json()) == scene


def test_from_json_defaults():
    graph = SceneGraph.from_json({"objects": [{"shape": "triangle", "color": "cyan", "size": "small"}]})
    assert graph.relations == ()
    assert math.isnan(graph.objects[0].x) and math.isnan(graph.objects[0].y)
    expected = {"objects": [{"shape": "triangle", "color": "cyan", "size": "small"}], "relations": []}
    assert graph.to_json() == expected


_GOOD = {"shape": "circle", "color": "red", "size": "large"}


@pytest.mark.parametrize(
    "data,message",
    [
        ({"objects": [_GOOD, {**_GOOD, "color": "pink"}]},
         r"objects\[1\]\.color: 'pink' is not one of red, green, blue, yellow, magenta, cyan"),
        ({"objects": [{**_GOOD, "shape": "star"}]}, r"objects\[0\]\.shape: 'star' is not one of circle"),
        ({"objects": [{**_GOOD, "size": "huge"}]}, r"objects\[0\]\.size: 'huge' is not one of small, large"),
        ({"objects": [{"shape": "circle", "size": "large"}]}, r"objects\[0\]: missing key 'color'"),
        ({"objects": [{**_GOOD, "colour": "red"}]}, r"objects\[0\]: unknown key 'colour'"),
        ({"objects": [{**_GOOD, "x": 1.5}]}, r"objects\[0\]\.x: 1\.5 is not a number in \[0, 1\]"),
        ({"objects": [{**_GOOD, "y": "top"}]}, r"objects\[0\]\.y"),
        ({"objects": [_GOOD, _GOOD], "relations": [[0, "near", 1]]},
         r"relations\[0\]\[1\]: 'near' is not one of left of, right of, above, below"),
        ({"objects": [_GOOD, _GOOD], "relations": [[0, "above", 2]]},
         r"relations\[0\]\[2\]: 2 is out of range for 2 object"),
        ({"objects": [_GOOD, _GOOD], "relations": [[1, "above", 1]]}, r"relations\[0\]: an object cannot"),
        ({"objects": [_GOOD, _GOOD], "relations": [[0, "above"]]}, r"relations\[0\]: expected"),
        ({"relations": []}, "missing key 'objects'"),
        ({"objects": [], "edges": []}, "unknown key 'edges'"),
        ({"objects": "circle"}, "objects: expected a list"),
    ],
)
def test_from_json_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        SceneGraph.from_json(data)


def test_shape_object_validates_attributes():
    with pytest.raises(ValueError, match="color: 'pink' is not one of"):
        ShapeObject("circle", "pink", "large")


# --- tensors and data set ---------------------------------------------------------


def test_encode_graphs_shapes_and_padding():
    graphs = [_two_objects(), SceneGraph(())]
    enc = encode_graphs(graphs, max_objects=3)
    for key in ("obj_shape", "obj_color", "obj_size", "obj_mask"):
        assert enc[key].shape == (2, 3)
    for key in ("rel_subj", "rel_pred", "rel_obj", "rel_mask"):
        assert enc[key].shape == (2, 6)
    assert enc["obj_shape"].dtype == torch.int64 and enc["obj_mask"].dtype == torch.bool
    assert enc["obj_shape"][0].tolist() == [SHAPES.index("circle"), SHAPES.index("square"), 0]
    assert enc["obj_color"][0].tolist() == [list(COLORS).index("red"), list(COLORS).index("blue"), 0]
    assert enc["obj_size"][0].tolist() == [SIZES.index("large"), SIZES.index("small"), 0]
    assert enc["obj_mask"].tolist() == [[True, True, False], [False, False, False]]
    assert enc["rel_subj"][0, :2].tolist() == [0, 0] and enc["rel_obj"][0, :2].tolist() == [1, 1]
    assert enc["rel_pred"][0, :2].tolist() == [PREDICATES.index("left of"), PREDICATES.index("above")]
    assert enc["rel_mask"][0].tolist() == [True, True, False, False, False, False]
    assert not enc["rel_mask"][1].any() and not enc["rel_pred"][1].any()


def test_encode_graphs_rejects_too_many_objects():
    with pytest.raises(ValueError, match="3 objects, more than max_objects=2"):
        encode_graphs([sample_scene(ShapesConfig(min_objects=3), "train", 0)], max_objects=2)


def test_dataset_items():
    cfg = ShapesConfig(max_objects=4)
    data = ShapesDataset(cfg, "val", length=10)
    assert len(data) == 10
    item = data[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["obj_shape"].shape == (4,) and item["rel_mask"].shape == (12,)
    scene = data.scene(3)
    assert scene == sample_scene(cfg, "val", 3)
    assert int(item["obj_mask"].sum()) == len(scene.objects)
    expected = torch.from_numpy(render(scene)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(item["image"], expected)
    assert data[-1]["image"].equal(data[9]["image"])
    with pytest.raises(IndexError):
        data[10]
    images = data.images(2, 5)
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[1], render(scene))
    assert data.images().shape[0] == 10
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["rel_subj"].shape == (4, 12)


# --- parser -----------------------------------------------------------------------


def _exact_rate(cfg: ShapesConfig, n: int) -> float:
    scenes = _scenes(cfg, "test", n)
    parsed = parse_scenes(render_batch(cfg, "test", range(n)))
    return float(np.mean([compare_scenes(p, s)["exact"] for p, s in zip(parsed, scenes)]))


def test_parser_recovers_scenes_with_up_to_3_objects():
    rate = _exact_rate(ShapesConfig(max_objects=3), 1000)
    print(f"parser exact-match rate, 32 px, 1-3 objects: {rate:.4f}")
    assert rate >= 0.99


def test_parser_recovers_scenes_with_up_to_6_objects():
    rate = _exact_rate(ShapesConfig(max_objects=6), 1000)
    print(f"parser exact-match rate, 32 px, 1-6 objects: {rate:.4f}")
    assert rate >= 0.98


@pytest.mark.parametrize("size", [16, 64, 128])
def test_parser_works_at_other_sizes(size):
    assert _exact_rate(ShapesConfig(size=size, max_objects=4), 60 if size < 128 else 20) >= 0.95


def test_parser_reads_positions_and_attributes():
    target = _two_objects()
    parsed = parse_scene(render(target))
    attributes = [(o.shape, o.color, o.size) for o in parsed.objects]
    assert attributes == [("circle", "red", "large"), ("square", "blue", "small")]
    for got, want in zip(parsed.objects, target.objects):
        assert got.x == pytest.approx(want.x, abs=0.01) and got.y == pytest.approx(want.y, abs=0.01)
    assert parsed.relations == target.relations


def test_blank_image_parses_to_no_objects():
    blank = np.empty((32, 32, 3), np.uint8)
    blank[:] = BACKGROUND
    assert parse_scene(blank) == SceneGraph((), ())


def test_parser_ignores_specks():
    image = render(_two_objects())
    image[30, 2] = COLORS["green"]  # one stray pixel is noise, not an object
    assert len(parse_scene(image).objects) == 2


def test_parser_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        parse_scene(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="square"):
        parse_scene(np.zeros((32, 16, 3), np.uint8))


# --- scoring ----------------------------------------------------------------------


def _three_objects() -> SceneGraph:
    return SceneGraph.from_objects(
        [
            ShapeObject("circle", "red", "large", 0.2, 0.3),
            ShapeObject("square", "blue", "small", 0.5, 0.7),
            ShapeObject("triangle", "green", "small", 0.8, 0.2),
        ]
    )


def _with(graph: SceneGraph, index: int, **changes) -> SceneGraph:
    objects = list(graph.objects)
    o = objects[index]
    objects[index] = ShapeObject(**{**o.__dict__, **changes})
    return SceneGraph.from_objects(objects)


def test_compare_identical_scenes():
    target = _three_objects()
    shuffled = SceneGraph.from_objects(target.objects[::-1])  # order must not matter
    result = compare_scenes(shuffled, target)
    assert result == {
        "count_ok": True,
        "shape_correct": 3,
        "color_correct": 3,
        "size_correct": 3,
        "n_objects": 3,
        "relations_ok": 6,
        "n_relations": 6,
        "exact": True,
    }


def test_compare_swapped_colour():
    target = _three_objects()
    result = compare_scenes(_with(target, 1, color="yellow"), target)
    assert result["color_correct"] == 2 and result["shape_correct"] == 3 and result["size_correct"] == 3
    assert result["relations_ok"] == 6 and not result["exact"]


def test_compare_flipped_relation():
    target = _three_objects()
    # moving the square above the circle flips exactly one relation: (0, "above", 1)
    result = compare_scenes(_with(target, 1, y=0.25), target)
    assert result["relations_ok"] == 5 and result["color_correct"] == 3 and not result["exact"]


def test_compare_missing_and_extra_objects():
    target = _three_objects()
    missing = compare_scenes(SceneGraph.from_objects(target.objects[:2]), target)
    assert not missing["count_ok"] and missing["shape_correct"] == 2 and missing["relations_ok"] == 2
    assert not missing["exact"]
    extra = SceneGraph.from_objects(target.objects + (ShapeObject("circle", "cyan", "small", 0.9, 0.9),))
    result = compare_scenes(extra, target)
    assert not result["count_ok"] and result["shape_correct"] == 3 and result["relations_ok"] == 6
    assert not result["exact"]
    empty = compare_scenes(SceneGraph(()), target)
    assert empty["shape_correct"] == 0 and empty["relations_ok"] == 0
    assert compare_scenes(SceneGraph(()), SceneGraph(()))["exact"]


def test_compare_with_many_predicted_objects():
    # 6 targets and 12 predictions is too many matchings to enumerate: attributes decide
    target = sample_scene(ShapesConfig(min_objects=6, max_objects=6), "train", 0)
    clutter = [ShapeObject("square", "cyan", "small", 0.01 * k, 0.99 - 0.01 * k) for k in range(6)]
    pred = SceneGraph.from_objects(list(target.objects) + clutter)
    result = compare_scenes(pred, target)
    assert not result["count_ok"] and not result["exact"]
    assert result["shape_correct"] == result["color_correct"] == result["size_correct"] == 6
    assert result["relations_ok"] == result["n_relations"] == 30


def test_compare_prefers_matching_that_satisfies_relations():
    # two identical red circles: only the matching by position satisfies the relations
    target = SceneGraph.from_objects(
        [ShapeObject("circle", "red", "small", 0.2, 0.2), ShapeObject("circle", "red", "small", 0.8, 0.8)]
    )
    pred = SceneGraph.from_objects(target.objects[::-1])
    assert compare_scenes(pred, target)["exact"]


def test_scene_adherence_on_ground_truth_and_on_wrong_graphs():
    cfg = ShapesConfig(max_objects=4)
    scenes = _scenes(cfg, "train", 40)
    images = render_batch(cfg, "train", range(40))
    scores = scene_adherence(images, scenes)
    assert set(scores) == {"scene_exact", "count_acc", "shape_acc", "color_acc", "size_acc", "relation_acc"}
    assert all(v >= 0.97 for v in scores.values()), scores
    wrong = scene_adherence(images, scenes[1:] + scenes[:1])
    assert all(0.0 <= v <= 1.0 for v in wrong.values())
    assert wrong["scene_exact"] < 0.2
    with pytest.raises(ValueError, match="images"):
        scene_adherence(images[:3], scenes)
    # per object count: the groups partition the images, and exact match is their weighted mean
    mixed = list(images[:20]) + list(images[20:][::-1])
    target = scenes[:20] + scenes[20:][::-1]
    shuffled = scenes[:20] + scenes[20:]  # the last 20 graphs no longer match their images
    grouped = scene_adherence(np.stack(mixed), shuffled, by_count=True)
    counts = sorted({len(s.objects) for s in target})
    assert sum(grouped[f"n_{k}obj"] for k in counts) == 40
    assert sum(grouped[f"scene_exact_{k}obj"] * grouped[f"n_{k}obj"] for k in counts) / 40 == pytest.approx(
        grouped["scene_exact"])
    assert {k for k in grouped if k.endswith("obj")} == {f"{m}_{k}obj" for k in counts
                                                         for m in ("scene_exact", "count_acc", "n")}


def test_rendering_over_worker_processes_gives_the_same_scenes_and_pixels():
    from latentforge.data.shapes import sample_and_render

    cfg = ShapesConfig()
    scenes_1, images_1 = sample_and_render(cfg, "val", range(40), workers=1)
    scenes_2, images_2 = sample_and_render(cfg, "val", range(40), workers=2)
    assert scenes_1 == scenes_2 and np.array_equal(images_1, images_2)
    assert np.array_equal(render_batch(cfg, "val", [7, 3]), images_1[[7, 3]])
