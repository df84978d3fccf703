"""Procedural notes and chords (`data.name: notes`): a single note, a major or minor triad, or a rising
major arpeggio, in one of six additive timbres, with every pitch known; the pitch tracker
(eval/pitch.py) judges samples against their caption ("a saw plays a rising C4 major arpeggio").

Tones are sums of harmonics k·f0 below the Nyquist frequency only, so no timbre aliases: a square
wave is its odd harmonics at 1/k, a triangle its odd ones at 1/k², a sawtooth every one at 1/k, the
organ a few chosen drawbars, the pluck a sawtooth whose upper harmonics die away faster. Each clip
draws a root in [low, high], a timbre, a loudness, an attack and a slight detune (±5 cents).

Legend: N clips, L samples, K harmonics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from latentforge.data.audio import PITCH_CLASSES, AudioDataConfig, AudioDataSet, normalise_peak, note_name, parse_note_name
from latentforge.data.video import row_rng
from latentforge.nn.spectral import midi_to_hz
from latentforge.registry import register

KINDS: tuple[str, ...] = ("note", "major", "minor", "arpeggio")
INTERVALS: dict[str, tuple[int, ...]] = {"note": (0,), "major": (0, 4, 7), "minor": (0, 3, 7), "arpeggio": (0, 4, 7)}
TIMBRES: tuple[str, ...] = ("sine", "triangle", "square", "saw", "organ", "pluck")
_ORGAN = {1: 1.0, 2: 0.6, 3: 0.45, 4: 0.3, 6: 0.2, 8: 0.15}   # harmonic -> drawbar level
_MAX_HARMONICS = 40


def harmonic_amplitudes(timbre: str, f0: float, sample_rate: int) -> np.ndarray:
    """Amplitude of harmonics 1..K of a tone at f0, zero at and above the Nyquist frequency: [K]."""
    k = np.arange(1, _MAX_HARMONICS + 1, dtype=np.float64)
    if timbre == "sine":
        amp = (k == 1).astype(np.float64)
    elif timbre == "triangle":
        amp = np.where(k % 2 == 1, 1.0 / k**2, 0.0)
    elif timbre == "square":
        amp = np.where(k % 2 == 1, 1.0 / k, 0.0)
    elif timbre in ("saw", "pluck"):
        amp = 1.0 / k
    elif timbre == "organ":
        amp = np.array([_ORGAN.get(int(i), 0.0) for i in k])
    else:
        raise ValueError(f"unknown timbre {timbre!r}; known: {', '.join(TIMBRES)}")
    return np.where(k * f0 < 0.45 * sample_rate, amp, 0.0)


def tone(f0: float, timbre: str, length: int, sample_rate: int, attack: float, rng: np.random.Generator) -> np.ndarray:
    """One note [length] of peak about 1: harmonics with random phases under an attack-sustain-release
    envelope (the pluck: an exponential decay, faster for higher harmonics)."""
    t = np.arange(length) / sample_rate
    amp = harmonic_amplitudes(timbre, f0, sample_rate)
    k = np.flatnonzero(amp) + 1
    phase = rng.uniform(0, 2 * np.pi, len(k))
    partials = np.sin(2 * np.pi * f0 * k[:, None] * t[None] + phase[:, None]) * amp[k - 1, None]  # [K', L]
    if timbre == "pluck":
        partials *= np.exp(-t[None] * (3.0 + 1.5 * k[:, None]))
    wave = partials.sum(0)
    release = min(0.03, 0.3 * length / sample_rate)
    env = np.minimum(1.0, np.minimum(t / attack, (length / sample_rate - t) / release))
    return wave * np.clip(env, 0.0, 1.0) / max(np.abs(wave).max(), 1e-9)


@dataclass
class NotesConfig(AudioDataConfig):
    name: str = "notes"
    kinds: tuple[str, ...] = KINDS
    timbres: tuple[str, ...] = TIMBRES
    low: int = 48                       # lowest root, MIDI (C3)
    high: int = 72                      # highest root, MIDI (C5)

    def __post_init__(self) -> None:
        self.check_audio()
        self.kinds, self.timbres = tuple(self.kinds), tuple(self.timbres)
        for key, known in (("kinds", KINDS), ("timbres", TIMBRES)):
            values = getattr(self, key)
            unknown = [v for v in values if v not in known]
            if not values or unknown:
                raise ValueError(f"NotesConfig.{key} must list some of {', '.join(known)}; got {list(values)}")
        if not 24 <= self.low <= self.high <= 96:
            raise ValueError(f"NotesConfig needs 24 <= low <= high <= 96 (MIDI roots), got {self.low}, {self.high}")

    @classmethod
    def tiny(cls) -> NotesConfig:
        return cls(seconds=0.25, train_size=6, val_size=4)


def notes_caption(kind: str, timbre: str, root: int) -> str:
    """The caption of a clip: "a square plays C4", "a saw plays a C4 major chord", "a sine plays a
    rising E3 major arpeggio"."""
    name = note_name(root)
    what = {"note": name, "major": f"a {name} major chord", "minor": f"a {name} minor chord",
            "arpeggio": f"a rising {name} major arpeggio"}[kind]
    return f"a {timbre} plays {what}"


