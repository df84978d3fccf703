"""Motion data sets on one skeleton (`HUMANOID`): `data.name: deepmimic | stickfigure`.

    deepmimic    windows of DeepMimic's 15 motion-capture clips (shipped in pybullet), labelled by
                 clip, augmented by mirroring, speed and heading (real motion; few clips)
    stickfigure  the same body driven by sinusoidal joint angles: six actions whose gait
                 frequency, stride, speed and jump height are known (a procedural set with answers)

A split is {"motion": float32 [N, T, J, 3] joint positions (metres, y up, 30 fps), "label": int64
[N] action index, "captions": str [N], plus per-row known answers (float32 [N])}. Every window
starts with its root at the origin in x/z (its height kept) and, unless headings are jittered,
with the body facing +z; left is +x.

Row i of a split is a pure function of (config, split, i): a generator seeded with
(seed, split, i) draws it, and its label is i mod the number of actions (balanced, and
independent of the split's size). DeepMimic has too few clips to hold any out, so its splits
differ only in their draws: test windows are other crops (start times, speeds, mirrorings,
headings) of the same 15 performances, which measures generalisation over crops, not over
people or performances. `gait_frequency` reads a motion's dominant frequency back (the known
answer's judge), and works on any motion of the skeleton.

Shapes: N rows, T frames (`window`), J = 18 joints, R = 13 pose rotations (see humanoid.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from latentforge.data.base import DataConfig, RowwiseDataSet
from latentforge.data.humanoid import (
    ACTION_CLIPS,
    FPS,
    HUMANOID,
    MIRROR,
    POSE_JOINTS,
    clip_path,
    forward_kinematics,
    heading,
    humanoid_body,
    load_clip,
    quat_about,
    quat_mul,
    sample_clip,
)
from latentforge.modalities.motion import MotionModality
from latentforge.modalities.skeleton import Skeleton
from latentforge.registry import register

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_X, _Y, _Z = np.eye(3)
GRAVITY = 9.81


# ------------------------------------------------------------------------------------- positions

def mirror(motion: np.ndarray) -> np.ndarray:
    """Reflect motions [..., J, 3] of HUMANOID through the x = 0 plane: x negated, left and right
    joints swapped. A reflection through any vertical plane is this one up to a turn about y, so
    it mirrors a motion whatever its heading; applied twice it is the identity."""
    out = motion[..., MIRROR, :].copy()
    out[..., 0] *= -1
    return out


def rotate_heading(motion: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Turn motions [..., T, J, 3] by `angle` [...] radians about the y axis through the origin
    (a body of heading h ends with heading h + angle: facing (sin, 0, cos) of it)."""
    angle = np.asarray(angle, dtype=np.float64)[..., None, None]
    cos, sin = np.cos(angle), np.sin(angle)
    x, y, z = motion[..., 0], motion[..., 1], motion[..., 2]
    return np.stack([cos * x + sin * z, y, cos * z - sin * x], axis=-1)


def window_times(start: np.ndarray, speed: np.ndarray, frames: int, fps: float = FPS) -> np.ndarray:
    """Clip times [..., frames] (seconds) a window reads: `speed` x real time from `start`."""
    return np.asarray(start)[..., None] + np.asarray(speed)[..., None] * (np.arange(frames) / fps)


