"""Real music (`data.name: music`): scores from the music21 corpus (Bach's chorales; Palestrina's
masses) rendered with the General MIDI soundfont shipped in pretty_midi's wheel (TimGM6mb.sf2,
through tinysoundfont), a random instrument per part, a random tempo, a random excerpt per clip.

Pieces, not clips, are split: every tenth piece (in sorted order) is a val piece, the next a test
piece, so held-out clips are music the models never heard. Labels come from the score: the
piece's key (`label`, 24 classes: 12 tonics x major/minor, music21's Krumhansl analysis), the
instrument of each part (`instruments`, top part first; `instrument` = the top part's), and per
50 Hz frame the pitch classes sounding (`chroma_roll`) and the top voice's MIDI pitch (`melody`,
-1 where it rests).

    pip install 'latentforge[audio]'                 # music21, pretty_midi
    pip install --no-deps tinysoundfont              # the renderer (its pyaudio is for playback)

Legend: N clips, L samples, F frames (50 a second), P parts (at most MAX_PARTS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from latentforge.data.audio import INSTALL_HINT, PITCH_CLASSES, AudioDataConfig, AudioDataSet, normalise_peak
from latentforge.data.video import SPLIT_CODES, row_rng
from latentforge.registry import register

INSTRUMENTS: dict[str, int] = {          # name -> General MIDI program
    "piano": 0, "organ": 19, "violin": 40, "viola": 41, "cello": 42, "flute": 73, "oboe": 68,
    "clarinet": 71, "bassoon": 70, "horn": 60,
}
KEYS: tuple[str, ...] = tuple(f"{pc} {mode}" for pc in PITCH_CLASSES for mode in ("major", "minor"))
COMPOSERS = ("bach", "palestrina")
MAX_PARTS = 6
FRAME_RATE = 50                          # label frames per second
PRE_ROLL = 0.5                           # seconds rendered before a clip, so notes already sounding are heard


@dataclass
class MusicConfig(AudioDataConfig):
    name: str = "music"
    seconds: float = 2.0
    composers: tuple[str, ...] = ("bach",)
    min_bpm: float = 70.0                # quarter notes per minute, drawn per clip
    max_bpm: float = 110.0
    instruments: tuple[str, ...] = tuple(INSTRUMENTS)
    velocity: int = 90

    def __post_init__(self) -> None:
        self.check_audio()
        self.composers, self.instruments = tuple(self.composers), tuple(self.instruments)
        bad = [c for c in self.composers if c not in COMPOSERS]
        if not self.composers or bad:
            raise ValueError(f"MusicConfig.composers must list some of {', '.join(COMPOSERS)}; got {list(self.composers)}")
        bad = [i for i in self.instruments if i not in INSTRUMENTS]
        if not self.instruments or bad:
            raise ValueError(f"MusicConfig.instruments must list some of {', '.join(INSTRUMENTS)}; got {list(self.instruments)}")
        if not 20 <= self.min_bpm <= self.max_bpm <= 300:
            raise ValueError(f"MusicConfig needs 20 <= min_bpm <= max_bpm <= 300, got {self.min_bpm}, {self.max_bpm}")
        if not 1 <= self.velocity <= 127:
            raise ValueError(f"MusicConfig.velocity must be in 1..127, got {self.velocity}")

    @classmethod
    def tiny(cls) -> MusicConfig:
        return cls(seconds=0.5, train_size=4, val_size=3)


# ------------------------------------------------------------------------------------- scores

def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = "pip install --no-deps tinysoundfont" if module == "tinysoundfont" else INSTALL_HINT
        raise ImportError(f"the music data set needs {module}: {hint}") from e


@lru_cache(maxsize=8)
def corpus_pieces(composers: tuple[str, ...]) -> tuple[str, ...]:
    """Score files of the composers in music21's corpus (roman-numeral analyses left out), sorted."""
    music21 = _require("music21")
    paths = [str(p) for c in composers for p in music21.corpus.getComposer(c)]
    return tuple(sorted(p for p in paths if not p.endswith(".rntxt")))