_CAPTION = re.compile(r"^an? (\w+) plays (?:(?P<note>[A-G][#b]?-?\d)|a (?P<chord>[A-G][#b]?-?\d) (?P<quality>major|minor) chord"
                      r"|a rising (?P<arp>[A-G][#b]?-?\d) major arpeggio)$")


def parse_notes_caption(text: str, where: str) -> tuple[str, str, int]:
    """A caption as `notes_caption` writes it -> (kind, timbre, root MIDI)."""
    m = _CAPTION.match(text.strip())
    if m is None or m.group(1) not in TIMBRES:
        raise ValueError(f"{where}: can't read caption {text!r}; expected e.g. 'a saw plays C4', "
                         f"'a sine plays a D3 minor chord', 'a square plays a rising F4 major arpeggio' "
                         f"(timbres: {', '.join(TIMBRES)})")
    if m.group("note"):
        return "note", m.group(1), parse_note_name(m.group("note"))
    if m.group("chord"):
        return m.group("quality"), m.group(1), parse_note_name(m.group("chord"))
    return "arpeggio", m.group(1), parse_note_name(m.group("arp"))


def render_notes(kind: str, timbre: str, root: int, length: int, sample_rate: int,
                 rng: np.random.Generator) -> np.ndarray:
    """One clip [L] of `kind` on `root`: a chord's notes sound together, an arpeggio's one after
    another in equal thirds of the clip."""
    detune = rng.uniform(-5, 5) / 100.0                      # semitones
    attack = rng.uniform(0.005, 0.03)
    pitches = [root + i for i in INTERVALS[kind]]
    if kind == "arpeggio":
        bounds = np.linspace(0, length, len(pitches) + 1).astype(int)
        wave = np.concatenate([tone(float(midi_to_hz(p + detune)), timbre, b - a, sample_rate, attack, rng)
                               for p, a, b in zip(pitches, bounds[:-1], bounds[1:])])
    else:
        wave = sum(tone(float(midi_to_hz(p + detune)), timbre, length, sample_rate, attack, rng) for p in pitches)
    return normalise_peak(np.asarray(wave), rng.uniform(0.3, 0.9))


@register("dataset", "notes", NotesConfig)
class NotesData(AudioDataSet):
    judge = "notes"
    natural_conditioner = "caption"
    condition_keys = ("label",)
    class_names = PITCH_CLASSES            # label: the root's pitch class
    condition_text = "Each sample is drawn for the timbre, kind and pitch in its caption."

    def draw(self, split: str, i: int) -> tuple[str, str, int, np.random.Generator]:
        cfg = self.config
        rng = row_rng(cfg.seed, split, i)
        kind = cfg.kinds[rng.integers(len(cfg.kinds))]
        timbre = cfg.timbres[rng.integers(len(cfg.timbres))]
        return kind, timbre, int(rng.integers(cfg.low, cfg.high + 1)), rng

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        cfg = self.config
        audio = np.zeros((stop - start, cfg.length), np.float32)
        kinds, timbres, roots, captions = [], [], [], []
        for r, i in enumerate(range(start, stop)):
            kind, timbre, root, rng = self.draw(name, i)
            audio[r] = render_notes(kind, timbre, root, cfg.length, cfg.sample_rate, rng)
            kinds.append(KINDS.index(kind))
            timbres.append(TIMBRES.index(timbre))
            roots.append(root)
            captions.append(notes_caption(kind, timbre, root))
        roots_arr = np.array(roots, np.int64)
        return {"audio": audio, "label": roots_arr % 12, "root": roots_arr, "kind": np.array(kinds, np.int64),
                "timbre": np.array(timbres, np.int64), "captions": np.array(captions)}

    def training_captions(self) -> list[str]:
        return [notes_caption(*self.draw("train", i)[:3]) for i in range(self.config.train_size)]

    def parse_conditions(self, raw, where: str) -> dict[str, np.ndarray]:
        rows = super().parse_conditions(raw, where)
        if "captions" in rows:
            parsed = [parse_notes_caption(str(t), f"{where}: condition {i}") for i, t in enumerate(rows["captions"])]
            rows["root"] = np.array([p[2] for p in parsed], np.int64)
            rows["kind"] = np.array([KINDS.index(p[0]) for p in parsed], np.int64)
            rows["timbre"] = np.array([TIMBRES.index(p[1]) for p in parsed], np.int64)
            rows.setdefault("label", rows["root"] % 12)
        return rows

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        return {"pitch_class": (arrays["label"][:, None], 12), "kind": (arrays["kind"][:, None], len(KINDS)),
                "timbre": (arrays["timbre"][:, None], len(TIMBRES))}
