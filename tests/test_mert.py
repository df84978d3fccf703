"""MERT (P5): span masking and in-batch mixing as specified, the pseudo-CQT target, cosine logits,
linear probes against scikit-learn, and a student that must learn its targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentforge.eval.linear_probe import linear_probe_accuracy
from latentforge.nn.spectral import cqt, midi_to_hz
from latentforge.pretraining.mert import Mert, MertConfig, mix_in_batch, span_mask


def test_span_mask_covers_about_1_minus_exp_minus_p_in_whole_spans():
    g = torch.Generator().manual_seed(0)
    mask = span_mask(512, 50, 0.8, 5, generator=g)
    assert mask.any(1).all()
    assert abs(float(mask.float().mean()) - (1 - np.exp(-0.8))) < 0.04
    # every run of masked frames that does not touch the clip's end is at least a span long
    for row in mask[:64].int().numpy():
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
        runs = edges[1::2] - edges[::2]
        assert (runs[edges[1::2] < len(row)] >= 5).all()


def test_mixing_adds_other_clips_segments_and_keeps_the_targets_clean():
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(6, 1000)
    assert torch.equal(mix_in_batch(wave, 0.0, (0.1, 0.3), g), wave)
    assert torch.equal(mix_in_batch(wave[:1], 1.0, (0.1, 0.3), g), wave[:1])       # no other clip to mix
    mixed = mix_in_batch(wave, 1.0, (0.1, 0.3), g)
    changed = (mixed != wave).float().mean(1)
    assert (changed >= 0.1 - 1e-3).all() and (changed <= 0.9 + 1e-3).all()
    model = Mert(MertConfig.tiny())
    clean = torch.rand(3, 16 * 8) * 2 - 1
    assert torch.equal(model.targets(clean), model.targets(clean.clone()))            # CQT from the input as given


def test_pseudo_cqt_peaks_at_the_tones_band():
    rate = 16000
    t = np.arange(rate) / rate
    for k in (12, 30, 47):                                   # C2 + k semitones, 12 bins an octave
        tone = torch.from_numpy(np.sin(2 * np.pi * midi_to_hz(36 + k) * t).astype(np.float32))[None]
        spec = cqt(tone, rate, hop=320, fmin=float(midi_to_hz(36)), n_bins=60)
        assert spec.shape == (1, rate // 320 + 1, 60) and int(spec[0, 10:-10].mean(0).argmax()) == k
    with pytest.raises(ValueError, match="Nyquist"):
        cqt(tone, rate, hop=320, n_bins=200)


def test_code_logits_are_cosines_over_the_temperature():
    model = Mert(MertConfig.tiny())
    logits = model.code_logits(torch.randn(10, model.config.dim))
    assert logits.shape == (10, 2, 8) and logits.abs().max() <= 1 / model.config.temperature + 1e-4


def test_linear_probe_agrees_with_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 1.5
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 8))
    ours = linear_probe_accuracy(x[:300], y[:300], x[300:], y[300:])
    mean, std = x[:300].mean(0), x[:300].std(0)
    ref = sklearn.LogisticRegression(C=1 / (2 * 1e-3 * 300), max_iter=2000).fit((x[:300] - mean) / std, y[:300])
    assert abs(ours - ref.score((x[300:] - mean) / std, y[300:])) <= 0.02 and ours > 0.8
    assert linear_probe_accuracy(x[:300], rng.integers(0, 4, 300), x[300:], y[300:]) < 0.45   # labels it can't learn


def test_a_student_learns_its_targets():
    """Teacher codes = each clip's pitch class on every frame (K = 12): after 200 steps the masked
    frames' codes are read far above chance (measured 0.39; chance 0.083)."""
    from latentforge.data.notes import NotesConfig, NotesData

    torch.manual_seed(0)
    data = NotesData(NotesConfig(seconds=0.16, train_size=256, val_size=64, kinds=("note",)))
    train, val = data.split("train"), data.split("val")
    cfg = MertConfig(strides=(4, 4, 4, 5), front_channels=32, dim=32, depth=2, heads=2, code_levels=1, code_vocab=12,
                     proj_dim=16, cqt_bins=48, cqt_fmin=65.4)
    frames = train["audio"].shape[1] // cfg.hop
    x, xv = torch.from_numpy(train["audio"]), torch.from_numpy(val["audio"])
    codes = torch.from_numpy(train["label"])[:, None].repeat(1, frames)
    codes_val = torch.from_numpy(val["label"])[:, None].repeat(1, frames)
    model = Mert(cfg)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(x), (32,), generator=g)
        out = model.loss({"audio": x[idx], "codes": codes[idx]}, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = float(model.loss({"audio": xv, "codes": codes_val}, generator=torch.Generator().manual_seed(1))["code_acc"])
    assert acc > 0.25
    assert model.features(val["audio"]).shape == (64, 32)
