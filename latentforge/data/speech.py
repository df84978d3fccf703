"""Synthetic speech (`data.name: speech`): Debian's espeak-ng (formant synthesis, not recordings)
saying the digits zero..nine in English accents x voice variants, at random rates and pitches,
placed at a random offset in the clip and resampled to the data's rate.

Voices, not clips, are split: every fifth voice variant (in sorted order) speaks only in val and
test, so a held-out clip's voice was never heard in training. Labels: the digit (`label`), the
voice's listed gender (`gender`: 0 male, 1 female, 2 not listed), the variant and accent, rate
and pitch.

    apt-get install espeak-ng            # the synthesiser (CI and `make test` install it)

Legend: N clips, L samples.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from latentforge.data.audio import AudioDataConfig, AudioDataSet, normalise_peak, resample
from latentforge.data.video import row_rng
from latentforge.registry import register

DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS: tuple[str, ...] = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029")
GENDERS: tuple[str, ...] = ("male", "female", "unlisted")
INSTALL = "espeak-ng is not installed: apt-get install espeak-ng (Debian/Ubuntu), brew install espeak-ng (macOS)"


@dataclass
class SpeechConfig(AudioDataConfig):
    name: str = "speech"
    seconds: float = 1.0
    min_rate: int = 120                  # words per minute, drawn per clip
    max_rate: int = 220
    min_pitch: int = 20                  # espeak-ng's 0..99 pitch scale
    max_pitch: int = 80
    accents: tuple[str, ...] = ACCENTS

    def __post_init__(self) -> None:
        self.check_audio()
        self.accents = tuple(self.accents)
        bad = [a for a in self.accents if a not in ACCENTS]
        if not self.accents or bad:
            raise ValueError(f"SpeechConfig.accents must list some of {', '.join(ACCENTS)}; got {list(self.accents)}")
        if not 80 <= self.min_rate <= self.max_rate <= 450:
            raise ValueError(f"SpeechConfig needs 80 <= min_rate <= max_rate <= 450 (words/min), "
                             f"got {self.min_rate}, {self.max_rate}")
        if not 0 <= self.min_pitch <= self.max_pitch <= 99:
            raise ValueError(f"SpeechConfig needs 0 <= min_pitch <= max_pitch <= 99, got {self.min_pitch}, {self.max_pitch}")

    @classmethod
    def tiny(cls) -> SpeechConfig:
        return cls(seconds=0.5, train_size=4, val_size=3, min_rate=250, max_rate=300)


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError(INSTALL)
    return path


@lru_cache(maxsize=1)
def voice_variants() -> tuple[tuple[str, int], ...]:
    """espeak-ng's voice variants as (name, gender index), sorted by name."""
    listing = subprocess.run([espeak(), "--voices=variant"], capture_output=True, text=True, check=True).stdout
    out = {}
    for line in listing.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 5 or not cols[4].startswith("!v/"):
            continue
        gender = {"M": 0, "F": 1}.get(cols[2].split("/")[-1], 2)
        out[cols[4][3:]] = gender
    if not out:
        raise RuntimeError("espeak-ng lists no voice variants (espeak-ng --voices=variant)")
    return tuple(sorted(out.items()))


def split_variants(split: str) -> tuple[tuple[str, int], ...]:
    """Variant j of the sorted list speaks in val and test when j % 5 == 0, in train otherwise."""
    held_out = split in ("val", "test")
    return tuple(v for j, v in enumerate(voice_variants()) if (j % 5 == 0) == held_out)


def speak(text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of `text`: (float32 [n] in [-1, 1], its sample rate)."""
    from latentforge.modalities.audio import read_wav

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        result = subprocess.run([espeak(), "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), text],
                                capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            raise RuntimeError(f"espeak-ng -v {voice} failed: {result.stderr.strip() or 'no output'}")
        return read_wav(path)


def place(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """The utterance at a random offset in a clip of `length` samples (its middle when longer)."""
    out = np.zeros(length, np.float32)
    if len(wave) >= length:
        cut = (len(wave) - length) // 2
        return wave[cut: cut + length].astype(np.float32)
    start = int(rng.integers(0, length - len(wave) + 1))
    out[start: start + len(wave)] = wave
    return out


@register("dataset", "speech", SpeechConfig)
class SpeechData(AudioDataSet):
    judge = "audio_class"
    natural_conditioner = "class"
    condition_keys = ("label",)
    class_names = DIGITS
    condition_text = "Each sample is drawn for the digit it should say."

    @property
    def modality(self):
        from latentforge.modalities.audio import AudioModality

        return AudioModality(self.config.sample_rate, self.config.length, speech=True)

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        cfg = self.config
        variants = split_variants(name)
        n = stop - start
        audio = np.zeros((n, cfg.length), np.float32)
        ints = {k: np.zeros(n, np.int64) for k in ("label", "gender", "variant", "accent", "rate", "pitch")}
        captions = []
        for r, i in enumerate(range(start, stop)):
            rng = row_rng(cfg.seed, name, i)
            digit = int(rng.integers(len(DIGITS)))
            v = int(rng.integers(len(variants)))
            accent = int(rng.integers(len(cfg.accents)))
            rate = int(rng.integers(cfg.min_rate, cfg.max_rate + 1))
            pitch = int(rng.integers(cfg.min_pitch, cfg.max_pitch + 1))
            wave, rate_in = speak(DIGITS[digit], f"{cfg.accents[accent]}+{variants[v][0]}", rate, pitch)
            audio[r] = normalise_peak(place(resample(wave, rate_in, cfg.sample_rate), cfg.length, rng),
                                      rng.uniform(0.3, 0.9))
            gender = variants[v][1]
            for key, value in (("label", digit), ("gender", gender), ("variant", v), ("accent", accent),
                               ("rate", rate), ("pitch", pitch)):
                ints[key][r] = value
            who = {0: "a male voice", 1: "a female voice"}.get(gender, "a voice")
            captions.append(f"{who} says {DIGITS[digit]}")
        return {"audio": audio, **ints, "captions": np.array(captions)}

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        return {"digit": (arrays["label"][:, None], len(DIGITS)), "gender": (arrays["gender"][:, None], len(GENDERS))}
