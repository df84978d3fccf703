"""Your own audio: any folder of WAV / FLAC / OGG / MP3 files as a data set (`data.name: audiofolder`).

    latentforge run configs/audio_notes.yaml data.name=audiofolder data.path=DIR [data.seconds=1.0]

Everything an image folder does (data/folder.py: recursive search, classes from first-level
subfolders, `NAME.txt` captions, decoding once into a keyed cache, bad files skipped and listed in
`runs/<name>/skipped.txt` or named by `strict: true`, a seeded train/val split) with audio decoding:
1. `soundfile` reads the file (libsndfile: WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1).
2. Channels are averaged to mono.
3. A file at another sample rate is resampled (polyphase, exact ratio) to `sample_rate`; the run
   log says how many files were resampled and from which rates, and the cache's index lists them.
4. `excerpt: start` keeps the first `seconds`, `centre` the middle ones; a shorter file is padded
   with silence at the end. Samples are clipped to [-1, 1]; levels are kept as recorded.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from latentforge.data.audio import INSTALL_HINT, resample
from latentforge.data.base import DataConfig
from latentforge.data.folder import FolderData
from latentforge.modalities.audio import AudioModality
from latentforge.registry import register

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class AudioFolderConfig(DataConfig):
    name: str = "audiofolder"
    path: str = ""                              # the folder (searched recursively)
    sample_rate: int = 16000
    seconds: float = 1.0
    excerpt: Literal["start", "centre"] = "start"
    labels: Literal["auto", "none"] = "auto"    # auto: classes from first-level subfolders
    val_fraction: float = 0.1
    strict: bool = False                        # stop at the first file that does not decode

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, int) or not 4000 <= self.sample_rate <= 48000:
            raise ValueError(f"sample_rate must be an integer in [4000, 48000] Hz, got {self.sample_rate!r}")
        if not 0.05 <= float(self.seconds) <= 30.0:
            raise ValueError(f"seconds must be in [0.05, 30], got {self.seconds!r}")
        if self.excerpt not in ("start", "centre"):
            raise ValueError(f"excerpt must be 'start' or 'centre', got {self.excerpt!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def length(self) -> int:
        return int(round(self.sample_rate * self.seconds))

    @classmethod
    def tiny(cls) -> AudioFolderConfig:
        """scipy's own test WAV files (scipy is a dependency of the data extras): a real folder of
        clips at 1,234 to 48,000 Hz, 1 to 5 channels, 1- to 64-bit samples, some of them truncated,
        for the registry's contract tests."""
        import scipy.io

        return cls(path=str(Path(scipy.io.__file__).parent / "tests" / "data"), seconds=0.25, labels="none")


def load_clip(path: Path, sample_rate: int) -> tuple[np.ndarray, int]:
    """A whole file -> (float32 [n] mono at sample_rate, the file's own rate)."""
    try:
        import soundfile
    except ImportError as e:
        raise ImportError(f"reading audio files needs soundfile: {INSTALL_HINT}") from e
    wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    if wave.size == 0:
        raise ValueError("the file holds no samples")
    mono = wave.mean(axis=1)
    return (resample(mono, rate, sample_rate) if rate != sample_rate else mono), int(rate)


def read_audio(path: Path, sample_rate: int, length: int, excerpt: str) -> tuple[np.ndarray, int]:
    """One file -> (float32 [length] mono at sample_rate, the file's own rate)."""
    mono, rate = load_clip(path, sample_rate)
    if len(mono) > length:
        start = 0 if excerpt == "start" else (len(mono) - length) // 2
        mono = mono[start: start + length]
    out = np.zeros(length, np.float32)
    out[: len(mono)] = np.clip(mono, -1.0, 1.0)
    return out, rate


@register("dataset", "audiofolder", AudioFolderConfig)
class AudioFolderData(FolderData):
    """A folder of audio files, each decoded by `read_audio` (the module docstring's rules)."""

    extensions = AUDIO_EXTENSIONS
    noun = "audio file"
    example = "~/my_sounds"

    def __init__(self, config: AudioFolderConfig) -> None:
        super().__init__(config)
        self._rates: dict[str, int] = {}

    @property
    def modality(self) -> AudioModality:
        return AudioModality(self.config.sample_rate, self.config.length)

    def decode_file(self, path: Path) -> np.ndarray:
        cfg = self.config
        wave, rate = read_audio(path, cfg.sample_rate, cfg.length, cfg.excerpt)
        if rate != cfg.sample_rate:
            self._rates[path.relative_to(self.root).as_posix()] = rate
        return wave

    def decode_fields(self) -> dict:
        cfg = self.config
        return {"sample_rate": cfg.sample_rate, "length": cfg.length, "excerpt": cfg.excerpt}

    def decode_notes(self) -> dict:
        if self._rates:
            rates = ", ".join(f"{r} Hz ({n})" for r, n in sorted(Counter(self._rates.values()).items()))
            print(f"[data] resampled {len(self._rates)} file(s) to {self.config.sample_rate} Hz from {rates}",
                  file=sys.stderr)
        return {"resampled": sorted(f"{f}\t{r}" for f, r in self._rates.items())}