def gait_frequency(motion: np.ndarray, skeleton: Skeleton = HUMANOID,
                   band: tuple[float, float] = (0.3, 6.0)) -> np.ndarray:
    """The dominant frequency in Hz of each motion [..., T, J, 3] -> [...].

    The signal is every joint's position with the root's horizontal path taken away (so walking
    forward is no trend) and heights kept (so jumps count), each coordinate detrended (mean and
    slope). The frequency is the one whose sinusoid explains the most of its variance, summed over
    coordinates: a least-squares periodogram, i.e. the FFT evaluated at any frequency rather than
    only at the bins k / duration, which are 0.47 Hz apart in a 64-frame window. For a walk that is
    the stride frequency (a left and a right step), as each leg swings once per cycle. Searched in
    `band` from 0.9 cycles per window up: a 0.05 Hz grid, then 0.002 Hz around its peak.
    """
    pos = np.asarray(motion, dtype=np.float64)
    lead, frames = pos.shape[:-3], pos.shape[-3]
    lo = max(band[0], 0.9 * skeleton.fps / frames)
    if lo >= band[1]:
        raise ValueError(f"gait_frequency: {frames} frames are too few to see {band[1]} Hz")
    sig = pos - pos[..., :1, :] * np.array([1.0, 0.0, 1.0])  # [..., T, J, 3] root's horizontal path removed
    sig = sig.reshape((-1, frames, pos.shape[-2] * 3))  # [M, T, C]
    t = np.arange(frames) / skeleton.fps
    trend, _ = np.linalg.qr(np.stack([np.ones(frames), t - t.mean()], axis=1))  # [T, 2] orthonormal
    sig = sig - trend @ np.einsum("tk,mtc->mkc", trend, sig)
    freqs = np.arange(lo, band[1], 0.002)  # [F]
    angle = 2 * np.pi * freqs[:, None] * t  # [F, T]
    waves = np.stack([np.cos(angle), np.sin(angle)], axis=-1)  # [F, T, 2]
    waves = waves - trend @ np.einsum("tk,ftw->fkw", trend, waves)
    basis, _ = np.linalg.qr(waves)  # [F, T, 2]: orthonormal, and orthogonal to the trend
    coarse = np.arange(0, len(freqs), 25)  # every 0.05 Hz
    out = np.empty(len(sig))
    for start in range(0, len(sig), 256):  # rows in chunks: the projections are [M, F, 2, C]
        rows = sig[start:start + 256]
        power = np.square(np.einsum("ftw,mtc->mfwc", basis[coarse], rows)).sum(axis=(-2, -1))  # [m, F']
        near = np.clip(coarse[power.argmax(-1)][:, None] + np.arange(-25, 26), 0, len(freqs) - 1)  # [m, 51]
        power = np.square(np.einsum("mftw,mtc->mfwc", basis[near], rows)).sum(axis=(-2, -1))  # [m, 51]
        out[start:start + len(rows)] = freqs[near[np.arange(len(rows)), power.argmax(-1)]]
    return out.reshape(lead)


# ------------------------------------------------------------------------------------- shared

def _check_common(cfg: DataConfig, names_key: str, valid: tuple[str, ...] | None = None) -> None:
    kind = type(cfg).__name__
    if isinstance(cfg.window, bool) or not isinstance(cfg.window, int) or cfg.window < 2:
        raise ValueError(f"{kind}.window must be an integer >= 2 frames, got {cfg.window!r}")
    for key in ("train_size", "val_size"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{kind}.{key} must be an integer >= 1, got {value!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"{kind}.seed must be an integer >= 0, got {cfg.seed!r}")
    names = tuple(getattr(cfg, names_key))
    setattr(cfg, names_key, names)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{kind}.{names_key} must be distinct non-empty names, got {names!r}")
    bad = [n for n in names if (valid is not None and n not in valid) or os.sep in n]
    if bad:
        raise ValueError(f"{kind}.{names_key}: unknown {bad}" + (f"; choose from {', '.join(valid)}" if valid else ""))


class _MotionData(RowwiseDataSet):
    """What both motion sets share: a class per action, captions in the split, the skeleton."""

    judge = "motion"
    natural_conditioner = "class"
    condition_keys = ("label",)
    caption_key = "captions"
    skeleton: Skeleton = HUMANOID

    @property
    def class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def modality(self) -> MotionModality:
        return MotionModality(self.skeleton, self.config.window)

    def captions(self, arrays: dict[str, np.ndarray]) -> list[str]:
        if "captions" in arrays:
            return [str(c) for c in arrays["captions"]]
        return [self.class_names[int(label)] for label in arrays["label"]]

    def link_conditioner(self, cfg):  # any conditioner config: sets `num_classes` where it has one
        return dataclasses.replace(cfg, num_classes=len(self.class_names)) if hasattr(cfg, "num_classes") else cfg

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        return {"action": (arrays["label"].astype(np.int64)[:, None], len(self.class_names))}


def _row_rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], i])


# ------------------------------------------------------------------------------------- deepmimic

CLIP_CAPTIONS: dict[str, str] = {
    "walk": "a person walks", "run": "a person runs", "jump": "a person jumps forward", "kick": "a person kicks",
    "punch": "a person punches", "spin": "a person spins around", "spinkick": "a person does a spinning kick",
    "cartwheel": "a person does a cartwheel", "backflip": "a person does a backflip", "crawl": "a person crawls",
    "roll": "a person does a forward roll", "dance_a": "a person dances", "dance_b": "a person dances another dance",
    "getup_facedown": "a person gets up from lying face down",
    "getup_faceup": "a person gets up from lying on their back"}


