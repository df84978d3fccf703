"""Atari (`data.name: atari`): frames of the games bundled with ale-py under a random policy, the
ball's true position read from the console's RAM; condition: the game. Conventions: data/video.py."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from latentforge.data.base import DataConfig
from latentforge.data.video import (
    DIRECTIONS,
    INSTALL_HINT,
    SPLIT_CODES,
    VideoDataSet,
    check_common,
    check_int,
    direction_of,
    row_rng,
)
from latentforge.registry import register

# ------------------------------------------------------------------------------------- atari

@dataclass(frozen=True)
class AtariGame:
    """Where a game keeps its ball: RAM bytes of its x and y, the offsets from them to the ball's
    top-left pixel on the 210 x 160 screen, and its colour (measured: tests/test_video_data.py)."""

    ram_xy: tuple[int, int]
    offset: tuple[int, int]
    colour: tuple[int, int, int]


GAMES: dict[str, AtariGame] = {
    "pong": AtariGame((49, 54), (-49, -14), (236, 236, 236)),
    "breakout": AtariGame((99, 101), (-49, 9), (200, 72, 72)),
}
CROP_TOP, CROP_SIDE = 34, 160   # screen rows 34..193: the playfield between Pong's walls, below the scores
BALL_W, BALL_H = 2, 4           # the ball in screen pixels
ATARI_SIZES = (32, 64)
ATARI_FPS = 60.0                # frames per second of the console
WARMUP_STRIDE = 50              # steps between the checkpoints rows start from


def _ale():
    try:
        import ale_py
        import ale_py.roms
    except ImportError as err:
        raise ModuleNotFoundError(f"the atari data set runs the games bundled with ale-py: {INSTALL_HINT}") from err
    return ale_py


@functools.cache
def _emulator(game: str):
    """One emulator per game and process, and its state just after a reset."""
    ale_py = _ale()
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", 0)
    ale.setFloat("repeat_action_probability", 0.0)  # no sticky actions: the policy alone decides
    ale.loadROM(str(ale_py.roms.get_rom_path(game)))
    ale.reset_game()
    return ale, ale.cloneState(), list(ale.getMinimalActionSet())


def _step(ale, action, frame_skip: int) -> None:
    for _ in range(frame_skip):
        ale.act(action)
    if ale.game_over():
        ale.reset_game()


@functools.cache
def _checkpoints(game: str, seed: int, split: str, frame_skip: int, warmup: int) -> tuple:
    """The states a random game of this split passes through every WARMUP_STRIDE steps of its
    first `warmup`: where rows start (played once per process, ~0.1 s for 400 steps)."""
    ale, state, actions = _emulator(game)
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 1 << 20])
    ale.restoreState(state)
    out = [ale.cloneState()]
    for step in range(1, warmup // WARMUP_STRIDE * WARMUP_STRIDE + 1):
        _step(ale, actions[rng.integers(len(actions))], frame_skip)
        if step % WARMUP_STRIDE == 0:
            out.append(ale.cloneState())
    return tuple(out)


def area_matrix(src: int, dst: int) -> np.ndarray:
    """float32 [dst, src] area-averaging weights: output pixel j is the mean of the source over
    [j, j + 1) * src / dst, fractional source pixels weighted by their overlap. Rows sum to 1."""
    edges = np.arange(dst + 1) * (src / dst)
    left, right = edges[:-1, None], edges[1:, None]
    k = np.arange(src)[None]
    overlap = np.clip(np.minimum(right, k + 1) - np.maximum(left, k), 0, None)
    return (overlap * dst / src).astype(np.float32)


@dataclass
class AtariConfig(DataConfig):
    name: str = "atari"
    games: tuple[str, ...] = ("pong",)   # row i plays games[i % len(games)], its label
    size: int = 64                 # 64 or 32: the 160 x 160 playfield area-downsampled
    frames: int = 17               # T
    frame_skip: int = 4            # console frames per clip frame (the action is held for them)
    warmup: int = 400              # steps of play a row's start is drawn from (see `play`)
    train_size: int = 4096
    val_size: int = 256            # rows of val, and of test

    def __post_init__(self) -> None:
        check_common(self, ATARI_SIZES)
        check_int(self, "frame_skip", 1, 16)
        check_int(self, "warmup", 0)
        self.games = tuple(self.games)
        bad = [g for g in self.games if g not in GAMES]
        if not self.games or bad or len(set(self.games)) != len(self.games):
            raise ValueError(f"AtariConfig.games must name distinct games among {', '.join(GAMES)}, "
                             f"got {self.games!r}")

    @classmethod
    def tiny(cls) -> AtariConfig:
        return cls(size=32, frames=5, warmup=20, train_size=4, val_size=2)


def play(cfg: AtariConfig, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Row i's game: from a checkpoint of the split's warm-up game (`_checkpoints`, one drawn
    uniformly), 1 + U{0..WARMUP_STRIDE-1} random steps unrecorded (1 when warmup is 0), then T
    frames with a random action held for `frame_skip` console frames between them; a game that
    ends starts again. Starts so spread over the first `warmup` + WARMUP_STRIDE steps of play
    without replaying them for every row.

    Returns:
        screens: uint8 [T, 160, 160, 3], the playfield at full resolution.
        ram_xy: int64 [T, 2], the ball's RAM bytes after each frame.
    """
    name = cfg.games[i % len(cfg.games)]
    ale, _, actions = _emulator(name)
    starts = _checkpoints(name, cfg.seed, split, cfg.frame_skip, cfg.warmup)
    rng = row_rng(cfg.seed, split, i)
    start = starts[int(rng.integers(len(starts)))]
    # at least one step: a restored state brings back the RAM but not the last screen drawn
    warm = 1 + (int(rng.integers(WARMUP_STRIDE)) if cfg.warmup else 0)
    policy = rng.integers(len(actions), size=warm + cfg.frames - 1)
    ale.restoreState(start)
    screens = np.empty((cfg.frames, CROP_SIDE, CROP_SIDE, 3), np.uint8)
    ram_xy = np.empty((cfg.frames, 2), np.int64)
    for step in range(warm + cfg.frames):
        if step >= warm:
            screens[step - warm] = ale.getScreenRGB()[CROP_TOP:CROP_TOP + CROP_SIDE]
            ram_xy[step - warm] = ale.getRAM()[list(GAMES[name].ram_xy)]
        if step < len(policy):
            _step(ale, actions[policy[step]], cfg.frame_skip)
    return screens, ram_xy


