"""Judges of the video data sets, without any learned network: a colour tracker for Moving Shapes and
a ball detector for Pong.

Moving Shapes (`motion_adherence`): the objects of a clip have distinct palette colours, so each
pixel is explained as the background blended with one colour (`eval.shapes.palette_alpha`, the
renderer's anti-aliasing model) and each colour's largest blob per frame is its object. A frame is
*clean* for an object when its blob touches no other colour's (nothing passes over it); only clean
frames are read. From them:
  * direction: the displacement over the first two steps (one, if it reverses on the second),
    binned to the nearest of the 8 compass directions;
  * bounces: a velocity component that changes sign (components under `_MOVING` pixels a frame,
    or `_SHARE` of the object's median speed, carry no sign); a reversal counts as a bounce when
    the blob is within `_WALL` pixels of the frame edge it was moving towards, and as an error
    anywhere else;
  * shape and size: the Shapes parser (`eval.shapes.parse_scene`) on the clean frame where the
    blob is largest.
An object follows its caption when its colour shows in at least half the frames and its shape,
size (when the caption gives one), direction and bounce (a bounce iff the caption says so, every
reversal at a wall) all match; a clip when every object does and no other colour shows.

Pong (`ball_agreement`, `track_plausible`): Pong's playfield has four colours (background, ball,
two paddles) and area-downsampling mixes them linearly, so each pixel's ball coverage is read off
its colour (`ball_coverage`); the ball's coverage summed over a 3 x 3 window around its peak is the
ball's area. A
frame shows the ball when that area is at least 3/8 of a whole ball's (the data's `ball_visible`
asks for half its pixels) and stands well above the frame's noise, at the coverage-weighted centre
of the window. `track_plausible` asks
the found track to keep a constant velocity except at a paddle or a wall.

Coordinates are frame pixels, x right, y down, pixel j spanning [j, j + 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from latentforge.data.atari import BALL_H, BALL_W, CROP_SIDE
from latentforge.data.shapes import COLORS, SHAPES, SIZE_SIDE, SIZES
from latentforge.data.video import direction_of
from latentforge.eval.shapes import palette_alpha, parse_scene

_MIN_AREA = 0.3 * 0.5 * SIZE_SIDE["small"] ** 2  # a third of the smallest object (a small triangle), frame areas
_MOVING = 0.1    # pixels per frame: a slower component of a step carries no direction ...
_SHARE = 0.3     # ... nor does one under this share of the object's typical speed
_WALL = 2.5      # pixels: a reversal this close to the edge it moved towards is a bounce
_IN_FRAME = np.zeros((3, 3, 3), bool)  # 8-connected within a frame, never across frames
_IN_FRAME[1] = True


# ------------------------------------------------------------------------------------- moving shapes

def colour_blobs(clip: np.ndarray) -> dict[str, np.ndarray]:
    """Each palette colour's largest blob in every frame of a clip uint8 [T, S, S, 3].

    Returns (K = len(COLORS)):
        centre: float64 [T, K, 2] coverage-weighted centroid in pixels (nan where absent).
        area: float64 [T, K] covered pixels (0 where absent).
        box: float64 [T, K, 4] extent of the blob's pixels (left, top, right, bottom edges).
        clean: bool [T, K] present, and touching no other colour's pixels.
    """
    T, S = clip.shape[:2]
    alpha, colour = palette_alpha(clip)  # [T, S, S, K], [T, S, S]
    own = np.take_along_axis(alpha, colour[..., None], axis=-1)[..., 0]
    foreground = own >= 0.5
    K = len(COLORS)
    out = {"centre": np.full((T, K, 2), np.nan), "area": np.zeros((T, K)), "box": np.full((T, K, 4), np.nan),
           "clean": np.zeros((T, K), bool)}
    centres = np.arange(S) + 0.5
    for k in np.flatnonzero(np.bincount(colour[foreground], minlength=K)):
        mine = foreground & (colour == k)  # [T, S, S]
        labels, count = ndimage.label(mine, structure=_IN_FRAME)  # blobs never join across frames
        sizes = ndimage.sum_labels(mine, labels, np.arange(1, count + 1))
        frame = np.array([piece[0].start for piece in ndimage.find_objects(labels)])
        biggest = np.zeros(T, np.int64)  # per frame its largest blob's label (the first of equals), 0: none
        for label in np.lexsort((-np.arange(count), sizes))[::-1] + 1:  # largest first, then lowest label
            if not biggest[frame[label - 1]]:
                biggest[frame[label - 1]] = label
        body = (labels == biggest[:, None, None]) & (labels > 0)
        grown = ndimage.binary_dilation(body, structure=_IN_FRAME)
        weights = alpha[..., k] * (body | (grown & ~foreground))  # the rim too, as the renderer blends it
        area = weights.sum(axis=(1, 2))  # [T]
        present = area >= _MIN_AREA * S * S
        with np.errstate(invalid="ignore", divide="ignore"):
            cx, cy = weights.sum(axis=1) @ centres / area, weights.sum(axis=2) @ centres / area
        cols, rows = body.any(axis=1), body.any(axis=2)  # [T, S]
        box = np.stack([cols.argmax(1), rows.argmax(1), S - cols[:, ::-1].argmax(1), S - rows[:, ::-1].argmax(1)], 1)
        out["centre"][present, k] = np.stack([cx, cy], axis=1)[present]
        out["area"][present, k] = area[present]
        out["box"][present, k] = box[present]
        out["clean"][present, k] = ~(grown & foreground & (colour != k)).any(axis=(1, 2))[present]
    return out


def read_motion(centre: np.ndarray, clean: np.ndarray, box: np.ndarray, side: int) -> dict:
    """One object's direction and reversals from its blob in each frame (centre [T, 2], clean [T],
    box [T, 4]). Returns direction (an index of DIRECTIONS, or -1 when it cannot be read) and
    reversals: (frame, axis, at_wall) for every sign change of a velocity component, at the frame
    between the last step one way and the first the other."""
    frames = np.flatnonzero(clean)
    if len(frames) < 2:
        return {"direction": -1, "reversals": []}
    p = centre[frames]
    v = np.diff(p, axis=0) / np.diff(frames)[:, None]  # [F-1, 2] pixels per frame between clean frames
    # a component carries a sign when it is a real part of the motion, not a tracker's wobble
    moving = max(_MOVING, _SHARE * float(np.median(np.linalg.norm(v, axis=1))))
    sign = np.where(np.abs(v) >= moving, np.sign(v), 0.0)
    reversals = []
    for axis in range(2):
        last = 0.0
        for j, s in enumerate(sign[:, axis]):
            if s and last and s != last:
                f = frames[j]  # the step j starts here; the reversal is at this frame or between it and the last
                near = [g for g in (f - 1, f, f + 1) if 0 <= g < len(clean) and clean[g]]
                gap = [box[g, axis] if last < 0 else side - box[g, axis + 2] for g in near]
                reversals.append((int(f), axis, bool(gap) and min(gap) <= _WALL))
            last = s or last
    # the first steps, unless the second already turns back (it then only reaches the wall)
    turned = len(v) > 1 and bool((sign[0] * sign[1] < 0).any())
    span = 1 if len(v) == 1 or turned else 2
    step = p[span] - p[0]
    direction = int(direction_of(step)) if np.abs(step).max() >= moving else -1
    return {"direction": direction, "reversals": reversals}


def read_clip(clip: np.ndarray) -> dict[int, dict]:
    """Every colour that shows in at least half the frames of a clip -> its object: direction,
    reversals (`read_motion`), shape and size (indices into SHAPES and SIZES; -1 when unread)."""
    blobs = colour_blobs(clip)
    T, S = clip.shape[:2]
    names = tuple(COLORS)
    found = {}
    for k in np.flatnonzero((blobs["area"] > 0).sum(axis=0) * 2 >= T):
        reading = read_motion(blobs["centre"][:, k], blobs["clean"][:, k], blobs["box"][:, k], S)
        reading["shape"] = reading["size"] = -1
        clean = np.flatnonzero(blobs["clean"][:, k])
        if len(clean):
            f = clean[np.argmax(blobs["area"][clean, k])]
            x, y = blobs["centre"][f, k] / S
            parsed = [o for o in parse_scene(clip[f]).objects if o.color == names[k]]
            if parsed:
                best = min(parsed, key=lambda o: (o.x - x) ** 2 + (o.y - y) ** 2)
                reading["shape"], reading["size"] = SHAPES.index(best.shape), SIZES.index(best.size)
        found[int(k)] = reading
    return found


def motion_adherence(clips: np.ndarray, rows: dict[str, np.ndarray]) -> dict[str, float]:
    """How well clips uint8 [N, T, S, S, 3] follow the objects and motions of their rows (obj_shape,
    obj_color, obj_size, directions int64 [N, M], -1 padded, a size -1 not checked; bounced bool
    [N, M]): motion_exact and count_acc over clips; colour_acc, shape_acc, size_acc, direction_acc,
    bounce_acc over the objects the rows name."""
    if len(clips) != len(rows["obj_color"]):
        raise ValueError(f"got {len(clips)} clips but {len(rows['obj_color'])} condition rows")
    if not len(clips):
        raise ValueError("motion_adherence needs at least one clip")
    tally = {key: [] for key in ("colour", "shape", "size", "direction", "bounce")}
    exact, counts = [], []
    for r, clip in enumerate(clips):
        seen = read_clip(np.asarray(clip))
        wanted = np.flatnonzero(rows["obj_color"][r] >= 0)
        colours = {int(rows["obj_color"][r, j]) for j in wanted}
        counts.append(set(seen) == colours)
        clip_ok = counts[-1]
        for j in wanted:
            got = seen.get(int(rows["obj_color"][r, j]))
            bounced = bool(rows["bounced"][r, j])
            checks = {"colour": got is not None}
            if got is None:
                checks.update(shape=False, direction=False, bounce=False)
            else:
                reversals = got["reversals"]
                checks["shape"] = got["shape"] == rows["obj_shape"][r, j]
                checks["direction"] = got["direction"] == rows["directions"][r, j]
                checks["bounce"] = bool(reversals) == bounced and all(at_wall for _, _, at_wall in reversals)
            if rows["obj_size"][r, j] >= 0:
                checks["size"] = got is not None and got["size"] == rows["obj_size"][r, j]
            for key, ok in checks.items():
                tally[key].append(bool(ok))
            clip_ok = clip_ok and all(checks.values())
        exact.append(clip_ok)
    out = {"motion_exact": float(np.mean(exact)), "count_acc": float(np.mean(counts))}
    for key, values in tally.items():
        out[f"{key}_acc"] = float(np.mean(values)) if values else 1.0
    return out


# ------------------------------------------------------------------------------------- pong

PONG_BACKGROUND = np.array([144, 72, 17], np.float64)
# ball, left paddle, right paddle: what each adds to the background where it covers a pixel
_PONG_COLOURS = np.array([[236, 236, 236], [213, 130, 74], [92, 186, 92]], np.float64) - PONG_BACKGROUND
_UNMIX = np.linalg.inv(_PONG_COLOURS.T)  # pixel - background -> the three coverages
_FOUND = 3 / 8   # of a whole ball's area: the least a frame must show to hold a ball
_PADDLE_COLUMNS = ((16, 20), (140, 144))  # screen columns the paddles move in
_PROJECT = _PONG_COLOURS[0] / (_PONG_COLOURS[0] @ _PONG_COLOURS[0])  # pixel - background -> ball coverage
_GAIN = float(np.linalg.norm(_UNMIX[0]) / np.linalg.norm(_PROJECT))  # about 4.6
_SIGMAS = 5.0    # how far above the noise a window must stand to hold a ball
_BURST = 4       # the most steps in a row whose velocity changes (at a turn: 2, rarely 3 or 4)


def ball_coverage(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much of each pixel the ball covers, frames uint8 [..., S, S, 3] -> float64 [..., S, S],
    measured from the frame's typical (median) pixel, and the noise gain of each column [S]. In the
    paddles' columns the three coverages are unmixed exactly; elsewhere only ball and background
    meet, and the projection onto the ball's colour is `_GAIN` times less sensitive to noise than
    the unmixing (signed: noise can push it below 0)."""
    frames = np.asarray(frames, np.float64) - PONG_BACKGROUND
    S = frames.shape[-2]
    cover = frames @ _PROJECT
    edges = np.arange(S + 1) * CROP_SIDE / S  # each frame column's span on the screen
    paddles = np.zeros(S, bool)
    for lo, hi in _PADDLE_COLUMNS:
        paddles |= (edges[:-1] < hi) & (edges[1:] > lo)
    cover[..., paddles] = frames[..., paddles, :] @ _UNMIX[0]
    return cover - np.median(cover, axis=(-2, -1), keepdims=True), np.where(paddles, _GAIN, 1.0)


