"""Audio: spectral features against librosa, the codec metrics against torchmetrics and their own
definitions, the procedural notes data, the pitch tracker (100 % on real renders), WAV files and
the previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentforge.data.notes import KINDS, TIMBRES, NotesConfig, NotesData, notes_caption, parse_notes_caption, render_notes
from latentforge.eval.pitch import detect_pitches, notes_adherence, read_notes
from latentforge.modalities.audio import AudioModality, read_wav, write_wav
from latentforge.modalities.audio_metrics import mel_distance, si_sdr, stft_distance
from latentforge.nn.spectral import chroma, hz_to_mel, mel_filters, mel_to_hz, midi_to_hz, stft_magnitude

RATE = 16000


def sine(hz: float, seconds: float = 0.25, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ------------------------------------------------------------------------------- spectral

def test_mel_filters_match_librosa():
    librosa = pytest.importorskip("librosa")
    for n_fft, n_mels, fmin, fmax in ((512, 40, 0.0, None), (1024, 80, 30.0, 7600.0), (64, 10, 0.0, None)):
        ours = mel_filters(RATE, n_fft, n_mels, fmin, fmax).numpy()
        ref = librosa.filters.mel(sr=RATE, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        assert ours.shape == ref.shape
        np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=1e-4)
    hz = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-6)
    np.testing.assert_allclose(hz_to_mel(hz), librosa.hz_to_mel(hz), rtol=1e-9)


def test_stft_magnitude_matches_librosa():
    librosa = pytest.importorskip("librosa")
    x = np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32)
    ours = stft_magnitude(torch.from_numpy(x), 512, 128).numpy()
    ref = np.abs(librosa.stft(x, n_fft=512, hop_length=128, window="hann", center=True, pad_mode="reflect"))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=1e-4)


def test_chroma_finds_the_pitch_class_of_a_sine():
    x = torch.from_numpy(np.stack([sine(midi_to_hz(m), 0.5) for m in (60, 64, 69)]))
    got = chroma(x, RATE).argmax(-1).tolist()
    assert got == [0, 4, 9]


# ------------------------------------------------------------------------------- metrics

def test_si_sdr_matches_torchmetrics_and_ignores_scale():
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as ref_si_sdr

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2000, generator=g)
    est = ref + 0.3 * torch.randn(3, 2000, generator=g)
    ours = si_sdr(est, ref)
    torch.testing.assert_close(ours, ref_si_sdr(est, ref, zero_mean=True), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(si_sdr(4.0 * est, ref), ours, atol=1e-4, rtol=1e-5)     # scale-invariant
    assert (ours > 5).all() and (si_sdr(ref, ref) > 60).all()


def test_spectral_distances_are_zero_on_identity_and_grow_with_distortion():
    clean = torch.from_numpy(np.stack([sine(220.0), sine(440.0)]))
    g = torch.Generator().manual_seed(1)
    for dist in (lambda a, b: mel_distance(a, b, RATE), stft_distance):
        assert torch.allclose(dist(clean, clean), torch.zeros(2), atol=1e-6)
        small = dist(clean + 0.01 * torch.randn(clean.shape, generator=g), clean)
        large = dist(clean + 0.1 * torch.randn(clean.shape, generator=g), clean)
        assert (small > 0).all() and (large > small).all()


def test_stoi_is_high_for_clean_speechlike_audio_and_low_for_noise():
    pytest.importorskip("pystoi")
    from latentforge.modalities.audio_metrics import stoi

    rng = np.random.default_rng(0)
    t = np.arange(RATE) / RATE
    # a vowel-like buzz with a syllable rate envelope, 1 s
    voice = (np.sign(np.sin(2 * np.pi * 120 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2).astype(np.float32)
    ref = torch.from_numpy(voice[None])
    noisy = ref + torch.from_numpy(rng.standard_normal((1, RATE)).astype(np.float32))
    assert stoi(ref, ref, RATE)[0] > 0.99 and stoi(noisy, ref, RATE)[0] < 0.8


# ------------------------------------------------------------------------------- notes data

def test_notes_rows_are_deterministic_labelled_and_in_range():
    data = NotesData(NotesConfig(seconds=0.25, train_size=4, val_size=24))
    a, b = data.split("val"), data.rows("val", 10, 14)
    assert a["audio"].shape == (24, 4000) and a["audio"].dtype == np.float32
    np.testing.assert_array_equal(a["audio"][10:14], b["audio"])    # a row is made from (seed, split, i) alone
    peak = np.abs(a["audio"]).max(1)
    assert (peak >= 0.3 - 1e-6).all() and (peak <= 0.9 + 1e-6).all()
    for k, t, r, cap in zip(a["kind"], a["timbre"], a["root"], a["captions"]):
        assert notes_caption(KINDS[k], TIMBRES[t], int(r)) == cap
        assert parse_notes_caption(str(cap), "test") == (KINDS[k], TIMBRES[t], int(r))
    assert (a["label"] == a["root"] % 12).all()


def test_notes_tones_do_not_alias():
    # a square wave at C7 has odd harmonics above 8 kHz; only those below the Nyquist band are drawn
    clip = render_notes("note", "square", 96, 8000, RATE, np.random.default_rng(0))
    mag = np.abs(np.fft.rfft(clip * np.hanning(len(clip))))
    freqs = np.fft.rfftfreq(len(clip), 1 / RATE)
    f0 = midi_to_hz(96)
    harmonic = np.min(np.abs(freqs[:, None] - f0 * np.arange(1, 8)[None]), axis=1) < 20
    assert mag[~harmonic].max() < 0.01 * mag.max()


def test_notes_config_names_bad_fields():
    with pytest.raises(ValueError, match="timbres"):
        NotesConfig(timbres=("violin",))
    with pytest.raises(ValueError, match="low <= high"):
        NotesConfig(low=80, high=60)
    with pytest.raises(ValueError, match="can't read caption"):
        NotesData(NotesConfig.tiny()).parse_conditions({"caption": "a tuba plays C4"}, "c.json")


# ------------------------------------------------------------------------------- pitch tracker

def test_pitch_tracker_reads_every_real_render():
    """The judge's floor: 100 % on 240 rendered clips of every kind and timbre, C3..C5."""
    data = NotesData(NotesConfig(train_size=4, val_size=240))
    val = data.split("val")
    scores = notes_adherence(val["audio"], RATE, [KINDS[k] for k in val["kind"]], val["root"])
    assert scores["notes_exact"] == 1.0 and scores["unknown_frac"] == 0.0


