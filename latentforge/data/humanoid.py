"""The DeepMimic humanoid: its body, its motion-capture clips, and forward kinematics to joint positions.

pybullet's wheel ships DeepMimic's humanoid (`pybullet_data/humanoid/humanoid.urdf`) and 15 of
its motion-capture clips (`pybullet_data/data/motions/humanoid3d_<clip>.txt`). A clip is JSON
{"Loop": "wrap" | "none", "Frames": [[...44 numbers...], ...]}; a frame holds its duration in
seconds, the root position (metres, y up), the root quaternion (w first), then one rotation per
joint in DeepMimic's order (`CLIP_JOINTS`): a quaternion (w first) for ball joints, one angle in
radians for the knees and elbows (hinges about the URDF's joint axis).

Conventions (everything this module returns):
    * metres, y up; the body's rest pose faces +z with its left side towards +x. DeepMimic's own
      world faces +x with the right side at +z, so the body, the clips and the hinge axes are
      re-expressed once, at load, by the rotation W = R_y(-90 deg): positions p -> W p,
      rotations q -> W q W^-1. FK commutes with that change of axes, so nothing else moves.
    * quaternions are (w, x, y, z), as in the clip files (pybullet's own order is x, y, z, w).
    * the URDF is drawn 4x too large: DeepMimic loads it with a global scaling of 0.25 (as
      pybullet's DeepMimic example does), which makes it a 1.6 m person standing on y = 0.

The forward kinematics are our own, from the URDF's joint origins (parsed from the XML), and are
checked against pybullet's (DIRECT mode, `getLinkState`) in tests/test_motion_data.py. Three
points that are not URDF joints are added so that every rotation of the file moves some joint:
the head (centre of the neck link's sphere) and the toes (front of the sole of the foot boxes).

Shapes: F frames of a clip, R = 13 rotations of a pose (root + 12 joints), J = 18 joints.
"""

from __future__ import annotations

import functools
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentforge.modalities.skeleton import Skeleton

FPS = 30.0
URDF_SCALE = 0.25
INSTALL_HINT = "pip install 'latentforge[motion]'"

# The clips of the humanoid, in the order data sets label them by default.
ACTION_CLIPS: tuple[str, ...] = (
    "walk", "run", "jump", "kick", "punch", "spin", "spinkick", "cartwheel", "backflip", "crawl", "roll",
    "dance_a", "dance_b", "getup_facedown", "getup_faceup")

# A frame after its duration, root position and root quaternion: (joint, numbers) in file order.
CLIP_JOINTS: tuple[tuple[str, int], ...] = (
    ("chest", 4), ("neck", 4), ("right_hip", 4), ("right_knee", 1), ("right_ankle", 4), ("right_shoulder", 4),
    ("right_elbow", 1), ("left_hip", 4), ("left_knee", 1), ("left_ankle", 4), ("left_shoulder", 4), ("left_elbow", 1))
FRAME_SIZE = 1 + 3 + 4 + sum(n for _, n in CLIP_JOINTS)  # 44
POSE_JOINTS: tuple[str, ...] = ("pelvis",) + tuple(name for name, _ in CLIP_JOINTS)  # the R rotations of a pose

# ------------------------------------------------------------------------------------- skeleton

_JOINTS: tuple[tuple[str, str | None], ...] = (  # (joint, parent) in storage order
    ("pelvis", None), ("chest", "pelvis"), ("neck", "chest"), ("head", "neck"),
    ("right_hip", "pelvis"), ("right_knee", "right_hip"), ("right_ankle", "right_knee"), ("right_toe", "right_ankle"),
    ("right_shoulder", "chest"), ("right_elbow", "right_shoulder"), ("right_wrist", "right_elbow"),
    ("left_hip", "pelvis"), ("left_knee", "left_hip"), ("left_ankle", "left_knee"), ("left_toe", "left_ankle"),
    ("left_shoulder", "chest"), ("left_elbow", "left_shoulder"), ("left_wrist", "left_elbow"))
_NAMES = tuple(name for name, _ in _JOINTS)

