"""A kinematic tree: which joint hangs from which, where the feet are, and the frame rate.

Motion is stored as joint positions, float32 [N, T, J, 3] in metres with y up. Everything that
reads it (features, previews, the foot-skating and bone-length metrics) also needs the tree; the
motion data set hands its `Skeleton` to the motion modality, so nothing below the data layer
hard-codes a body.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skeleton:
    names: tuple[str, ...]          # one per joint, in storage order
    parents: tuple[int, ...]        # parent joint index, -1 for the root (joint 0)
    feet: tuple[int, ...]           # joints that touch the ground when standing (contacts, skating)
    fps: float = 30.0               # frames per second of the stored motion

    def __post_init__(self) -> None:
        if len(self.names) != len(self.parents):
            raise ValueError(f"{len(self.names)} joint names but {len(self.parents)} parents")
        if not self.parents or self.parents[0] != -1:
            raise ValueError("joint 0 must be the root (parent -1)")
        for j, p in enumerate(self.parents[1:], start=1):
            if not 0 <= p < j:
                raise ValueError(f"joint {j} ({self.names[j]}): parent {p} must come before it")
        bad = [f for f in self.feet if not 0 <= f < len(self.names)]
        if bad:
            raise ValueError(f"feet {bad} are not joints of this {len(self.names)}-joint skeleton")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def bones(self) -> list[tuple[int, int]]:
        """(parent, child) pairs, one per non-root joint."""
        return [(p, j) for j, p in enumerate(self.parents) if p >= 0]