def clip_caption(name: str) -> str:
    return CLIP_CAPTIONS.get(name, f"a person performs {name.replace('_', ' ')}")


@dataclass
class DeepMimicConfig(DataConfig):
    name: str = "deepmimic"
    window: int = 64                        # frames per row, at 30 fps
    clips: tuple[str, ...] = ACTION_CLIPS   # the actions; a row's label is its clip's index here
    clip_dir: str = ""                      # folder of humanoid3d_<clip>.txt files; empty: pybullet's
    train_size: int = 4096
    val_size: int = 256                     # rows of val, and of test
    mirror: bool = True                     # mirror half the rows (left <-> right)
    speed: float = 0.2                      # play at 1 + U(-speed, speed) times real time; 0: real time
    heading_jitter: float = 0.0             # degrees: turn rows by U(-j, j) from facing +z; 180: any heading
    max_hold: float = 1.0                   # seconds a non-looping clip may hold its first/last pose to fill a window

    def __post_init__(self) -> None:
        _check_common(self, "clips")
        if not 0.0 <= self.speed <= 0.5:
            raise ValueError(f"DeepMimicConfig.speed must be in [0, 0.5], got {self.speed!r}")
        if not 0.0 <= self.heading_jitter <= 180.0:
            raise ValueError(f"DeepMimicConfig.heading_jitter must be in [0, 180] degrees, got {self.heading_jitter!r}")
        if not self.max_hold >= 0.0:
            raise ValueError(f"DeepMimicConfig.max_hold must be >= 0 seconds, got {self.max_hold!r}")

    @classmethod
    def tiny(cls) -> DeepMimicConfig:
        return cls(window=16, clips=("walk", "run", "kick"), train_size=12, val_size=6)


def check_clips(cfg: DeepMimicConfig) -> None:
    """Load every clip of `cfg` (a missing or malformed file raises ValueError naming it) and check
    each non-looping one can fill a window at the fastest playback with at most `max_hold` held."""
    span = (1 + cfg.speed) * (cfg.window - 1) / FPS
    for name in cfg.clips:
        clip = load_clip(name, cfg.clip_dir)
        if not clip.loop and span > clip.duration + cfg.max_hold:
            raise ValueError(
                f"clip {name!r} ({clip.path}) does not loop and lasts {clip.duration:.2f} s "
                f"({round(clip.duration * FPS) + 1} frames at 30 fps), but a {cfg.window}-frame window at up to "
                f"{1 + cfg.speed:g}x speed reads {span:.2f} s: more than the clip plus max_hold = {cfg.max_hold:g} s "
                f"of held pose. Shorten data.window, raise data.max_hold or leave {name!r} out of data.clips")


def deepmimic_windows(cfg: DeepMimicConfig, split: str, index: range) -> dict[str, np.ndarray]:
    """Rows `index` of a split (see the module docstring); clips must pass `check_clips`."""
    index_of = np.arange(index.start, index.stop)
    n = len(index_of)
    labels = index_of % len(cfg.clips)
    out = {"motion": np.empty((n, cfg.window, HUMANOID.num_joints, 3), np.float32), "label": labels,
           "start": np.empty(n, np.float32), "playback_rate": np.empty(n, np.float32),
           "mirrored": np.empty(n, np.int64), "turn": np.empty(n, np.float32)}
    for c, name in enumerate(cfg.clips):
        rows = np.flatnonzero(labels == c)
        if not len(rows):
            continue
        clip = load_clip(name, cfg.clip_dir)
        # always four draws per row, so switching an augmentation off leaves the others as they were
        u = np.stack([_row_rng(cfg.seed, split, int(i)).random(4) for i in index_of[rows]])  # [n_c, 4]
        rate = 1 + cfg.speed * (2 * u[:, 0] - 1)
        span = rate * (cfg.window - 1) / FPS
        if clip.loop:
            start = u[:, 1] * clip.duration
        else:  # inside the clip; or, when longer, covering all of it with the held poses split at random
            lo, hi = np.minimum(0.0, clip.duration - span), np.maximum(0.0, clip.duration - span)
            start = lo + u[:, 1] * (hi - lo)
        mirrored = cfg.mirror & (u[:, 2] < 0.5)
        turn = np.radians(cfg.heading_jitter) * (2 * u[:, 3] - 1)
        root, rots = sample_clip(clip, window_times(start, rate, cfg.window))  # [n_c, T, 3], [n_c, T, R, 4]
        pos = forward_kinematics(root, rots)  # [n_c, T, J, 3]
        pos = pos - pos[:, :1, :1] * np.array([1.0, 0.0, 1.0])  # root starts at the origin, height kept
        pos = rotate_heading(pos, turn - heading(rots[:, 0, 0]))  # face +z, then the jitter
        pos[mirrored] = mirror(pos[mirrored])
        out["motion"][rows] = pos
        out["start"][rows], out["playback_rate"][rows] = start, rate
        out["mirrored"][rows], out["turn"][rows] = mirrored, turn
    out["captions"] = np.array([clip_caption(cfg.clips[c]) for c in labels])
    return out