def detect_ball(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ball in every frame of clips uint8 [N, T, S, S, 3]: centre float64 [N, T, 2] (nan where
    none) and found bool [N, T]. Windows count only where they stand `_SIGMAS` noise levels above
    the frame's background (the spread of its window sums, most of which hold no ball), so a noisy
    frame without a ball shows none."""
    clips = np.asarray(clips)
    S = clips.shape[-2]
    cover, gain = ball_coverage(clips)  # [N, T, S, S], [S]
    mass = ndimage.uniform_filter(cover, size=(1, 1, 3, 3), mode="constant") * 9  # window sums
    z = mass / np.sqrt(ndimage.uniform_filter1d(gain ** 2, 3, mode="nearest"))  # each window's noise gain
    spread = 1.4826 * np.median(np.abs(z - np.median(z, axis=(-2, -1), keepdims=True)), axis=(-2, -1), keepdims=True)
    score = np.where(z >= _SIGMAS * (spread + 1e-3), mass, -np.inf)
    flat = score.reshape(*mass.shape[:2], -1)
    peak = flat.argmax(axis=-1)  # [N, T]
    whole = BALL_W * BALL_H * (S / CROP_SIDE) ** 2
    found = np.take_along_axis(flat, peak[..., None], -1)[..., 0] >= _FOUND * whole
    centre = np.full((*peak.shape, 2), np.nan)
    padded = np.pad(np.clip(cover, 0, None), ((0, 0), (0, 0), (1, 1), (1, 1)))
    offsets = np.arange(-1, 2) + 0.5
    for n, t in zip(*np.nonzero(found)):
        y, x = divmod(int(peak[n, t]), S)
        w = padded[n, t, y:y + 3, x:x + 3]  # the window around (y, x)
        centre[n, t] = x + w.sum(axis=0) @ offsets / w.sum(), y + w.sum(axis=1) @ offsets / w.sum()
    return centre, found


def ball_agreement(clips: np.ndarray, ball_xy: np.ndarray, visible: np.ndarray, tol: float = 1.0) -> dict[str, float]:
    """The detector against the truth (RAM): the share of frames showing the ball where it is found
    within `tol` pixels, and of frames without it where a ball is found anyway."""
    centre, found = detect_ball(clips)
    close = found & visible & (np.abs(centre - ball_xy).max(axis=-1) <= tol)
    return {"ball_found": float(close.sum() / max(visible.sum(), 1)),
            "ball_false_alarm": float((found & ~visible).sum() / max((~visible).sum(), 1))}


def track_plausible(centre: np.ndarray, found: np.ndarray, size: int, tol: float | None = None) -> np.ndarray:
    """Whether each clip's detected ball moves as Pong's does: at constant velocity (second
    differences within `tol` pixels: 1 at 64 px, 1.5 at 32) but where it turns back, near a
    paddle's face (its horizontal motion reverses, and a hit may change the rest) or near the top or
    bottom edge (its vertical motion reverses, the horizontal stays). The step a turn falls in is
    partial, so the velocity changes on the steps around it (at most `_BURST` in a row); the turn
    is read from the two steps before and after (at either end of a run, where they are not all
    seen, a change near a paddle or an edge passes). A ball past a paddle is on its way out and may
    do anything; a ball that stands still (median step under a screen pixel) is not Pong's. Read
    over runs of three or more frames the ball is found in; a clip without one is not plausible.
    centre [N, T, 2], found [N, T] -> bool [N]."""
    # at 32 px the ball is a third of a pixel and its centre is read to about 0.3 px: a looser tolerance
    tol = max(1.0, 48 / size) if tol is None else tol
    out = np.zeros(len(centre), bool)
    for n in range(len(centre)):
        runs = [run for run in _runs(found[n]) if len(run) >= 3]
        out[n] = bool(runs) and all(_plausible_run(centre[n, run], size, tol) for run in runs)
    return out


def _plausible_run(p: np.ndarray, size: int, tol: float) -> bool:
    """`track_plausible` for one run of found positions p [R, 2]."""
    near = 12 * size / CROP_SIDE  # a step and a half of the fastest ball, in pixels
    left, right = np.array([20.0, 140.0]) * size / CROP_SIDE  # the paddles' inner faces

    def back(before: np.ndarray, after: np.ndarray) -> bool:  # went the negative way, comes back
        return before.min() < 0 < after.max()

    v = np.diff(p, axis=0)  # [R-1, 2]
    change = np.abs(np.diff(v, axis=0)) > tol  # [R-2, 2]: between v[j] and v[j + 1], at frame j + 1
    turn = np.zeros(len(change), bool)
    for j in np.flatnonzero(change.any(axis=1)):
        before, after = v[max(j - 1, 0):j + 1], v[j + 1:j + 3]  # [<=2, 2] each
        x, y = p[j:j + 3, 0], p[j:j + 3, 1]
        at_left, at_right = np.abs(x - left).min() <= near, np.abs(x - right).min() <= near
        at_top, at_bottom = y.min() <= near, y.max() >= size - near
        back_x = (at_left and back(before[:, 0], after[:, 0])) or (at_right and back(-before[:, 0], -after[:, 0]))
        back_y = (at_top and back(before[:, 1], after[:, 1])) or (at_bottom and back(-before[:, 1], -after[:, 1]))
        at_end = j in (0, len(change) - 1) and (at_left or at_right or at_top or at_bottom)
        out_of_play = x.max() < left or x.min() > right  # past a paddle, on its way out
        turn[j] = back_x or (back_y and not change[j, 0]) or at_end or out_of_play
    beside = turn.copy()
    beside[1:] |= turn[:-1]
    beside[:-1] |= turn[1:]
    # a turn changes the velocity for a step or two around it, then the ball flies straight again;
    # and it flies: Pong's ball stands still for a frame at a paddle at most
    bursts = _runs(change.any(axis=1))
    moving = np.median(np.abs(v).max(axis=1)) >= size / CROP_SIDE
    return bool(moving) and not (change.any(axis=1) & ~beside).any() and all(len(b) <= _BURST for b in bursts)


def _runs(mask: np.ndarray) -> Sequence[np.ndarray]:
    """Indices of each maximal run of True in a bool [T]."""
    idx = np.flatnonzero(mask)
    return np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []


def ball_tracks(clips: np.ndarray) -> dict[str, float]:
    """Pong clips uint8 [N, T, S, S, 3] -> ball_seen (the share of clips with the ball found in three
    frames in a row) and ball_track_plausible (the share of those whose track is `track_plausible`)."""
    centre, found = detect_ball(clips)
    seen = np.array([any(len(r) >= 3 for r in _runs(f)) for f in found])
    plausible = track_plausible(centre, found, np.asarray(clips).shape[-2])
    return {"ball_seen": float(seen.mean()),
            "ball_track_plausible": float(plausible[seen].mean()) if seen.any() else 0.0}

