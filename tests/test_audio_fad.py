"""Probe-FAD: a data set's MERT student trained once and cached, read back without retraining, and
a Fréchet distance that ranks real held-out clips closest to real ones, ahead of the audio
modality's trivial baselines."""

import pytest

from latentforge.data.notes import NotesConfig, NotesData
from latentforge.eval.distribution import fid


def test_probe_fad_is_cached_and_ranks_real_clips_first(tmp_path, monkeypatch):
    import latentforge.pretraining.mert as mert
    from latentforge.eval import audio_fad
    from latentforge.eval.features import FEATURES, audio_features

    monkeypatch.setenv("LATENTFORGE_CACHE", str(tmp_path))
    data = NotesData(NotesConfig(seconds=0.32, train_size=64, val_size=48))
    features = audio_fad.dataset_features(data, None, "cpu", progress=False, steps=5, train_clips=64)
    assert features.name == "mert-probe" and features.info["comparable_with_published_fad"] is False
    assert features.info["steps"] == 5 and str(tmp_path) in features.source

    def no_training(*args, **kwargs):
        raise AssertionError("the cached student must be read back, not trained again")

    monkeypatch.setattr(mert, "train_mert", no_training)
    again = audio_fad.dataset_features(data.resized(train_size=8), None, "cpu", progress=False, steps=5, train_clips=64)
    assert again.hash == features.hash                                 # split sizes do not change the key
    val = data.split("val")["audio"]
    test = data.split("test")["audio"]
    a = features(val)
    assert a.shape == (48, 128)
    real = fid(a, features(test))
    baselines = data.modality.baselines(data.split("train")["audio"], 48, seed=0)
    assert real < fid(a, features(baselines["white noise"])) and real < fid(a, features(baselines["silence"]))
    with pytest.raises(AssertionError, match="read back"):               # another content key trains anew
        audio_fad.dataset_features(NotesData(NotesConfig(seconds=0.32, train_size=8, kinds=("note",))), None,
                                   "cpu", progress=False, steps=5, train_clips=64)
    with pytest.raises(ValueError, match="at least 1280 samples"):
        audio_fad.dataset_mert(NotesData(NotesConfig(seconds=0.06, train_size=8)), progress=False, steps=1)
    assert FEATURES["audio"] is audio_features                          # what the eval stage picks