def test_pitch_tracker_agrees_with_librosa_pyin_on_single_notes():
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(3)
    for midi, timbre in ((50, "saw"), (57, "square"), (64, "triangle"), (71, "organ")):
        clip = render_notes("note", timbre, midi, 8000, RATE, rng)
        f0, voiced, _ = librosa.pyin(clip, fmin=60, fmax=1000, sr=RATE, frame_length=1024)
        ref = int(np.rint(np.median(librosa.hz_to_midi(f0[voiced]))))
        assert detect_pitches(clip, RATE) == [midi] and ref == midi


def test_pitch_tracker_separates_chords_from_arpeggios_and_rejects_noise():
    rng = np.random.default_rng(0)
    chord = render_notes("minor", "saw", 55, 8000, RATE, rng)
    arp = render_notes("arpeggio", "pluck", 55, 8000, RATE, rng)
    assert read_notes(chord, RATE).kind == "minor" and read_notes(chord, RATE).pitches == (55, 58, 62)
    assert read_notes(arp, RATE).kind == "arpeggio" and read_notes(arp, RATE).root == 55
    assert detect_pitches(np.zeros(8000), RATE) == []
    noise = np.random.default_rng(1).standard_normal(8000) * 0.3
    assert read_notes(noise, RATE).kind == "unknown"


# ------------------------------------------------------------------------------- files and previews

def test_wav_round_trip(tmp_path):
    clip = sine(330.0)
    write_wav(tmp_path / "a.wav", clip, RATE)
    back, rate = read_wav(tmp_path / "a.wav")
    assert rate == RATE and back.shape == clip.shape
    assert np.abs(back - clip).max() < 1.0 / 32767 + 1e-6


def test_audio_modality_round_trip_and_preview(tmp_path):
    modality = AudioModality(RATE, 4000)
    clips = np.stack([sine(220.0), sine(330.0), np.zeros(4000, np.float32)])
    x = modality.to_model(clips)
    assert x.shape == (3, 4000, 1)
    np.testing.assert_array_equal(modality.from_model(x), clips)
    names = modality.preview(clips, ["a", "b", "silence"], tmp_path / "samples", "test")
    assert names[0] == "samples.png" and names[1:] == [f"samples_{i:02d}.wav" for i in range(3)]
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    with pytest.raises(ValueError, match=r"float \[N, L\]"):
        modality.check(np.zeros((2, 10, 1), np.float32), "x")
    base = modality.baselines(clips, 4, seed=0)
    assert set(base) == {"white noise", "silence", "train copies"} and all(v.shape == (4, 4000) for v in base.values())
    metrics = modality.recon_metrics(clips[:2], clips[:2])
    assert metrics["mel_distance"] == pytest.approx(0.0, abs=1e-6) and metrics["si_sdr"] > 60
