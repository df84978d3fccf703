"""Audio: mono float32 waveforms [N, L] in [-1, 1] at `sample_rate` on disk, [N, L, 1] (channels
last, as every sequence in the library) for the networks.

Previews are what a person would rather hear and look at than read: a PNG of log-mel spectrograms,
one row per clip with its caption, and a 16-bit WAV per clip that the report plays in an
`<audio>` element. Reconstruction numbers are the codec literature's: multi-scale mel L1 and
multi-resolution STFT distance (modalities/audio_metrics.py), SI-SDR, and STOI for speech.
"""

from __future__ import annotations

import wave as wavfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from latentforge.atomic import atomic_path
from latentforge.modalities.animation import fit_text
from latentforge.modalities.base import Modality, train_copies

ROW_PX = 64             # spectrogram height per clip in the preview
LABEL_PX = 200          # caption column
MAX_WAVS = 16           # clips a preview writes as WAV files
PREVIEW_MELS = 64


@dataclass(frozen=True)
class AudioModality(Modality):
    sample_rate: int
    length: int                                  # L: samples per clip
    speech: bool = False                         # STOI among the reconstruction numbers
    name = "audio"
    key = "audio"
    noun = "clips"
    layout = "audio"

    def to_model(self, array: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(np.array(array) if isinstance(array, np.ndarray) else array, dtype=torch.float32)
        return x[..., None]  # [N, L, 1]

    def from_model(self, x: Tensor) -> np.ndarray:
        return x.float().clamp(-1, 1)[..., 0].cpu().numpy()  # [N, L]

    @property
    def inference_batch(self) -> int:
        # as many samples per batch as 64 one-second clips at 16 kHz: a codec's first layers hold
        # tens of channels per sample
        return max(4, 64 * 16000 // self.length)

    def tokenizer_fields(self) -> dict[str, Any]:
        return {"seq_len": self.length, "in_channels": 1, "sample_rate": self.sample_rate}

    @property
    def seconds(self) -> float:
        return self.length / self.sample_rate

    def check(self, array: np.ndarray, where: str) -> None:
        if not np.issubdtype(array.dtype, np.floating) or array.ndim != 2:
            raise ValueError(f"{where}: expected mono waveforms float [N, L], got {array.dtype} {list(array.shape)}")

    # -- previews ----------------------------------------------------------------------------
    def preview(self, samples: np.ndarray, captions: list[str] | None, path: Path, title: str) -> list[str]:
        self.check(samples, "preview")
        captions = captions or [""] * len(samples)
        png = path.with_suffix(".png")
        save_spectrograms(samples, [f"{i:02d}: {c}" for i, c in enumerate(captions)], png, self.sample_rate, title)
        names = [png.name]
        for i, clip in enumerate(samples[:MAX_WAVS]):
            wav = path.with_name(f"{path.name}_{i:02d}.wav")
            write_wav(wav, clip, self.sample_rate)
            names.append(wav.name)
        return names

    def preview_pairs(self, real: np.ndarray, recon: np.ndarray, path: Path, title: str) -> list[str]:
        clips = np.stack([c for pair in zip(real, recon) for c in pair])  # data, its reconstruction, next ...
        captions = [t for _ in range(len(real)) for t in ("data", "reconstruction")]
        return self.preview(clips, captions, path, title)

    # -- numbers -----------------------------------------------------------------------------
    def recon_metrics(self, real: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
        from latentforge.modalities.audio_metrics import mel_distance, si_sdr, stft_distance, stoi

        self.check(real, "recon_metrics real")
        self.check(recon, "recon_metrics recon")
        if real.shape != recon.shape:
            raise ValueError(f"recon_metrics: real {list(real.shape)} and recon {list(recon.shape)} differ")
        x, y = torch.as_tensor(np.asarray(real, np.float32)), torch.as_tensor(np.asarray(recon, np.float32))
        out: dict[str, Any] = {"mel_distance": float(mel_distance(y, x, self.sample_rate).mean()),
                               "stft_distance": float(stft_distance(y, x).mean()),
                               "si_sdr": float(si_sdr(y, x).mean())}
        if self.speech:
            out["stoi"] = float(np.mean(stoi(y, x, self.sample_rate)))
        return out

    def baselines(self, train: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
        """White noise at the data's loudness (right level, no pitch or structure), silence, and
        copies of training clips."""
        rng = np.random.default_rng(seed)
        rms = float(np.sqrt(np.mean(np.square(np.asarray(train[: min(len(train), 512)], np.float64)))))
        noise = np.clip(rms * rng.standard_normal((n, train.shape[1])), -1, 1).astype(np.float32)
        return {"white noise": noise, "silence": np.zeros((n, train.shape[1]), np.float32),
                "train copies": train_copies(train, n, seed)}

    def flat(self, array: np.ndarray) -> np.ndarray:
        """Log-mel spectrograms, flattened: distances between clips that sound alike are small even
        when their waveforms' phases differ."""
        from latentforge.nn.spectral import log_mel

        x = torch.as_tensor(np.asarray(array, np.float32))
        return log_mel(x, self.sample_rate, n_fft=512, hop=256, n_mels=40).reshape(len(x), -1).numpy()


# -- files ---------------------------------------------------------------------------------------

def write_wav(path: Path, clip: np.ndarray, sample_rate: int) -> None:
    """A mono 16-bit PCM WAV (written atomically; the standard library's `wave`, no extra package)."""
    pcm = (np.clip(np.asarray(clip, np.float64), -1, 1) * 32767).round().astype("<i2")
    with atomic_path(path) as tmp, wavfile.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(int(sample_rate))
        out.writeframes(pcm.tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV written by `write_wav` -> (float32 [L] in [-1, 1], sample rate)."""
    with wavfile.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * f.getsampwidth()}-bit samples")
        rate, channels = f.getframerate(), f.getnchannels()
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, channels)
    return (pcm.mean(axis=1) / 32767.0).astype(np.float32), rate


def save_spectrograms(clips: np.ndarray, captions: list[str], path: Path, sample_rate: int, title: str) -> None:
    """One log-mel spectrogram per row (low frequencies at the bottom, 80 dB of range, the magma-like
    ramp below), its caption to the left; the whole sheet written atomically."""
    from latentforge.nn.spectral import log_mel

    x = torch.as_tensor(np.asarray(clips, np.float32))
    hop = max(64, x.shape[1] // 256)
    spec = 20 * log_mel(x, sample_rate, n_fft=4 * hop if 4 * hop <= 2048 else 2048, hop=hop, n_mels=PREVIEW_MELS)
    spec = spec.numpy()                                    # [N, M, T] dB
    top = spec.max() if spec.size else 0.0
    level = np.clip((spec - (top - 80.0)) / 80.0, 0, 1)
    width = max(256, level.shape[-1])
    head = 24
    sheet = Image.new("RGB", (LABEL_PX + width, head + len(clips) * (ROW_PX + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 6), title, fill=(20, 20, 20))
    for i, (rows, text) in enumerate(zip(level, captions)):
        pixels = _ramp(rows[::-1])                          # low frequencies at the bottom
        tile = Image.fromarray(pixels).resize((width, ROW_PX), Image.BILINEAR)
        y = head + i * (ROW_PX + 2)
        sheet.paste(tile, (LABEL_PX, y))
        draw.text((4, y + 4), fit_text(text, LABEL_PX - 8, draw, lines_max=4), fill=(20, 20, 20))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _ramp(level: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] -> uint8 RGB: black, purple, orange, pale yellow (a magma-like ramp)."""
    stops = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], np.float64)
    pos = level * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).round().astype(np.uint8)
