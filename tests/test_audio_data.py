"""The real audio sets: music21 scores rendered with General MIDI (the audio must sound the score's
pitches), espeak-ng speech (held-out voices, the rate heard in the clip), and their bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from latentforge.modalities.spectral import chroma

RATE = 16000


# ------------------------------------------------------------------------------- music

@pytest.fixture(scope="module")
def music_val():
    pytest.importorskip("music21")
    pytest.importorskip("tinysoundfont")
    from latentforge.data.music import MusicConfig, MusicData

    data = MusicData(MusicConfig(seconds=1.0, train_size=4, val_size=12))
    return data, data.split("val")


def test_music_audio_sounds_the_scores_pitch_classes(music_val):
    """Each clip's chroma (from the audio) matches its own score excerpt's pitch classes far better
    than other excerpts' do: the renderer plays what the labels say."""
    _, val = music_val
    heard = chroma(torch.from_numpy(val["audio"]), RATE).numpy()
    written = val["chroma_roll"].sum(1).astype(np.float64)
    cos = (heard / np.linalg.norm(heard, axis=1, keepdims=True)) @ (written / np.linalg.norm(written, axis=1, keepdims=True)).T
    own, others = np.diag(cos), (cos.sum(1) - np.diag(cos)) / (len(cos) - 1)
    assert own.min() > 0.6 and own.mean() > others.mean() + 0.25


def test_music_labels_are_consistent(music_val):
    from latentforge.data.music import INSTRUMENTS, KEYS, MAX_PARTS

    data, val = music_val
    n, frames = len(val["audio"]), 50
    assert val["audio"].shape == (n, RATE) and val["chroma_roll"].shape == (n, frames, 12)
    assert val["instruments"].shape == (n, MAX_PARTS) and (val["instruments"][:, 0] == val["instrument"]).all()
    assert ((0 <= val["label"]) & (val["label"] < len(KEYS))).all()
    # the melody's pitch class is among the pitch classes sounding in that frame
    f_idx = np.nonzero(val["melody"] >= 0)
    assert val["chroma_roll"][f_idx[0], f_idx[1], val["melody"][f_idx] % 12].all()
    for caption, key, parts in zip(data.captions(val), val["label"], val["instruments"]):
        names = [list(INSTRUMENTS)[k] for k in parts if k >= 0]
        assert caption.startswith(f"a piece in {KEYS[key]} for {names[0]}")


def test_music_holds_out_whole_pieces():
    pytest.importorskip("music21")
    from latentforge.data.music import corpus_pieces, split_pieces

    splits = {s: set(split_pieces(("bach",), s)) for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == len(corpus_pieces(("bach",))) > 300
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]


def test_music_config_names_bad_fields():
    from latentforge.data.music import MusicConfig

    with pytest.raises(ValueError, match="composers"):
        MusicConfig(composers=("mozart",))
    with pytest.raises(ValueError, match="instruments"):
        MusicConfig(instruments=("kazoo",))


# ------------------------------------------------------------------------------- speech

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (.ci/run and `make test` install it)")


@needs_espeak
def test_speech_holds_out_voices_and_places_the_word():
    from latentforge.data.speech import SpeechConfig, SpeechData, split_variants, voice_variants

    train, val = set(split_variants("train")), set(split_variants("val"))
    assert not train & val and len(train | val) == len(voice_variants()) >= 20
    data = SpeechData(SpeechConfig(seconds=1.0, train_size=4, val_size=6))
    rows = data.split("val")
    assert rows["audio"].shape == (6, RATE)
    loud = np.abs(rows["audio"]) > 0.02
    assert loud.any(1).all() and (loud.mean(1) < 0.8).all()          # a word, with silence around it
    assert [c.split(" says ")[1] for c in data.captions(rows)] == [data.class_names[k] for k in rows["label"]]
    assert data.modality.speech


@needs_espeak
def test_speech_rate_is_heard_in_the_clip():
    from latentforge.data.speech import speak

    def span(rate):
        wave, _ = speak("seven", "en+m3", rate, 50)
        on = np.flatnonzero(np.abs(wave) > 0.02)
        return on[-1] - on[0]

    assert span(300) < 0.75 * span(120)


def test_speech_without_espeak_names_the_package(monkeypatch):
    import latentforge.data.speech as speech

    speech.voice_variants.cache_clear()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
        speech.voice_variants()
    speech.voice_variants.cache_clear()