# Written out rather than read from the URDF so that the skeleton (and everything that only needs
# the tree) imports without pybullet; `humanoid_body` checks the URDF agrees.
HUMANOID = Skeleton(
    names=_NAMES,
    parents=tuple(-1 if parent is None else _NAMES.index(parent) for _, parent in _JOINTS),
    feet=tuple(_NAMES.index(n) for n in ("right_ankle", "right_toe", "left_ankle", "left_toe")),
    fps=FPS)

# joint i of a mirrored body is joint MIRROR[i] of the original: left and right swap
MIRROR: tuple[int, ...] = tuple(
    _NAMES.index(n.replace("right_", "@").replace("left_", "right_").replace("@", "left_")) for n in _NAMES)

# DeepMimic axes -> ours: R_y(-90 deg) takes +x (DeepMimic's forward) to +z and +z (its right) to -x
_W = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
_W_QUAT = np.array([math.cos(-math.pi / 4), 0.0, math.sin(-math.pi / 4), 0.0])


# ------------------------------------------------------------------------------------- files

def pybullet_data_dir() -> Path:
    """The folder of data files inside the installed pybullet wheel."""
    try:
        import pybullet_data
    except ImportError as err:
        raise ModuleNotFoundError(f"the motion data sets read pybullet's humanoid and clips: {INSTALL_HINT}") from err
    return Path(pybullet_data.getDataPath())


def clip_path(name: str, folder: str | Path = "") -> Path:
    """Where clip `name` lives: `<folder>/humanoid3d_<name>.txt`, pybullet's motions by default."""
    return Path(folder or pybullet_data_dir() / "data" / "motions") / f"humanoid3d_{name}.txt"


# ------------------------------------------------------------------------------------- quaternions
# (w, x, y, z), float64, broadcasting over any leading dimensions

