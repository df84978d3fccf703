"""The video modality: layout round trip, reconstruction numbers with known answers, baselines, previews."""

import numpy as np
import pytest
from PIL import Image

from latentforge.modalities.video import VideoModality, temporal_error


def clips(n=3, T=5, S=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, T, S, S, 3), dtype=np.uint8)


def test_round_trip_and_layout():
    m = VideoModality(frames=5, size=8)
    x = clips()
    t = m.to_model(x)
    assert t.shape == (3, 3, 5, 8, 8) and float(t.min()) >= -1 and float(t.max()) <= 1
    assert float(t[1, 2, 3, 4, 5]) == pytest.approx(x[1, 3, 4, 5, 2] / 127.5 - 1)
    assert np.array_equal(m.from_model(t), x)
    assert m.tokenizer_fields() == {"frames": 5, "image_size": 8}
    with pytest.raises(ValueError, match=r"uint8 clips \[N, T, H, W, 3\].*\[3, 8, 8, 3\]"):
        m.check(x[:, 0], "data/train")


def test_temporal_error_known_answers():
    x = clips()
    assert temporal_error(x, x) == 0.0
    assert temporal_error(np.full_like(x, 10), np.full_like(x, 50)) == 0.0  # a constant offset costs nothing
    # a frozen reconstruction of a clip whose every pixel rises by 20 a frame misses 20/255 per pixel
    ramp = (np.arange(5)[None, :, None, None, None] * 20 + np.zeros((2, 5, 4, 4, 3))).astype(np.uint8)
    frozen = np.repeat(ramp[:, :1], 5, axis=1)
    assert temporal_error(ramp, frozen) == pytest.approx(20 / 255)


def test_recon_metrics_per_frame():
    m = VideoModality(frames=5, size=8)
    x = clips()
    assert m.recon_metrics(x, x)["psnr"] == 100.0
    y = x.astype(int)
    y[:, 1:] = np.clip(y[:, 1:] + np.where(y[:, 1:] < 128, 16, -16), 0, 255)  # later frames off by 16
    out = m.recon_metrics(x, y.astype(np.uint8))
    assert out["psnr_first_frame"] == 100.0
    assert out["psnr_later_frames"] == pytest.approx(10 * np.log10(255**2 / 16**2), abs=0.01)
    assert out["temporal_error"] > 0 and 0 < out["ssim"] < 1
    with pytest.raises(ValueError, match="differ"):
        m.recon_metrics(x, x[:, :4])


def test_baselines():
    m = VideoModality(frames=5, size=8)
    train = clips(n=20)
    out = m.baselines(train, 6, seed=0)
    assert set(out) == {"pixel gaussian", "static first frame", "train copies"}
    for v in out.values():
        assert v.shape == (6, 5, 8, 8, 3) and v.dtype == np.uint8
    still = out["static first frame"]
    assert (still == still[:, :1]).all()                                     # no motion
    assert all(any((s[0] == t[0]).all() for t in train) for s in still)       # real first frames
    assert abs(out["pixel gaussian"].astype(float).mean() - train.mean()) < 8


def test_previews_animate_every_frame(tmp_path):
    m = VideoModality(frames=5, size=8, fps=10)
    names = m.preview(clips(), ["a 3 moves left", "b", "c"], tmp_path / "samples", "samples")
    assert names == ["samples.gif", "samples_strip.png"]
    gif = Image.open(tmp_path / "samples.gif")
    assert gif.n_frames == 5 and gif.info["duration"] == 100
    strip = Image.open(tmp_path / "samples_strip.png")
    assert strip.height > 3 * 96
    pairs = m.preview_pairs(clips(n=2), clips(n=2, seed=1), tmp_path / "recon", "reconstructions")
    assert Image.open(tmp_path / pairs[0]).n_frames == 5
