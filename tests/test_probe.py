"""Probe networks: they learn their data set's labels, are cached and reused, give deterministic
features, and FID in their feature space ranks degraded sample sets worse, monotonically."""

import json

import pytest
import torch

from latentforge.data.base import build_dataset
from latentforge.data.sets import (
    DigitsDataConfig,
    PhotosDataConfig,
    ShapesData,
    ShapesDataConfig,
)
from latentforge.data.shapes import COLORS
from latentforge.eval.degrade import gaussian_blur, gaussian_noise
from latentforge.eval.distribution import fid
from latentforge.eval.features import pick_features
from latentforge.eval.probe import (
    has_probe,
    load_probe,
    probe_dir,
    probe_info,
    probe_key,
)


def test_shapes_probe_learns_every_head(shapes_probe):
    # 400 steps on 2,000 scenes here; the full probe (2,000 steps on 20,000) reaches >= 99.9 %
    # on every head (BENCHMARKS.md, benchmarks/eval.py)
    acc = probe_info(probe_dir(ShapesDataConfig()))["test_accuracy"]
    assert set(acc) == {"shape", "color", "size", "count"}
    assert acc["count"] >= 0.95 and acc["size"] >= 0.95 and acc["color"] >= 0.85 and acc["shape"] >= 0.6


def test_digits_probe_learns_the_classes(digits_probe):
    acc = probe_info(probe_dir(DigitsDataConfig()))["test_accuracy"]
    assert acc["class"] >= 0.9  # 150 steps; the full probe reaches 100 % of the 179 test digits


def test_probe_is_cached_reused_and_keyed_by_appearance(shapes_probe):
    folder = probe_dir(ShapesDataConfig())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["kind"] == "probe"
    again = load_probe(ShapesDataConfig(train_size=5, val_size=7, seed=3), train_if_missing=False)
    for p, q in zip(shapes_probe.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    # split sizes and seed do not change what an image looks like; the image size does
    assert probe_key(ShapesDataConfig(train_size=5, seed=3)) == probe_key(ShapesDataConfig())
    assert probe_key(ShapesDataConfig(size=64)) != probe_key(ShapesDataConfig())
    with pytest.raises(FileNotFoundError, match="latentforge eval train-probe shapes"):
        load_probe(ShapesDataConfig(max_objects=4), train_if_missing=False)


def test_features_are_deterministic_and_batch_independent(shapes_probe):
    images = ShapesData(ShapesDataConfig(val_size=20)).split("val")["images"]
    f = shapes_probe.features(images)
    assert f.shape == (20, 256) and f.dtype == torch.float64
    # batch norm in eval mode: a feature does not depend on its batch (up to float32 rounding,
    # as convolution kernels pick another blocking for another batch size)
    torch.testing.assert_close(shapes_probe.features(images[:3]), f[:3], rtol=1e-5, atol=1e-5)
    assert torch.equal(shapes_probe.features(images), f)
    with pytest.raises(ValueError, match="reads 32x32 images, got 16x16"):
        shapes_probe.features(images[:, :16, :16])


def test_probe_choice_per_data_set(shapes_probe):
    assert has_probe(ShapesDataConfig()) and has_probe(DigitsDataConfig()) and not has_probe(PhotosDataConfig())
    assert pick_features(build_dataset(PhotosDataConfig())) is None  # no labels, no Inception weights: no FID
    features = pick_features(build_dataset(ShapesDataConfig()), progress=False)
    assert features.name == "probe" and features.info["test_accuracy"]["count"] >= 0.95


@pytest.mark.slow
def test_fid_ranks_degraded_shapes_worse_monotonically(shapes_probe):
    n = 300
    data = ShapesData(ShapesDataConfig(val_size=1500))
    real = data.split("val")["images"][:n]
    test = data.split("test")
    clean = test["images"][:n]
    a = shapes_probe.features(real)

    def score(images):
        return fid(a, shapes_probe.features(images))

    noise = [score(gaussian_noise(clean, s)) for s in (0, 8, 16, 32, 64)]
    blur = [score(gaussian_blur(clean, s)) for s in (0, 0.5, 1.0, 1.5, 2.0)]
    # mode dropping: only scenes without any of the first k palette colours
    scenes = [json.loads(g)["objects"] for g in test["graphs"]]
    colours = list(COLORS)
    dropped = []
    for k in (0, 1, 2, 3):
        keep = [i for i, objs in enumerate(scenes) if not any(o["color"] in colours[:k] for o in objs)][:n]
        assert len(keep) == n
        dropped.append(score(test["images"][keep]))
    for name, values in (("noise", noise), ("blur", blur), ("mode dropping", dropped)):
        assert all(x < y for x, y in zip(values, values[1:])), (name, values)
