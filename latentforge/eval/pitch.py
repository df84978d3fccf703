"""A pitch tracker for the audio judges: which notes sound in a clip, and in what order.

Multi-pitch estimation by harmonic summation with iterative cancellation (the scheme of Klapuri's
estimator, at the small scale of clean tones): the clip's magnitude spectrum (one Hann-windowed
frame, zero-padded to a fine grid) gives every candidate pitch p a salience, the sum of the peak
magnitudes near its harmonics k·f(p) weighted by 1/√k; the most salient pitch is taken, its
harmonics are cut out of the spectrum, and the search goes on while the next pitch keeps a
quarter of the first one's salience. A pitch must have energy at its fundamental, which rules out
the sub-octave (whose every other harmonic matches the note's) and the common "missing
fundamental" of a triad (C2 "explains" C3-E3-G3 as harmonics 2, 5/2 and 3).

`read_notes` turns the pitches into what a notes caption says: a note, a major or minor triad, or
a rising arpeggio (three single notes, one per third of the clip).

Legend: F frequency bins, P candidate pitches, H harmonics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentforge.nn.spectral import midi_to_hz

FFT_SIZE = 1 << 15          # zero-padded grid: 0.49 Hz bins at 16 kHz
QUARTER_TONE = 2 ** (1 / 24)
SALIENCE_KEEP = 0.25        # a further pitch needs this fraction of the first one's salience
FUNDAMENTAL_FLOOR = 0.05    # ... and this fraction of the spectrum's peak at its fundamental
SILENCE_RMS = 1e-3


def magnitude_spectrum(clip: np.ndarray, n_fft: int = FFT_SIZE) -> np.ndarray:
    """|FFT| of one Hann-windowed frame spanning the clip, zero-padded to n_fft: [F]."""
    x = np.asarray(clip, np.float64)
    x = x[: n_fft]
    return np.abs(np.fft.rfft(x * np.hanning(len(x)), n_fft))


def detect_pitches(clip: np.ndarray, sample_rate: int, low: int = 28, high: int = 100,
                   max_notes: int = 4, harmonics: int = 10) -> list[int]:
    """MIDI pitches sounding in `clip` [L], most salient first (at most max_notes; [] for silence)."""
    clip = np.asarray(clip, np.float64)
    if len(clip) < 64 or np.sqrt(np.mean(clip ** 2)) < SILENCE_RMS:
        return []
    n_fft = max(FFT_SIZE, 1 << int(np.ceil(np.log2(len(clip)))))
    mag = magnitude_spectrum(clip, n_fft)
    bin_hz = sample_rate / n_fft
    lobe_hz = 2.0 * sample_rate / min(len(clip), n_fft)        # Hann main lobe half-width
    candidates = np.arange(low, high + 1)
    f0 = midi_to_hz(candidates)                                   # [P]
    k = np.arange(1, harmonics + 1)
    centre = f0[:, None] * k[None]                                # [P, H] Hz
    lo = np.floor(centre / QUARTER_TONE / bin_hz).astype(int)
    hi = np.ceil(centre * QUARTER_TONE / bin_hz).astype(int)
    inside = hi < len(mag)
    peak_all = mag.max()
    found: list[int] = []
    first = None
    for _ in range(max_notes):
        peaks = np.zeros(centre.shape)
        for p, h in zip(*np.nonzero(inside)):
            peaks[p, h] = mag[lo[p, h]: hi[p, h] + 1].max()
        salience = (peaks / np.sqrt(k)[None]).sum(1)
        salience[peaks[:, 0] < FUNDAMENTAL_FLOOR * peak_all] = 0.0
        salience[np.isin(candidates, found)] = 0.0
        best = int(np.argmax(salience))
        if salience[best] <= 0 or (first is not None and salience[best] < SALIENCE_KEEP * first):
            break
        first = salience[best] if first is None else first
        found.append(int(candidates[best]))
        for f in f0[best] * np.arange(1, int(sample_rate / 2 / f0[best]) + 1):  # cancel every harmonic
            cut = max(lobe_hz, f * (QUARTER_TONE - 1))
            mag[max(0, int((f - cut) / bin_hz)): int((f + cut) / bin_hz) + 1] = 0.0
    return found


@dataclass(frozen=True)
class NotesReading:
    kind: str          # "note", "major", "minor", "arpeggio" or "unknown"
    root: int          # MIDI of the lowest note (the arpeggio's first); -1 when unknown
    pitches: tuple[int, ...]


_TRIADS = {(4, 7): "major", (3, 7): "minor"}


def read_notes(clip: np.ndarray, sample_rate: int) -> NotesReading:
    """What a clip plays: three rising single notes in its thirds make an arpeggio; otherwise the
    whole clip's pitch set names a note (one pitch) or a triad (three pitches in root position)."""
    thirds = np.array_split(np.asarray(clip, np.float64), 3)
    tops = [detect_pitches(part, sample_rate, max_notes=1) for part in thirds]
    if all(len(t) == 1 for t in tops):
        a, b, c = (t[0] for t in tops)
        if a < b < c and (b - a, c - a) == (4, 7):
            return NotesReading("arpeggio", a, (a, b, c))
    pitches = tuple(sorted(detect_pitches(clip, sample_rate)))
    if len(pitches) == 1:
        return NotesReading("note", pitches[0], pitches)
    if len(pitches) == 3:
        kind = _TRIADS.get((pitches[1] - pitches[0], pitches[2] - pitches[0]))
        if kind is not None:
            return NotesReading(kind, pitches[0], pitches)
    return NotesReading("unknown", -1, pitches)


def notes_adherence(clips: np.ndarray, sample_rate: int, kinds: list[str] | None, roots: np.ndarray | None,
                    pitch_classes: np.ndarray | None = None) -> dict[str, float]:
    """Agreement of the clips' readings with what they were drawn for: kind, root pitch class, root
    (octave included) and all of them (`notes_exact`). Conditions may give only the pitch class
    (a class label): then only that is scored."""
    readings = [read_notes(c, sample_rate) for c in clips]
    got_pc = np.array([r.root % 12 if r.root >= 0 else -1 for r in readings])
    want_pc = np.asarray(roots) % 12 if roots is not None else np.asarray(pitch_classes)
    out = {"pitch_class_acc": float(np.mean(got_pc == want_pc)),
           "unknown_frac": float(np.mean([r.kind == "unknown" for r in readings]))}
    if kinds is not None and roots is not None:
        kind_ok = np.array([r.kind == k for r, k in zip(readings, kinds)])
        root_ok = np.array([r.root for r in readings]) == np.asarray(roots)
        out.update(kind_acc=float(kind_ok.mean()), root_acc=float(root_ok.mean()),
                   notes_exact=float((kind_ok & root_ok).mean()))
    return out