def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_about(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotation by `angle` [...] radians about the unit `axis` [3] -> [..., 4]."""
    half = np.asarray(angle, dtype=np.float64)[..., None] / 2
    return np.concatenate([np.cos(half), np.sin(half) * np.asarray(axis, dtype=np.float64)], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """[..., 4] unit quaternions -> [..., 3, 3] rotation matrices."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                    axis=-1).reshape(q.shape[:-1] + (3, 3))


def quat_slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation from `a` (t = 0) to `b` (t = 1) the short way round; t [...] broadcasts
    against the quaternions' leading dimensions."""
    dot = np.sum(a * b, axis=-1, keepdims=True)
    b = np.where(dot < 0, -b, b)  # q and -q are one rotation: take the nearer
    dot = np.abs(dot)
    t = np.asarray(t, dtype=np.float64)[..., None]
    angle = np.arccos(np.clip(dot, -1.0, 1.0))
    sin = np.sin(angle)
    near = sin < 1e-6  # nearly equal: the linear blend is exact to float precision
    safe = np.where(near, 1.0, sin)
    wa = np.where(near, 1 - t, np.sin((1 - t) * angle) / safe)
    wb = np.where(near, t, np.sin(t * angle) / safe)
    out = wa * a + wb * b
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def heading(q: np.ndarray) -> np.ndarray:
    """The rotation about y ("twist") of rotations `q` [..., 4], in radians: q = R_y(heading) * swing
    with the swing about a horizontal axis. With our axes, a body of heading h faces
    (sin h, 0, cos h). Undefined only for a half turn about a horizontal axis (then 0)."""
    return 2 * np.arctan2(q[..., 2], q[..., 0])


# ------------------------------------------------------------------------------------- the body

@dataclass(frozen=True)
class Body:
    """What forward kinematics needs, in our axes and in metres.

    offsets[j] is where joint j sits in its parent's frame; joint j's frame turns by pose rotation
    `rotation[j]` (an index into POSE_JOINTS, -1 for the fixed wrists and the added head and toes).
    `hinge_axes` are the knees' and elbows' axes, keyed by POSE_JOINTS name.
    """

    offsets: np.ndarray                 # [J, 3]
    rotation: tuple[int, ...]           # [J]
    hinge_axes: dict[str, np.ndarray]   # name -> [3]


def _xyz(element: ET.Element | None, attr: str = "xyz") -> np.ndarray:
    return np.array([float(v) for v in element.get(attr, "0 0 0").split()]) if element is not None else np.zeros(3)


def read_urdf(path: str | Path) -> Body:
    """The humanoid's `Body` from DeepMimic's URDF; ValueError naming the file if its tree is not ours."""
    path = Path(path)
    try:
        # pybullet's copy ends in a NUL byte, which XML parsers reject
        robot = ET.fromstring(path.read_bytes().rstrip(b"\0"))
    except (OSError, ET.ParseError) as err:
        raise ValueError(f"{path}: cannot read the humanoid URDF: {err}") from err
    joints = {j.get("name"): j for j in robot.iter("joint")}
    links = {link.get("name"): link for link in robot.iter("link")}
    link_of = {"pelvis": "root"}  # URDF joint X moves link X; our pelvis is its link "root"

    def fail(msg: str) -> ValueError:
        return ValueError(f"{path}: {msg}; expected DeepMimic's humanoid.urdf")

    offsets = np.zeros((len(_NAMES), 3))
    rotation, hinges = [], {}
    for j, (name, parent) in enumerate(_JOINTS):
        rotation.append(POSE_JOINTS.index(name) if name in POSE_JOINTS else -1)
        if parent is None:
            continue
        if name == "head" or name.endswith("_toe"):  # points on a link's collision shape
            link = links.get(link_of.get(parent, parent))
            shape = None if link is None else link.find("collision")
            if shape is None:
                raise fail(f"link {parent!r} has no collision shape to place the {name} on")
            centre = _xyz(shape.find("origin"))
            if name == "head":
                offsets[j] = centre
            else:  # the front of the foot box's sole
                box = shape.find("geometry/box")
                if box is None:
                    raise fail(f"link {parent!r} is not a box")
                size = _xyz(box, "size")
                offsets[j] = centre + np.array([size[0] / 2, -size[1] / 2, 0.0])
            continue
        joint = joints.get(name)
        if joint is None or joint.find("parent").get("link") != link_of.get(parent, parent):
            raise fail(f"joint {name!r} missing or not a child of {parent!r}")
        origin = joint.find("origin")
        if np.any(_xyz(origin, "rpy") != 0):
            raise fail(f"joint {name!r} has a rotated origin, which this FK does not model")
        offsets[j] = _xyz(origin)
        kind = joint.get("type")
        if kind == "revolute":
            hinges[name] = _W @ _xyz(joint.find("axis"))
        elif (kind == "spherical") != (name in POSE_JOINTS):
            raise fail(f"joint {name!r} is {kind}")
    return Body(offsets=offsets * URDF_SCALE @ _W.T, rotation=tuple(rotation), hinge_axes=hinges)


@functools.lru_cache(maxsize=1)
def humanoid_body() -> Body:
    return read_urdf(pybullet_data_dir() / "humanoid" / "humanoid.urdf")


def forward_kinematics(root_pos: np.ndarray, rotations: np.ndarray, body: Body | None = None) -> np.ndarray:
    """Joint positions of poses.

    Args:
        root_pos: [..., 3] the pelvis position.
        rotations: [..., R, 4] unit quaternions, POSE_JOINTS order: the pelvis's world rotation,
            then each joint's rotation relative to its parent.
    Returns:
        float64 [..., J, 3] in HUMANOID order.
    """
    body = body or humanoid_body()
    mats = quat_to_matrix(rotations)  # [..., R, 3, 3]
    frames: list[np.ndarray | None] = []
    pos: list[np.ndarray] = []
    for j, parent in enumerate(HUMANOID.parents):
        local = None if body.rotation[j] < 0 else mats[..., body.rotation[j], :, :]
        if parent < 0:
            pos.append(root_pos)
            frames.append(local)
            continue
        pos.append(pos[parent] + frames[parent] @ body.offsets[j])  # [..., 3]
        frames.append(frames[parent] if local is None else frames[parent] @ local)
    return np.stack(pos, axis=-2)


# ------------------------------------------------------------------------------------- clips

@dataclass(frozen=True)
class Clip:
    """One motion clip, in our axes. Loops ("wrap") are made seamless at load: see `_loop`."""

    name: str
    path: str
    loop: bool
    times: np.ndarray        # [F] seconds since the first frame, increasing
    root_pos: np.ndarray     # [F, 3]
    rotations: np.ndarray    # [F, R, 4]
    # loops only: what one cycle does to the root (turn about y, then shift), and the per-rotation
    # mismatch between the last frame and the cycled first frame, spread over the cycle
    cycle_turn: float = 0.0
    cycle_shift: np.ndarray | None = None   # [3], y = 0
    seam: np.ndarray | None = None          # [R, 4]
    seam_height: float = 0.0

    @property
    def duration(self) -> float:
        return float(self.times[-1])

    @property
    def num_frames(self) -> int:
        return len(self.times)


def read_clip(path: str | Path, name: str | None = None) -> Clip:
    """Parse a DeepMimic clip file; any malformed content raises ValueError naming the file."""
    path = Path(path)
    name = name or path.stem.removeprefix("humanoid3d_")
    try:
        data = json.loads(path.read_text())
        frames = np.asarray(data["Frames"], dtype=np.float64)
        loop = data.get("Loop", "none")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise ValueError(f"{path}: not a DeepMimic clip (JSON with a 'Frames' list of numbers): {err!r}") from err
    if loop not in ("wrap", "none"):
        raise ValueError(f"{path}: 'Loop' must be 'wrap' or 'none', got {loop!r}")
    if frames.ndim != 2 or frames.shape[1] != FRAME_SIZE or len(frames) < 2:
        raise ValueError(f"{path}: 'Frames' must be at least 2 frames of {FRAME_SIZE} numbers, "
                         f"got shape {frames.shape}")
    if not np.all(np.isfinite(frames)):
        raise ValueError(f"{path}: 'Frames' holds non-finite numbers")
    durations = frames[:-1, 0]  # the last frame's duration is unused (it ends the clip)
    if np.any(durations < 0) or durations.sum() <= 0:
        raise ValueError(f"{path}: frame durations must be >= 0 and add up to more than 0")

    body = humanoid_body()
    rotations, col = [], 4
    for joint, size in (("pelvis", 4),) + CLIP_JOINTS:
        if size == 4:
            q = frames[:, col:col + 4]
            norm = np.linalg.norm(q, axis=-1, keepdims=True)
            if np.any(norm < 1e-6):
                raise ValueError(f"{path}: joint {joint!r} has a zero quaternion in frame {int(np.argmin(norm))}")
            # some clips store quaternions up to 40 % off unit length: the rotation is the direction
            rotations.append(quat_mul(quat_mul(_W_QUAT, q / norm), quat_conj(_W_QUAT)))  # in our axes
        else:
            rotations.append(quat_about(body.hinge_axes[joint], frames[:, col]))
        col += size
    keep = np.concatenate([[True], durations > 0])  # drop a frame at the same time as the one before
    times = np.concatenate([[0.0], np.cumsum(durations)])[keep]
    root_pos, rotations = (frames[:, 1:4] @ _W.T)[keep], np.stack(rotations, axis=1)[keep]
    for array in (times, root_pos, rotations):  # clips are cached and shared
        array.flags.writeable = False
    clip = Clip(name=name, path=str(path), loop=loop == "wrap", times=times, root_pos=root_pos, rotations=rotations)
    return _loop(clip) if clip.loop else clip


def _loop(clip: Clip) -> Clip:
    """Make a "wrap" clip tile seamlessly.

    One cycle turns and shifts the root: the rigid horizontal move taking the first frame's root
    (heading, x, z) onto the last's. Cycle k of a tiling is the first cycle moved k times, so paths
    and turns continue (walk turns 7 degrees a cycle, spin 20). The captured loops do not close
    exactly (up to 28 degrees at a joint): the mismatch between the last frame and the moved first
    frame is spread linearly over the cycle, so the tiled motion has no jump.
    """
    first, last = clip.rotations[0], clip.rotations[-1]  # [R, 4]
    turn = float(heading(last[0]) - heading(first[0]))
    turn = (turn + math.pi) % (2 * math.pi) - math.pi  # the short way round
    turn_q = quat_about(np.array([0.0, 1.0, 0.0]), turn)
    rot = quat_to_matrix(turn_q)
    start, end = clip.root_pos[0] * [1, 0, 1], clip.root_pos[-1] * [1, 0, 1]
    shift = end - rot @ start  # p -> rot p + shift maps the first root onto the last horizontally
    target = first.copy()
    target[0] = quat_mul(turn_q, first[0])  # the pelvis's world rotation turns with the cycle
    seam = quat_mul(target, quat_conj(last))  # [R, 4]: rotation that takes the last frame onto the target
    return Clip(**{**clip.__dict__, "cycle_turn": turn, "cycle_shift": shift, "seam": seam,
                   "seam_height": float(clip.root_pos[0, 1] - clip.root_pos[-1, 1])})


@functools.lru_cache(maxsize=64)
def load_clip(name: str, folder: str = "") -> Clip:
    """Clip `name` from `folder` (pybullet's motions when empty), parsed once per process."""
    path = clip_path(name, folder)
    if not path.is_file():
        raise ValueError(f"clip {name!r}: no file {path}")
    return read_clip(path, name)


def sample_clip(clip: Clip, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pose at times `t` [...] (seconds): (root_pos [..., 3], rotations [..., R, 4]).

    Frames are blended linearly (root) and by slerp (rotations), so poses between frames keep the
    bone lengths. Loops repeat forever in both directions; other clips hold their first and last
    pose outside [0, duration].
    """
    t = np.asarray(t, dtype=np.float64)
    d = clip.duration
    cycle = np.floor(t / d) if clip.loop else np.zeros_like(t)
    u = np.clip(t - cycle * d, 0.0, d)  # time within the clip
    i = np.clip(np.searchsorted(clip.times, u, side="right") - 1, 0, clip.num_frames - 2)
    a = (u - clip.times[i]) / (clip.times[i + 1] - clip.times[i])  # [...] in [0, 1]
    root = clip.root_pos[i] + a[..., None] * (clip.root_pos[i + 1] - clip.root_pos[i])
    rots = quat_slerp(clip.rotations[i], clip.rotations[i + 1], a[..., None])  # [..., R, 4]
    if not clip.loop:
        return root, rots

    frac = u / d
    identity = np.array([1.0, 0.0, 0.0, 0.0])
    rots = quat_mul(quat_slerp(np.broadcast_to(identity, clip.seam.shape), clip.seam, frac[..., None]), rots)
    root = root + (frac * clip.seam_height)[..., None] * np.array([0.0, 1.0, 0.0])
    # cycle k is the first cycle moved k times by the cycle's rigid move p -> R p + shift:
    # p -> R^k p + b_k, where b_0 = 0, b_{k+1} = R b_k + shift and b_{k-1} = R^T (b_k - shift)
    up = np.array([0.0, 1.0, 0.0])
    one = quat_to_matrix(quat_about(up, clip.cycle_turn))
    k_min, k_max = int(cycle.min(initial=0)), int(cycle.max(initial=0))
    b = {0: np.zeros(3)}
    for k in range(1, k_max + 1):
        b[k] = one @ b[k - 1] + clip.cycle_shift
    for k in range(-1, k_min - 1, -1):
        b[k] = one.T @ (b[k + 1] - clip.cycle_shift)
    steps = np.stack([b[k] for k in range(k_min, k_max + 1)])[(cycle - k_min).astype(np.int64)]  # [..., 3]
    turn = quat_about(up, cycle * clip.cycle_turn)  # [..., 4]
    root = (quat_to_matrix(turn) @ root[..., None])[..., 0] + steps
    rots[..., 0, :] = quat_mul(turn, rots[..., 0, :])
    return root, rots


@functools.lru_cache(maxsize=64)
def clip_positions(name: str, folder: str = "") -> np.ndarray:
    """Joint positions of clip `name` at its own frames: float64 [F, J, 3] (read-only, cached)."""
    clip = load_clip(name, folder)
    pos = forward_kinematics(clip.root_pos, clip.rotations)
    pos.flags.writeable = False
    return pos
