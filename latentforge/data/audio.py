"""What the audio data sets share (`data.name: notes | music | speech`, one file each: data/notes.py,
data/music.py, data/speech.py): their base class, pitch names, and loudness normalisation.

    notes   procedural notes, triads and arpeggios with known pitches, in six additive timbres
            (conditions: captions, the root's pitch class); judged by the pitch tracker
    music   real scores from the music21 corpus (Bach chorales, Palestrina, folk tunes) rendered with
            the General MIDI soundfont in pretty_midi's wheel, an instrument per part
    speech  Debian's espeak-ng saying digits in many voices, rates and pitches (synthetic speech)

A split is {"audio": float32 [N, L] mono in [-1, 1] at `sample_rate`, ...} plus per-row answers;
row i of a split is a pure function of (config, split, i), so any range of rows is made without
the others (data/video.py's `row_rng` seeds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from latentforge.data.base import DataConfig, RowwiseDataSet
from latentforge.modalities.audio import AudioModality

PITCH_CLASSES: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
INSTALL_HINT = "pip install 'latentforge[audio]'"


def note_name(midi: int) -> str:
    """MIDI number -> scientific pitch name: 60 -> C4, 61 -> C#4."""
    return f"{PITCH_CLASSES[midi % 12]}{midi // 12 - 1}"


def parse_note_name(text: str) -> int:
    """`note_name`'s inverse, also reading flats: "Bb3" -> 58. ValueError on anything else."""
    text = text.strip()
    letters = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
    if len(text) < 2 or text[0].upper() not in letters:
        raise ValueError(f"not a note name: {text!r} (expected e.g. C4, F#3, Bb2)")
    pc, rest = letters[text[0].upper()], text[1:]
    while rest[:1] in ("#", "b"):
        pc += 1 if rest[0] == "#" else -1
        rest = rest[1:]
    try:
        octave = int(rest)
    except ValueError:
        raise ValueError(f"not a note name: {text!r} (expected e.g. C4, F#3, Bb2)") from None
    return 12 * (octave + 1) + pc


def normalise_peak(wave: np.ndarray, peak: float) -> np.ndarray:
    """Scale a clip [L] (or clips [N, L]) so its largest |sample| is `peak`; silence stays silent."""
    top = np.abs(wave).max(axis=-1, keepdims=True)
    return (wave * np.where(top > 0, peak / np.maximum(top, 1e-12), 0.0)).astype(np.float32)


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact ratio."""
    if rate_in == rate_out:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(rate_out, rate_in)
    return resample_poly(wave, ratio.numerator, ratio.denominator).astype(np.float32)


@dataclass
class AudioDataConfig(DataConfig):
    sample_rate: int = 16000
    seconds: float = 0.5                # clip length
    train_size: int = 4096
    val_size: int = 256                 # rows of val, and of test

    @property
    def length(self) -> int:
        return int(round(self.sample_rate * self.seconds))

    def check_audio(self) -> None:
        kind = type(self).__name__
        if not isinstance(self.sample_rate, int) or not 4000 <= self.sample_rate <= 48000:
            raise ValueError(f"{kind}.sample_rate must be an integer in [4000, 48000] Hz, got {self.sample_rate!r}")
        if not 0.05 <= float(self.seconds) <= 30.0:
            raise ValueError(f"{kind}.seconds must be in [0.05, 30], got {self.seconds!r}")
        for key in ("train_size", "val_size", "seed"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
                raise ValueError(f"{kind}.{key} must be an integer >= {0 if key == 'seed' else 1}, got {value!r}")


class AudioDataSet(RowwiseDataSet):
    """What the audio sets share: splits of train_size / val_size clips, made in pieces of 256,
    captions stored in the split."""

    chunk_rows = 256
    caption_key = "captions"
    config: AudioDataConfig

    @property
    def modality(self) -> AudioModality:
        return AudioModality(self.config.sample_rate, self.config.length)

