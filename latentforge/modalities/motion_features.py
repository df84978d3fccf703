"""Motion features in the manner of HumanML3D: joint positions <-> one vector per frame.

A tokenizer models frames of features rather than raw positions: the root's path becomes a
velocity (so a motion does not depend on where it starts), the other joints are seen from the
root (so the pose does not depend on where the body is), and velocities and foot contacts spell
out what a position sequence only implies. Channels of frame t, in this order (`feature_slices`):

    root_height      1            the root's y, metres
    root_velocity    2            the root's x, z displacement since frame t-1, m/s; frame 0's
                                  is its displacement from the origin (as if frame -1 stood at
                                  x = z = 0), so any start is kept and the inverse is exact
    local_positions  3 (J - 1)    every other joint minus the root, metres, world axes
    velocities       3 J          every joint's displacement since frame t-1, m/s; frame 0
                                  repeats frame 1's (a motion does not start from rest)
    contacts         len(feet)    1 where a foot joint is within CONTACT_HEIGHT of the ground and
                                  slower than CONTACT_SPEED, else 0

so F = 6 J + len(feet). The scale is fixed, not fitted: metres and metres per second (frame
differences times the skeleton's fps), which for human motion puts every channel near unit size
(heights ~ 1 m, limb offsets 0.1-1 m, speeds 0.1-5 m/s); a tokenizer may still standardise.
The heading is not canonicalised (positions stay in world axes): the data sets start every
window facing +z, and without a heading channel the inverse needs no integration of turns.

`features_to_positions` reads only the root height, the root velocity and the local positions:
velocities and contacts are outputs for losses and metrics, ignored by the inverse, which is
exact up to float rounding.

All functions are torch, any leading dims: positions [..., T, J, 3], features [..., T, F].
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentforge.modalities.skeleton import Skeleton

CONTACT_HEIGHT = 0.10   # metres: an ankle on a level foot stands ~5 cm up, a toe ~0-3 cm
CONTACT_SPEED = 0.5     # m/s: a planted foot moves far slower, a swinging one several m/s


def feature_dim(skeleton: Skeleton) -> int:
    return 6 * skeleton.num_joints + len(skeleton.feet)


def feature_slices(skeleton: Skeleton) -> dict[str, slice]:
    """Where each group of channels sits in a feature vector."""
    joints, out, start = skeleton.num_joints, {}, 0
    for name, size in (("root_height", 1), ("root_velocity", 2), ("local_positions", 3 * (joints - 1)),
                       ("velocities", 3 * joints), ("contacts", len(skeleton.feet))):
        out[name] = slice(start, start + size)
        start += size
    return out


def _check(x: Tensor, last: tuple[int, ...], what: str) -> None:
    if x.dim() < len(last) + 1 or tuple(x.shape[-len(last):]) != last:
        raise ValueError(f"{what}: expected shape [..., T, {', '.join(map(str, last))}], got {list(x.shape)}")


def joint_velocities(positions: Tensor, fps: float) -> Tensor:
    """[..., T, J, 3] -> [..., T, J, 3] m/s: backward differences, frame 0 repeating frame 1's
    (zero for a single frame)."""
    vel = torch.diff(positions, dim=-3) * fps  # [..., T-1, J, 3]
    if vel.shape[-3] == 0:
        return torch.zeros_like(positions)
    return torch.cat([vel[..., :1, :, :], vel], dim=-3)


def foot_contacts(positions: Tensor, skeleton: Skeleton, velocities: Tensor | None = None) -> Tensor:
    """[..., T, J, 3] -> [..., T, len(feet)] of 0/1 (positions' dtype): near the ground and slow."""
    feet = list(skeleton.feet)
    if velocities is None:
        velocities = joint_velocities(positions, skeleton.fps)
    low = positions[..., feet, 1] < CONTACT_HEIGHT  # [..., T, K]
    slow = velocities[..., feet, :].norm(dim=-1) < CONTACT_SPEED
    return (low & slow).to(positions.dtype)


def positions_to_features(positions: Tensor, skeleton: Skeleton) -> Tensor:
    """Joint positions [..., T, J, 3] (metres, y up) -> features [..., T, F] (see the module docstring)."""
    _check(positions, (skeleton.num_joints, 3), "positions_to_features")
    root = positions[..., 0, :]  # [..., T, 3]
    before = torch.cat([torch.zeros_like(root[..., :1, :]), root[..., :-1, :]], dim=-2)  # frame -1 at the origin
    root_velocity = (root - before)[..., [0, 2]] * skeleton.fps  # [..., T, 2]
    local = (positions[..., 1:, :] - root[..., None, :]).flatten(-2)  # [..., T, 3(J-1)]
    velocities = joint_velocities(positions, skeleton.fps)  # [..., T, J, 3]
    contacts = foot_contacts(positions, skeleton, velocities)  # [..., T, K]
    return torch.cat([root[..., 1:2], root_velocity, local, velocities.flatten(-2), contacts], dim=-1)


def features_to_positions(features: Tensor, skeleton: Skeleton) -> Tensor:
    """Features [..., T, F] -> joint positions [..., T, J, 3]: the root's path is the running sum
    of its velocities, the other joints hang off it; velocities and contacts are not read."""
    _check(features, (feature_dim(skeleton),), "features_to_positions")
    parts = feature_slices(skeleton)
    path = torch.cumsum(features[..., parts["root_velocity"]] / skeleton.fps, dim=-2)  # [..., T, 2] x, z
    root = torch.stack([path[..., 0], features[..., 0], path[..., 1]], dim=-1)  # [..., T, 3]
    local = features[..., parts["local_positions"]].unflatten(-1, (skeleton.num_joints - 1, 3))  # [..., T, J-1, 3]
    return torch.cat([root[..., None, :], root[..., None, :] + local], dim=-2)
