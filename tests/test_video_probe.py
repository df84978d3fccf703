"""The video probe (eval/video_probe.py, ViViT factorised encoder): on clips with a known answer (a
square moving in one of four directions, in one of four colours) it learns both heads in both
training modes, reads back identically, is cached and reused, is trained again when its cache is
corrupt, and its features give a Fréchet distance that tells real clips from frozen ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentforge.eval import video_probe
from latentforge.eval.distribution import fid
from latentforge.eval.probe import file_hash
from latentforge.eval.video_probe import (
    VideoProbe,
    VideoProbeConfig,
    VideoProbeTrainConfig,
    clips_to_model,
    load_video_probe,
    train_video_probe,
    video_feature_extractor,
    video_probe_dir,
)
from latentforge.serialization import WEIGHTS_NAME, from_pretrained, save_pretrained

T, S, SIDE = 8, 16, 4
COLOURS = np.array([[255, 40, 40], [40, 255, 40], [60, 60, 255], [255, 255, 40]], np.uint8)
MOVES = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]])        # (dy, dx): right, left, down, up


def moving_squares(n: int, seed: int) -> tuple[np.ndarray, dict]:
    """n clips uint8 [n, T, S, S, 3]: a SIDE x SIDE square of one of 4 colours on black, moving one
    pixel a frame in one of 4 directions from a random start that keeps it inside the frame.
    Targets as data sets give them: direction and colour, one slot each."""
    rng = np.random.default_rng(seed)
    move, colour = rng.integers(0, 4, n), rng.integers(0, 4, n)
    clips = np.zeros((n, T, S, S, 3), np.uint8)
    span = S - SIDE - (T - 1)                    # start range along the motion
    for i in range(n):
        dy, dx = MOVES[move[i]]
        y0 = rng.integers(0, S - SIDE + 1) if dy == 0 else rng.integers(0, span + 1) + (T - 1) * (dy < 0)
        x0 = rng.integers(0, S - SIDE + 1) if dx == 0 else rng.integers(0, span + 1) + (T - 1) * (dx < 0)
        for t in range(T):
            y, x = y0 + dy * t, x0 + dx * t
            clips[i, t, y:y + SIDE, x:x + SIDE] = COLOURS[colour[i]]
    return clips, {"direction": (move[:, None].astype(np.int64), 4), "colour": (colour[:, None].astype(np.int64), 4)}


# one small network for both modes; spatial depth 1: from scratch (`full`) it needs ~600 steps
# here (400 left 2 of 4 seeds near 0.55 direction accuracy), `frozen_spatial` ~200 after stage 1
NET = dict(patch=4, dim=32, attn_heads=2, spatial_depth=1, temporal_depth=1, batch_size=64)
FULL = VideoProbeTrainConfig(mode="full", steps=600, spatial_steps=0, **NET)
FROZEN = VideoProbeTrainConfig(mode="frozen_spatial", steps=300, spatial_steps=200, frame_batch=128, adapter=8, **NET)


@pytest.fixture(scope="module")
def squares():
    return moving_squares(2048, 0), moving_squares(256, 1)


@pytest.fixture(scope="module")
def probes(squares):
    (x, y), (xv, yv) = squares
    return {mode: train_video_probe(x, y, xv, yv, cache_key="test-squares", config=cfg, progress=False)
            for mode, cfg in (("full", FULL), ("frozen_spatial", FROZEN))}


def test_the_clips_hold_their_answer():
    clips, targets = moving_squares(8, 3)
    for clip, move in zip(clips, targets["direction"][0][:, 0]):
        lit = clip.max(-1) > 0                                            # [T, S, S]
        corners = np.array([np.argwhere(frame).min(0) for frame in lit])  # top-left corner per frame
        assert (np.diff(corners, axis=0) == MOVES[move]).all()
        assert lit.sum((1, 2)).tolist() == [SIDE * SIDE] * T


@pytest.mark.parametrize("mode", ["full", "frozen_spatial"])
def test_probe_learns_both_heads(probes, squares, mode):
    probe = probes[mode]
    _, (xv, yv) = squares
    accuracy = probe.accuracy(xv, yv)
    assert accuracy["direction"] > 0.9 and accuracy["colour"] > 0.9, accuracy
    info = json.loads((video_probe_dir("test-squares", FULL if mode == "full" else FROZEN) / "config.json").read_text())
    assert info["extra"]["val_accuracy"] == pytest.approx(accuracy)
    assert info["extra"]["train"]["mode"] == mode and info["extra"]["sec_per_step"] > 0
    pred = probe.predict(xv)
    assert set(pred) == {"direction", "colour"} and pred["direction"].dtype == torch.int64
    assert pred["direction"].shape == (len(xv), 1)


def test_frozen_mode_trains_only_adapter_temporal_and_heads(probes):
    probe = probes["frozen_spatial"]
    cfg = probe.config
    assert cfg.adapter == 8 and probes["full"].config.adapter == 0
    info = json.loads((video_probe_dir("test-squares", FROZEN) / "config.json").read_text())["extra"]
    spatial = sum(p.numel() for p in probe.spatial.parameters())
    assert info["trainable_parameters"] == info["parameters"] - spatial
    assert info["spatial_seconds"] > 0


def test_freezing_keeps_no_spatial_graph_and_the_adapter_starts_as_identity():
    torch.manual_seed(0)
    cfg = VideoProbeConfig.tiny()
    probe = VideoProbe(cfg)
    plain = VideoProbe(VideoProbeConfig(**{**vars(cfg), "adapter": 0}))
    plain.load_state_dict({k: v for k, v in probe.state_dict().items() if not k.startswith("adapter.")})
    video = torch.rand(2, 3, cfg.frames, cfg.size, cfg.size) * 2 - 1
    assert torch.allclose(probe(video)[0], plain(video)[0])     # zero-initialised up-projection
    probe.freeze_spatial()
    assert probe.frame_tokens(video).grad_fn is None
    batch = {"video": video, "class": torch.tensor([[0], [2]])}
    probe.loss(batch)["loss"].backward()
    assert all(p.grad is None for p in probe.spatial.parameters())
    assert all(p.grad is not None for n, p in probe.named_parameters() if not n.startswith("spatial."))


def test_save_load_gives_identical_predictions_and_features(probes, squares, tmp_path):
    _, (xv, _) = squares
    for mode, probe in probes.items():
        again = from_pretrained(save_pretrained(probe, tmp_path / mode))
        assert isinstance(again, VideoProbe)
        first, second = probe.predict(xv), again.predict(xv)
        assert all(torch.equal(first[h], second[h]) for h in first)
        assert torch.equal(probe.features(xv), again.features(xv))


def test_features_shape_determinism_and_batch_independence(probes, squares):
    _, (xv, _) = squares
    probe = probes["full"]
    f = probe.features(xv)
    assert f.shape == (len(xv), probe.config.dim) and f.dtype == torch.float64 and torch.isfinite(f).all()
    assert torch.equal(f, probe.features(xv))
    assert torch.allclose(probe.features(xv[5:9]), f[5:9], atol=1e-6)
    # fewer frames than it was trained on: the first positions of the time table
    assert probe.features(xv[:4, :5]).shape == (4, probe.config.dim)
    with pytest.raises(ValueError, match="uint8 clips"):
        probe.features(xv.astype(np.float32))
    with pytest.raises(ValueError, match="16x16"):
        probe.features(np.zeros((2, T, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="1 to 8 frames"):
        probe.features(np.zeros((2, T + 1, S, S, 3), np.uint8))


def test_probe_fvd_tells_moving_clips_from_frozen_ones(probes, squares):
    """Real vs real (two halves of val) is far below real vs the same clips held on their first
    frame: the features see motion."""
    _, (xv, _) = squares
    folder = video_probe_dir("test-squares", FROZEN)
    extractor = video_feature_extractor(folder)
    assert extractor.name == "video-probe" and extractor.hash == file_hash(folder / WEIGHTS_NAME)
    assert extractor.info["comparable_with_published_fvd"] is False and extractor.info["dim"] == 32
    still = np.repeat(xv[:, :1], T, axis=1)
    a, b = extractor(xv[:128]), extractor(xv[128:])
    assert fid(a, b) * 5 < fid(a, extractor(still[128:]))


def test_cache_is_reused_keyed_and_a_corrupt_one_trained_again(squares, monkeypatch, capsys):
    (x, y), (xv, yv) = squares
    cfg = VideoProbeTrainConfig(steps=4, spatial_steps=0, patch=4, dim=16, attn_heads=2, spatial_depth=1, temporal_depth=1,
                                batch_size=8)
    small = (x[:64], {h: (t[:64], c) for h, (t, c) in y.items()}, xv[:16], {h: (t[:16], c) for h, (t, c) in yv.items()})
    first = train_video_probe(*small, cache_key="test-cache", config=cfg, progress=False)
    folder = video_probe_dir("test-cache", cfg)
    assert (folder / "config.json").is_file()
    before = first.predict(xv[:16])

    fits = []
    monkeypatch.setattr(video_probe.Trainer, "fit", lambda self: fits.append(self.desc) or {})
    # cached: the second call does not train, whatever data it is handed under the same key
    junk = (np.zeros_like(x[:8]), {h: (np.zeros((8, 1), np.int64), c) for h, (_, c) in y.items()})
    again = train_video_probe(*junk, *junk, cache_key="test-cache", config=cfg, progress=False)
    assert fits == [] and all(torch.equal(before[h], again.predict(xv[:16])[h]) for h in before)
    # the key covers the data's name and the training config
    assert video_probe_dir("other-data", cfg) != folder
    assert video_probe_dir("test-cache", VideoProbeTrainConfig(**{**vars(cfg), "seed": 1})) != folder
    # `full` does not read the frozen-only fields: they do not split its cache
    assert video_probe_dir("test-cache", VideoProbeTrainConfig(**{**vars(cfg), "adapter": 3})) == folder
    # data that do not fit the cached probe under its key: an error, not a silent reuse
    with pytest.raises(ValueError, match="change the cache_key"):
        train_video_probe(np.zeros((8, T, 8, 8, 3), np.uint8), junk[1], np.zeros((8, T, 8, 8, 3), np.uint8),
                          junk[1], cache_key="test-cache", config=cfg, progress=False)
    monkeypatch.undo()

    # truncated weights: set aside and trained again from scratch, to the same weights
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    redone = train_video_probe(*small, cache_key="test-cache", config=cfg, progress=False)
    assert "not trusted" in capsys.readouterr().err
    assert (folder.parent / (folder.name + ".corrupt")).is_dir()
    assert all(torch.equal(before[h], redone.predict(xv[:16])[h]) for h in before)
    assert isinstance(load_video_probe(folder), VideoProbe)


def test_bad_training_input_is_named():
    clips, targets = moving_squares(4, 0)
    cfg = VideoProbeTrainConfig(steps=1, spatial_steps=0)
    with pytest.raises(ValueError, match="uint8"):
        train_video_probe(clips.astype(np.float32), targets, clips, targets, cache_key="bad", config=cfg)
    with pytest.raises(ValueError, match="direction"):
        bad = {**targets, "direction": (targets["direction"][0] + 4, 4)}
        train_video_probe(clips, bad, clips, targets, cache_key="bad", config=cfg)
    with pytest.raises(ValueError, match="spatial_steps"):
        VideoProbeTrainConfig(mode="frozen_spatial", spatial_steps=0)
    assert clips_to_model(clips).shape == (4, 3, T, S, S)