@register("dataset", "deepmimic", DeepMimicConfig)
class DeepMimicData(_MotionData):
    condition_text = "Each sample is drawn for the action in its caption (one DeepMimic motion-capture clip each)."

    def __init__(self, config: DeepMimicConfig) -> None:
        super().__init__(config)
        check_clips(config)  # a bad clip stops here, before any stage runs

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.clips

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return deepmimic_windows(self.config, name, range(start, stop))

    def training_captions(self) -> list[str]:
        clips = self.config.clips
        return [clip_caption(clips[i % len(clips)]) for i in range(self.config.train_size)]

    def content_key(self) -> str:
        if not self.config.clip_dir:
            return ""  # the installed pybullet's clips: fixed by the environment
        stats = [(name, clip_path(name, self.config.clip_dir).stat()) for name in self.config.clips]
        return ";".join(f"{name}:{st.st_size}:{st.st_mtime_ns}" for name, st in stats)


# ------------------------------------------------------------------------------------- stick figure

@dataclass(frozen=True)
class StickAction:
    """One procedural action: ranges its known answers are drawn from, and captions for the low,
    middle and high third of the range of the quantity that names its manner."""

    hz: tuple[float, float] = (0.0, 0.0)       # cycles per second (a walk's stride = 2 steps)
    stride: tuple[float, float] = (0.0, 0.0)   # metres travelled per cycle
    height: tuple[float, float] = (0.0, 0.0)   # jump height: the soles' clearance at the apex, metres
    manner: str = "gait_hz"                    # "gait_hz", "speed" or "jump_height"
    captions: tuple[str, str, str] = ("", "", "")


STICK_ACTIONS: dict[str, StickAction] = {
    "stand": StickAction(captions=("a person stands still",) * 3),
    "walk": StickAction(hz=(0.8, 1.1), stride=(1.0, 1.6), manner="speed",
                        captions=("a person walks slowly", "a person walks", "a person walks quickly")),
    "run": StickAction(hz=(1.3, 1.6), stride=(2.0, 3.0), manner="speed",
                       captions=("a person jogs", "a person runs", "a person sprints")),
    "jump": StickAction(hz=(0.8, 1.2), height=(0.1, 0.3), manner="jump_height",
                        captions=("a person hops in place", "a person jumps in place", "a person jumps high in place")),
    "squat": StickAction(hz=(0.6, 1.0),
                         captions=("a person squats slowly", "a person squats", "a person squats quickly")),
    "wave": StickAction(hz=(1.0, 2.0), captions=("a person waves slowly", "a person waves", "a person waves quickly")),
}


def _swing(angle: np.ndarray) -> np.ndarray:
    """A hanging limb swings forward (towards +z) by `angle`; the trunk tips back by it."""
    return quat_about(-_X, angle)


def _spread(angle: np.ndarray) -> np.ndarray:
    """A hanging limb swings towards +x (the body's left) by `angle`."""
    return quat_about(_Z, angle)


