"""The real audio sets: music21 scores rendered with General MIDI (the audio must sound the score's
pitches), espeak-ng speech (held-out voices, the rate heard in the clip), and their bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from latentforge.nn.spectral import chroma

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
def test_audio_class_judge_reads_held_out_voices():
    """The speech judge's probe, fitted on 200 clips, names the digit of held-out voices' clips far
    above chance (measured 0.83, chance 0.1), and a wrong label is read as wrong."""
    from latentforge.data.speech import SpeechConfig, SpeechData
    from latentforge.eval.judges import judge_for

    data = SpeechData(SpeechConfig(seconds=0.8, train_size=200, val_size=60))
    val = data.split("val")
    score = judge_for(data)
    right = score(data, val["audio"], {"label": val["label"]}, val["audio"])
    assert right["class_acc"] == right["real_clips_class_acc"] > 0.6
    assert score(data, val["audio"], {"label": (val["label"] + 1) % 10}, val["audio"])["class_acc"] < 0.15


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


# ------------------------------------------------------------------------------- your own folder

@pytest.fixture()
def audio_folder(tmp_path):
    """Two class folders of tones: WAV at 22,050 Hz (mono) and 16 kHz, a stereo FLAC at 44.1 kHz,
    a caption sidecar, a text file named .wav and a truncated WAV."""
    soundfile = pytest.importorskip("soundfile")
    from latentforge.modalities.audio import write_wav
    from latentforge.nn.spectral import midi_to_hz

    root = tmp_path / "sounds"
    for i in range(6):
        label = "low" if i % 2 else "high"
        (root / label).mkdir(parents=True, exist_ok=True)
        midi = 57 if label == "low" else 69
        rate = 22050 if i < 3 else RATE
        t = np.arange(int(rate * 0.4)) / rate
        write_wav(root / label / f"tone{i}.wav", 0.5 * np.sin(2 * np.pi * midi_to_hz(midi) * t), rate)
    t = np.arange(int(44100 * 0.4)) / 44100
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 440.0 * t)] * 2, axis=1)
    soundfile.write(str(root / "high" / "stereo.flac"), stereo, 44100)
    (root / "high" / "tone0.txt").write_text("a high  tone")
    (root / "low" / "notes.wav").write_text("not audio")
    whole = (root / "low" / "tone1.wav").read_bytes()
    (root / "low" / "cut.wav").write_bytes(whole[:30])
    return root


def test_audio_folder_decodes_resamples_skips_and_labels(audio_folder, tmp_path, capsys):
    from latentforge.config import ConfigError
    from latentforge.data.audio_folder import AudioFolderConfig, AudioFolderData
    from latentforge.eval.pitch import detect_pitches

    data = AudioFolderData(AudioFolderConfig(path=str(audio_folder), seconds=0.5))
    data.run_dir = tmp_path / "run"
    train, val = data.split("train"), data.split("val")
    clips = np.concatenate([train["audio"], val["audio"]])
    files = np.concatenate([train["files"], val["files"]])
    labels = np.concatenate([train["label"], val["label"]])
    assert clips.shape == (7, 8000) and clips.dtype == np.float32 and data.classes == ["high", "low"]
    skipped = sorted(line.split("\t")[0] for line in (tmp_path / "run" / "skipped.txt").read_text().splitlines())
    assert skipped == ["low/cut.wav", "low/notes.wav"]
    # resampled files keep their pitch; the 0.4 s files are padded with silence to 0.5 s
    for clip, label in zip(clips, labels):
        assert detect_pitches(clip, RATE, max_notes=1) == [69 if data.classes[label] == "high" else 57]
        assert np.abs(clip[int(0.41 * RATE):]).max() == 0
    assert "resampled 4 file(s) to 16000 Hz from 22050 Hz (3), 44100 Hz (1)" in capsys.readouterr().err
    captions = dict(zip(files, np.concatenate([train["captions"], val["captions"]])))
    assert captions["high/tone0.wav"] == "a high tone"
    strict = AudioFolderData(AudioFolderConfig(path=str(audio_folder), strict=True))
    with pytest.raises(ConfigError, match=r"data.strict: .*low/cut.wav is not a readable audio file"):
        strict.split("train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no wav/flac/ogg/mp3 audio files under"):
        AudioFolderData(AudioFolderConfig(path=str(tmp_path / "empty")))