def split_pieces(composers: tuple[str, ...], split: str) -> tuple[str, ...]:
    """The pieces of a split: piece j of the sorted list is val when j % 10 == 0, test when 1, else train."""
    pieces = corpus_pieces(composers)
    return tuple(p for j, p in enumerate(pieces) if {0: "val", 1: "test"}.get(j % 10, "train") == split)


@dataclass(frozen=True)
class Score:
    notes: np.ndarray     # float64 [n, 4]: part, MIDI pitch, start, end (quarter notes)
    parts: int
    quarters: float       # length
    key: int              # index into KEYS


@lru_cache(maxsize=512)
def read_score(path: str) -> Score:
    """A score's notes by part (top part first, at most MAX_PARTS parts that hold notes) and key."""
    music21 = _require("music21")
    score = music21.corpus.parse(path)
    rows, part_index = [], 0
    for part in score.parts:
        notes = part.flatten().notes
        if not len(notes):
            continue
        for n in notes:
            start = float(n.offset)
            for p in n.pitches:
                rows.append((part_index, p.midi, start, start + float(n.quarterLength)))
        part_index += 1
        if part_index == MAX_PARTS:
            break
    if not rows:
        raise ValueError(f"{path}: a score without notes")
    arr = np.array(rows, np.float64)
    # order parts by mean pitch, highest first: the "top part" is the melody whatever the file's order
    order = np.argsort([-arr[arr[:, 0] == p, 1].mean() for p in range(part_index)])
    arr[:, 0] = np.argsort(order)[arr[:, 0].astype(int)]
    key = score.analyze("key")
    tonic = key.tonic.pitchClass
    return Score(arr, part_index, float(arr[:, 3].max()), 2 * tonic + (key.mode == "minor"))


# ------------------------------------------------------------------------------------- rendering

@lru_cache(maxsize=1)
def _soundfont() -> bytes:
    """The General MIDI soundfont in pretty_midi's wheel, read once per process."""
    pretty_midi = _require("pretty_midi")
    path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
    if not os.path.exists(path):
        raise FileNotFoundError(f"the General MIDI soundfont is not in pretty_midi's wheel at {path}: "
                                f"reinstall pretty_midi ({INSTALL_HINT})")
    with open(path, "rb") as f:
        return f.read()


def _synth(sample_rate: int):
    """A fresh synthesiser with General MIDI loaded (~10 ms): a clip never hears the voices,
    still decaying, of the clip rendered before it, so rows do not depend on their order."""
    tsf = _require("tinysoundfont")
    synth = tsf.Synth(samplerate=sample_rate)
    return synth, synth.sfload(_soundfont())


def render(notes: np.ndarray, programs: list[int], start: float, seconds: float, sample_rate: int,
           velocity: int) -> np.ndarray:
    """Notes [n, 4] (part, pitch, start s, end s) between `start` and start + seconds rendered to
    mono float32 [L]; notes sounding before `start` begin PRE_ROLL seconds early, unheard."""
    synth, sfid = _synth(sample_rate)
    for ch, program in enumerate(programs):
        synth.program_select(ch, sfid, 0, program)
    begin = max(0.0, start - PRE_ROLL)
    stop = start + seconds
    events = []
    for part, pitch, a, b in notes:
        if b <= begin or a >= stop:
            continue
        events.append((max(a, begin), 1, int(part), int(pitch)))
        if b < stop:
            events.append((b, 0, int(part), int(pitch)))
    events.sort(key=lambda e: (e[0], e[1]))   # note-offs before note-ons at the same time
    chunks = []
    total = int(round((stop - begin) * sample_rate))
    done = 0
    for t, on, part, pitch in events + [(stop, -1, 0, 0)]:
        n = min(total - done, int(round((t - begin) * sample_rate)) - done)
        if n > 0:
            chunks.append(np.frombuffer(synth.generate(n), np.float32).reshape(-1, 2).mean(1).copy())
            done += n
        if on == 1:
            synth.noteon(part, pitch, velocity)
        elif on == 0:
            synth.noteoff(part, pitch)
    audio = np.concatenate(chunks) if chunks else np.zeros(total, np.float32)
    audio = np.pad(audio, (0, max(0, total - len(audio))))[:total]
    return audio[total - int(round(seconds * sample_rate)):]


