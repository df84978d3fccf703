"""Motion: joint positions float32 [N, T, J, 3] (metres, y up) on disk, HumanML3D-style features
[N, T, F] for the networks (motion_features.py), animated skeletons for people.

Previews draw every clip from one oblique orthographic camera that follows the root (floor
marks on a fixed world grid show how far the body travels): an animated GIF (all clips side by side, looping) and a
filmstrip PNG (one row per clip, eight moments each) for a page that must not move. Bones of the
left side are blue, of the right side red, so a mirrored clip is visible at a glance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from latentforge.modalities.animation import save_filmstrip, save_gif
from latentforge.modalities.base import Modality, train_copies
from latentforge.modalities.motion_features import feature_dim, features_to_positions, positions_to_features
from latentforge.modalities.skeleton import Skeleton

TILE = 128              # pixels per clip in the previews
CAPTION = 24            # pixels of caption under each tile
VIEW_METRES = 2.4       # the side of the square a tile shows
STRIP_FRAMES = 8        # moments per clip in the filmstrip
GIF_STRIDE = 2          # every 2nd frame in the GIF: 15 fps for 30 fps data, files a third the size
_LEFT, _RIGHT, _CENTRE = (40, 90, 220), (210, 50, 40), (70, 70, 70)


@dataclass(frozen=True)
class MotionModality(Modality):
    skeleton: Skeleton
    window: int                                # frames per clip
    name = "motion"
    key = "motion"
    noun = "clips"
    layout = "sequence"

    def to_model(self, array: np.ndarray | Tensor) -> Tensor:
        x = torch.as_tensor(np.array(array) if isinstance(array, np.ndarray) else array, dtype=torch.float32)
        return positions_to_features(x, self.skeleton)  # [N, T, F]

    def from_model(self, x: Tensor) -> np.ndarray:
        return features_to_positions(x.float(), self.skeleton).cpu().numpy()  # [N, T, J, 3]

    def tokenizer_fields(self) -> dict[str, Any]:
        return {"seq_len": self.window, "in_channels": feature_dim(self.skeleton)}

    def check(self, array: np.ndarray, where: str) -> None:
        J = self.skeleton.num_joints
        if not np.issubdtype(array.dtype, np.floating) or array.ndim != 4 or array.shape[2:] != (J, 3):
            raise ValueError(f"{where}: expected joint positions float [N, T, {J}, 3], "
                             f"got {array.dtype} {list(array.shape)}")

    # -- previews ----------------------------------------------------------------------------
    def preview(self, samples: np.ndarray, captions: list[str] | None, path: Path, title: str) -> list[str]:
        self.check(samples, "preview")
        captions = captions or [""] * len(samples)
        gif, strip = path.with_suffix(".gif"), path.with_name(path.name + "_strip.png")
        clips = [render_clip(c, self.skeleton) for c in samples]
        save_gif(clips, captions, gif, self.skeleton.fps, stride=GIF_STRIDE, caption_px=CAPTION)
        save_filmstrip(clips, captions, strip, title)
        return [gif.name, strip.name]

    def preview_pairs(self, real: np.ndarray, recon: np.ndarray, path: Path, title: str) -> list[str]:
        clips = [c for pair in zip(real, recon) for c in pair]  # data, its reconstruction, next ...
        captions = [t for _ in range(len(real)) for t in ("data", "reconstruction")]
        return self.preview(np.stack(clips), captions, path, title)

    # -- numbers -----------------------------------------------------------------------------
    def recon_metrics(self, real: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
        """MPJPE (metres, and with the root aligned), the reconstructions' bone-length error
        against the data's own bones, and their foot skating and jerk beside the data's."""
        from latentforge.modalities.motion_metrics import bone_length_error, bone_lengths, foot_skating_ratio, jerk, mpjpe

        reference = bone_lengths(real, self.skeleton).median(1).values  # [N, B] each clip's own bones
        errors = (bone_lengths(recon, self.skeleton) - reference[:, None]).abs().mean()
        return {"mpjpe": mpjpe(real, recon), "mpjpe_root_aligned": mpjpe(real, recon, align_root=True),
                "bone_length_error": float(errors), "recon_bone_length_drift": bone_length_error(recon, self.skeleton),
                "skating_ratio": foot_skating_ratio(recon, self.skeleton),
                "real_skating_ratio": foot_skating_ratio(real, self.skeleton),
                "jerk": jerk(recon, self.skeleton.fps), "real_jerk": jerk(real, self.skeleton.fps)}

    def baselines(self, train: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
        """The mean pose held still (the average body, no motion), independent per-frame
        Gaussians per joint coordinate (right places on average, no coherent movement), and
        copies of training clips."""
        x = train.astype(np.float64)                                  # [N, T, J, 3]
        mean_pose = x.mean(axis=(0, 1))                               # [J, 3]
        still = np.broadcast_to(mean_pose, (n, *train.shape[1:])).astype(np.float32)
        rng = np.random.default_rng(seed)
        gauss = (x.mean(0) + x.std(0) * rng.standard_normal((n, *train.shape[1:]))).astype(np.float32)
        return {"mean pose": still, "per-frame gaussian": gauss, "train copies": train_copies(train, n, seed)}


# -- drawing -----------------------------------------------------------------------------------

def _project(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """[T, K, 3] metres -> [T, K, 2] pixels of an oblique orthographic camera that looks from 35
    degrees to the side and a little above at `centre` [T, 3] (its height ignored)."""
    yaw, pitch = math.radians(35), math.radians(12)
    x, y, z = (points - centre[:, None] * [1.0, 0.0, 1.0]).transpose(2, 0, 1)
    u = x * math.cos(yaw) - z * math.sin(yaw)
    depth = x * math.sin(yaw) + z * math.cos(yaw)
    v = y * math.cos(pitch) - depth * math.sin(pitch)
    scale = TILE / VIEW_METRES
    return np.stack([TILE / 2 + u * scale, TILE * 0.8 - v * scale], -1)  # the ground a little above the caption


def _floor(centre: np.ndarray, spacing: float = 0.5, reach: int = 3) -> np.ndarray:
    """[T, K, 3] floor marks on a fixed world grid around each frame's centre: the camera follows
    the body, the marks show how far it travels."""
    offsets = np.arange(-reach, reach + 1) * spacing
    gx, gz = np.meshgrid(offsets, offsets)
    base = np.round(centre[:, [0, 2]] / spacing) * spacing                  # [T, 2] the nearest mark
    marks = base[:, None] + np.stack([gx.ravel(), gz.ravel()], -1)[None]    # [T, K, 2]
    return np.stack([marks[..., 0], np.zeros(marks.shape[:2]), marks[..., 1]], -1)


def render_clip(clip: np.ndarray, skeleton: Skeleton) -> list[Image.Image]:
    """One RGB tile per frame: floor marks, the bones (left blue, right red), the joints; the
    camera follows the root."""
    clip = np.asarray(clip, dtype=np.float64)
    centre = clip[:, 0]
    points, floor = _project(clip, centre), _project(_floor(centre), centre)
    colour = [_LEFT if n.startswith("left") else _RIGHT if n.startswith("right") else _CENTRE
              for n in skeleton.names]
    frames = []
    for p, marks in zip(points, floor):
        tile = Image.new("RGB", (TILE, TILE), "white")
        draw = ImageDraw.Draw(tile)
        for u, v in marks:
            draw.point((u, v), fill=(170, 170, 170))
        for parent, child in skeleton.bones:
            draw.line([tuple(p[parent]), tuple(p[child])], fill=colour[child], width=3)
        for j, (u, v) in enumerate(p):
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=colour[j])
        frames.append(tile)
    return frames