def ball_truth(game: AtariGame, screens: np.ndarray, ram_xy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ball's centre in frame pixels [T, 2] (nan when hidden) and whether it shows [T]. RAM says
    where the ball is to within a scan line (Pong draws it one line higher in about 15 % of frames),
    so the truth is the centroid of its colour's pixels within a pixel or two of that place on the
    full screen; it shows when at least half of a ball's pixels do. Where more than a ball's worth
    have its colour (Breakout's ball by its red bricks), only the box RAM gives is read."""
    x = ram_xy[:, 0] + game.offset[0]                     # top-left, screen pixels
    y = ram_xy[:, 1] + game.offset[1] - CROP_TOP
    centre = np.full((len(x), 2), np.nan)
    visible = np.zeros(len(x), bool)
    for f, (x0, y0) in enumerate(zip(x, y)):
        for pad in ((1, 2), (0, 0)):  # around the RAM box, then the box alone
            top, left = max(y0 - pad[1], 0), max(x0 - pad[0], 0)
            window = screens[f, top:max(y0 + BALL_H + pad[1], 0), left:max(x0 + BALL_W + pad[0], 0)]
            ys, xs = np.nonzero((window == game.colour).all(axis=-1))
            if len(ys) <= BALL_W * BALL_H:
                break
        if len(ys) * 2 >= BALL_W * BALL_H:
            visible[f] = True
            centre[f] = left + xs.mean() + 0.5, top + ys.mean() + 0.5
    return (centre * (size / CROP_SIDE)).astype(np.float32), visible


def atari_rows(cfg: AtariConfig, split: str, index: range) -> dict[str, np.ndarray]:
    """Rows `index` of a split: the clips, area-downsampled, and the ball's true track."""
    n, T, S = len(index), cfg.frames, cfg.size
    area = area_matrix(CROP_SIDE, S)
    out = {"video": np.empty((n, T, S, S, 3), np.uint8), "ball_xy": np.empty((n, T, 2), np.float32),
           "ball_visible": np.empty((n, T), bool), "label": np.empty(n, np.int64)}
    for r, i in enumerate(index):
        screens, ram_xy = play(cfg, split, i)
        planes = screens.transpose(0, 3, 1, 2).astype(np.float32)  # [T, 3, 160, 160]
        small = (area @ planes @ area.T).transpose(0, 2, 3, 1)  # [T, S, S, 3]
        out["video"][r] = np.clip(np.rint(small), 0, 255).astype(np.uint8)
        label = i % len(cfg.games)
        out["ball_xy"][r], out["ball_visible"][r] = ball_truth(GAMES[cfg.games[label]], screens, ram_xy, S)
        out["label"][r] = label
    out["captions"] = np.array([cfg.games[k] for k in out["label"]])
    return out


def ball_direction(ball_xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The direction index of the ball's first step between two frames it shows in, per clip [N];
    len(DIRECTIONS) when it never shows in two frames in a row or stands still."""
    step = ball_xy[:, 1:] - ball_xy[:, :-1]  # [N, T-1, 2]
    seen = visible[:, 1:] & visible[:, :-1]
    out = np.full(len(ball_xy), len(DIRECTIONS), np.int64)
    for r in range(len(ball_xy)):
        moves = [s for s, ok in zip(step[r], seen[r]) if ok and np.abs(s).max() > 0]
        if moves:
            out[r] = direction_of(moves[0])
    return out



@register("dataset", "atari", AtariConfig)
class AtariData(VideoDataSet):
    natural_conditioner = "class"
    condition_keys = ("label",)
    condition_text = "Each sample is drawn for the game in its caption (a random player)."

    def __init__(self, config: AtariConfig) -> None:
        super().__init__(config)
        _ale()  # a missing ale-py stops here, before any stage runs

    @property
    def fps(self) -> float:
        return ATARI_FPS / self.config.frame_skip

    @property
    def judge(self) -> str | None:
        return "pong" if "pong" in self.config.games else None

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.games

    def rows(self, name: str, start: int, stop: int) -> dict[str, np.ndarray]:
        return atari_rows(self.config, name, range(start, stop))

    def training_captions(self) -> list[str]:
        return [self.config.games[i % len(self.config.games)] for i in range(self.config.train_size)]

    def link_conditioner(self, cfg):
        return dataclasses.replace(cfg, num_classes=len(self.config.games)) if hasattr(cfg, "num_classes") else cfg

    def probe_targets(self, arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int]]:
        """The ball's first direction (one class more: no moving ball), and the game when there are several."""
        out = {"ball_direction": (ball_direction(arrays["ball_xy"], arrays["ball_visible"])[:, None],
                                  len(DIRECTIONS) + 1)}
        if len(self.config.games) > 1:
            out["game"] = (arrays["label"].astype(np.int64)[:, None], len(self.config.games))
        return out