def frame_labels(notes: np.ndarray, start: float, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Per 50 Hz frame of [start, start + seconds): pitch classes sounding (uint8 [F, 12]) and the top
    part's pitch (int16 [F], -1 where it rests); notes in seconds."""
    frames = int(round(seconds * FRAME_RATE))
    t = start + (np.arange(frames) + 0.5) / FRAME_RATE
    on = (notes[:, 2][None] <= t[:, None]) & (t[:, None] < notes[:, 3][None])     # [F, n]
    roll = np.zeros((frames, 12), np.uint8)
    f_idx, n_idx = np.nonzero(on)
    roll[f_idx, notes[n_idx, 1].astype(int) % 12] = 1
    top = np.where(on & (notes[:, 0] == 0)[None], notes[:, 1][None], -1).max(axis=1).astype(np.int16)
    return roll, top


def music_caption(key: int, instruments: list[str]) -> str:
    names = instruments[0] if len(instruments) == 1 else ", ".join(instruments[:-1]) + " and " + instruments[-1]
    return f"a piece in {KEYS[key]} for {names}"


@register("dataset", "music", MusicConfig)
class MusicData(AudioDataSet):
    judge = "audio_class"
    natural_conditioner = "class"
    condition_keys = ("label",)
    class_names = KEYS                     # label: the piece's key
    condition_text = "Each sample is drawn for the key (and instruments) of a held-out excerpt."

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        cfg = self.config
        pieces = split_pieces(cfg.composers, name)
        if not pieces:
            raise ValueError(f"data 'music': no {name} pieces among composers {list(cfg.composers)}")
        order = np.random.default_rng([cfg.seed, SPLIT_CODES[name]]).permutation(len(pieces))
        frames = int(round(cfg.seconds * FRAME_RATE))
        n = stop - start
        out = {"audio": np.zeros((n, cfg.length), np.float32), "label": np.zeros(n, np.int64),
               "instrument": np.zeros(n, np.int64), "instruments": np.full((n, MAX_PARTS), -1, np.int64),
               "chroma_roll": np.zeros((n, frames, 12), np.uint8), "melody": np.full((n, frames), -1, np.int16)}
        captions = []
        for r, i in enumerate(range(start, stop)):
            rng = row_rng(cfg.seed, name, i)
            score = read_score(pieces[order[i % len(pieces)]])
            sec_per_quarter = 60.0 / rng.uniform(cfg.min_bpm, cfg.max_bpm)
            notes = score.notes.copy()
            notes[:, 2:] *= sec_per_quarter
            length = score.quarters * sec_per_quarter
            begin = rng.uniform(0.0, max(0.0, length - cfg.seconds))
            names = [cfg.instruments[k] for k in rng.integers(len(cfg.instruments), size=score.parts)]
            audio = render(notes, [INSTRUMENTS[x] for x in names], begin, cfg.seconds, cfg.sample_rate, cfg.velocity)
            out["audio"][r] = normalise_peak(audio, rng.uniform(0.3, 0.9))
            out["label"][r] = score.key
            ids = [list(INSTRUMENTS).index(x) for x in names]
            out["instrument"][r] = ids[0]
            out["instruments"][r, : len(ids)] = ids
            out["chroma_roll"][r], out["melody"][r] = frame_labels(notes, begin, cfg.seconds)
            captions.append(music_caption(score.key, names))
        return {**out, "captions": np.array(captions)}

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        return {"key": (arrays["label"][:, None], len(KEYS)),
                "instrument": (arrays["instrument"][:, None], len(INSTRUMENTS))}