def _stick_pose(action: str, hz: np.ndarray, stride: np.ndarray, height: np.ndarray, phase: np.ndarray,
                t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint rotations of rows [n] of one action over times t [T]: (rotations [n, T, R, 4],
    forward speed [n] m/s, flight height above the ground [n, T])."""
    n, shape = len(hz), (len(hz), len(t))
    zero = np.zeros(shape)
    cycle = 2 * np.pi * hz[:, None] * t + phase[:, None]  # [n, T] radians
    body = humanoid_body()
    leg = -body.offsets[5, 1] - body.offsets[6, 1] - body.offsets[7, 1]  # hip to sole, straight
    angle = {name: zero for name in ("hip", "knee", "shoulder", "elbow")}
    sides = {"left": dict(angle), "right": dict(angle)}
    lean, speed, flight = zero, np.zeros(n), zero
    spread = {"left": np.full(shape, 0.1), "right": np.full(shape, 0.1)}  # arms just off the hips
    if action == "stand":  # a slow sway, no cycle
        lean = 0.03 * np.sin(2 * np.pi * 0.25 * t + phase[:, None])
    elif action in ("walk", "run"):
        run = action == "run"
        # straight legs spread +-A reach stride / 4 per step; a run covers a third of it in flight
        amp = np.arcsin(np.minimum(0.9, stride / ((6 if run else 4) * leg)))[:, None]
        for side, offset in (("left", 0.0), ("right", np.pi)):
            phi = cycle + offset
            sides[side] = {"hip": amp * np.sin(phi),  # the knee bends while the leg swings forward
                           "knee": 0.05 + (1.6 if run else 1.0) * np.maximum(0.0, np.cos(phi)) ** 2,
                           "shoulder": -0.8 * amp * np.sin(phi), "elbow": np.full(shape, 1.5 if run else 0.3)}
        lean = np.full(shape, 0.2 if run else 0.05)
        speed = stride * hz
        if run:
            flight = 0.04 * (1 - np.cos(2 * cycle)) / 2  # a bounce per step
    elif action == "jump":
        airborne = 2 * np.sqrt(2 * height / GRAVITY)[:, None]  # flight time of a hop `height` high
        period = 1 / hz[:, None]
        tau = (cycle / (2 * np.pi) % 1.0) * period  # seconds into this hop's cycle
        ground = period - airborne
        crouch = np.where(tau < ground, np.sin(np.pi * np.minimum(tau / ground, 1.0)) ** 2, 0.0)
        s = np.maximum(tau - ground, 0.0)  # seconds into the flight
        flight = GRAVITY / 2 * s * (airborne - s)  # a parabola: apex = g T^2 / 8 = height
        arms = np.where(tau < ground, -0.6 * crouch, 1.2 * np.sin(np.pi * s / airborne))
        for side in sides:
            sides[side] = {"hip": 0.6 * crouch, "knee": 1.2 * crouch, "shoulder": arms, "elbow": np.full(shape, 0.3)}
        lean = 0.4 * crouch
    elif action == "squat":
        depth = (1 - np.cos(cycle)) / 2
        for side in sides:
            sides[side] = {"hip": 1.1 * depth, "knee": 1.9 * depth, "shoulder": 1.3 * depth, "elbow": 0.2 * depth}
        lean = 0.5 * depth
    elif action == "wave":  # the right arm raised sideways, swinging side to side
        sides["right"] = {"hip": zero, "knee": zero, "shoulder": zero, "elbow": np.full(shape, 0.5)}
        spread["right"] = 2.4 + 0.35 * np.sin(cycle)
    else:
        raise ValueError(f"unknown stick-figure action {action!r}; choose from {', '.join(STICK_ACTIONS)}")

    rots = np.zeros(shape + (len(POSE_JOINTS), 4))
    rots[..., 0] = 1.0  # identity: pelvis facing +z, limbs hanging
    rots[..., POSE_JOINTS.index("chest"), :] = _swing(-lean)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        a = sides[side]
        rots[..., POSE_JOINTS.index(f"{side}_hip"), :] = _swing(a["hip"])
        rots[..., POSE_JOINTS.index(f"{side}_knee"), :] = _swing(-a["knee"])
        rots[..., POSE_JOINTS.index(f"{side}_ankle"), :] = _swing(a["knee"] - a["hip"])  # sole stays level
        shoulder = quat_mul(_spread(sign * spread[side]), _swing(a["shoulder"]))  # raised sideways, then swung
        rots[..., POSE_JOINTS.index(f"{side}_shoulder"), :] = shoulder
        rots[..., POSE_JOINTS.index(f"{side}_elbow"), :] = _swing(a["elbow"])
    return rots, speed, flight


def _third(value: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0, 1 or 2: which third of [lo, hi] each value falls in."""
    return np.clip(np.floor(3 * (value - lo) / max(hi - lo, 1e-9)), 0, 2).astype(np.int64)


def stick_caption(action: str, gait_hz: float, speed: float, jump_height: float) -> str:
    spec = STICK_ACTIONS[action]
    value, (lo, hi) = {"gait_hz": (gait_hz, spec.hz), "jump_height": (jump_height, spec.height),
                       "speed": (speed, (spec.hz[0] * spec.stride[0], spec.hz[1] * spec.stride[1]))}[spec.manner]
    return spec.captions[int(_third(np.asarray(value), lo, hi))]


@dataclass
class StickFigureConfig(DataConfig):
    name: str = "stickfigure"
    window: int = 64                                         # frames per row, at 30 fps
    actions: tuple[str, ...] = tuple(STICK_ACTIONS)          # a row's label is its action's index here
    train_size: int = 4096
    val_size: int = 256                                      # rows of val, and of test

    def __post_init__(self) -> None:
        _check_common(self, "actions", tuple(STICK_ACTIONS))

    @classmethod
    def tiny(cls) -> StickFigureConfig:
        return cls(window=32, train_size=12, val_size=6)


def _stick_draws(cfg: StickFigureConfig, split: str, i: int) -> tuple[str, float, float, float, float]:
    """Row i's (action, gait_hz, stride, jump_height, phase): cheap, without any kinematics."""
    action = cfg.actions[i % len(cfg.actions)]
    spec = STICK_ACTIONS[action]
    u = _row_rng(cfg.seed, split, i).random(3)
    def lerp(bounds: tuple[float, float], v: float) -> float:
        return bounds[0] + v * (bounds[1] - bounds[0])

    return action, lerp(spec.hz, u[0]), lerp(spec.stride, u[1]), lerp(spec.height, u[1]), 2 * np.pi * u[2]


def stick_windows(cfg: StickFigureConfig, split: str, index: range) -> dict[str, np.ndarray]:
    """Rows `index` of a split: motions and their known answers (see the module docstring)."""
    draws = [_stick_draws(cfg, split, i) for i in index]
    hz, stride, height, phase = (np.array([d[k] for d in draws], dtype=np.float64) for k in range(1, 5))
    n = len(draws)
    labels = np.arange(index.start, index.stop) % len(cfg.actions)
    motion = np.empty((n, cfg.window, HUMANOID.num_joints, 3), np.float32)
    speed = np.zeros(n)
    t = np.arange(cfg.window) / FPS
    sole = -humanoid_body().offsets[HUMANOID.names.index("right_toe"), 1]  # ankle height over a level sole
    ankles = [HUMANOID.names.index(f"{side}_ankle") for side in ("left", "right")]
    toes = [HUMANOID.names.index(f"{side}_toe") for side in ("left", "right")]
    for c, action in enumerate(cfg.actions):
        rows = np.flatnonzero(labels == c)
        if not len(rows):
            continue
        rots, speed[rows], flight = _stick_pose(action, hz[rows], stride[rows], height[rows], phase[rows], t)
        root = np.zeros(rots.shape[:2] + (3,))
        root[..., 2] = speed[rows, None] * t  # straight ahead along +z
        pos = forward_kinematics(root, rots)  # [n_c, T, J, 3]
        # the lowest sole point rests on the ground (y = 0), lifted by any flight
        ground = np.minimum(pos[..., toes, 1].min(-1), pos[..., ankles, 1].min(-1) - sole)  # [n_c, T]
        pos[..., 1] += (flight - ground)[..., None]
        motion[rows] = pos
    known = {"gait_hz": np.where(labels == cfg.actions.index("stand"), 0.0, hz) if "stand" in cfg.actions else hz,
             "stride": stride, "speed": speed, "jump_height": height}
    captions = [stick_caption(d[0], known["gait_hz"][i], speed[i], height[i]) for i, d in enumerate(draws)]
    return {"motion": motion, "label": labels, "captions": np.array(captions),
            **{k: v.astype(np.float32) for k, v in known.items()}}


@register("dataset", "stickfigure", StickFigureConfig)
class StickFigureData(_MotionData):
    judge = "stickfigure"
    condition_text = "Each sample is drawn for the action and manner in its caption (a procedural figure)."

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.actions

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return stick_windows(self.config, name, range(start, stop))

    def training_captions(self) -> list[str]:
        out = []
        for i in range(self.config.train_size):
            action, hz, stride, height, _ = _stick_draws(self.config, "train", i)
            out.append(stick_caption(action, hz, hz * stride, height))
        return out
