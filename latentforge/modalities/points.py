"""Point sets: float32 [N, P, 3] surface samples in the cube [-1, 1]^3 (the `points` modality).

To a network they are [N, P, 3] tensors (a set: no order, so tokenizers must not rely on one).
Previews are renders: each shape seen from one fixed oblique camera, its points splatted as small
discs, nearer points drawn over farther ones and shaded by depth, in the house's captioned image
grid. Reconstructions are scored by Chamfer-L2 and the F-score at 1 % and 2 % of the box diagonal
(modalities/point_metrics.py states the conventions), and EMD on up to 512 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentforge.modalities.base import Modality, train_copies

RENDER_PX = 96
SET_METRIC_POINTS = 256        # `sample_set_metrics`: points a shape in the pairwise Chamfer matrices
VOXELS = 8                   # `flat`: occupancy of an 8^3 grid, an order-free vector per shape
ELEVATION, AZIMUTH = np.radians(25.0), np.radians(-35.0)


@dataclass(frozen=True)
class PointsModality(Modality):
    points: int                                  # P: points per shape
    name = "points"
    key = "points"
    noun = "shapes"
    layout = "points"

    def to_model(self, array: np.ndarray | Tensor) -> Tensor:
        return torch.as_tensor(np.array(array) if isinstance(array, np.ndarray) else array, dtype=torch.float32)

    def from_model(self, x: Tensor) -> np.ndarray:
        return x.float().cpu().numpy()

    def tokenizer_fields(self) -> dict[str, Any]:
        return {"points": self.points}

    def check(self, array: np.ndarray, where: str) -> None:
        if not np.issubdtype(array.dtype, np.floating) or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"{where}: expected point sets float [N, P, 3], got {array.dtype} {list(array.shape)}")
        if array.shape[1] == 0:
            raise ValueError(f"{where}: empty point sets (P = 0)")
        if not np.isfinite(array).all():
            bad = np.unique(np.nonzero(~np.isfinite(array))[0])
            raise ValueError(f"{where}: NaN or infinite coordinates in shapes {bad[:10].tolist()}"
                             f"{' ...' if len(bad) > 10 else ''}")

    # -- previews ----------------------------------------------------------------------------
    def preview(self, samples: np.ndarray, captions: list[str] | None, path: Path, title: str) -> list[str]:
        from latentforge.report.grids import save_captioned_grid

        self.check(samples, "preview")
        out = path.with_suffix(".png")
        save_captioned_grid(render(samples), captions or [""] * len(samples), out, title=title)
        return [out.name]

    def preview_pairs(self, real: np.ndarray, recon: np.ndarray, path: Path, title: str) -> list[str]:
        from latentforge.report.grids import save_image_rows

        out = path.with_suffix(".png")
        save_image_rows([render(real), render(recon)], ["data", "reconstruction"], out, title=title)
        return [out.name]

    # -- numbers -----------------------------------------------------------------------------
    def recon_metrics(self, real: np.ndarray, recon: np.ndarray) -> dict[str, Any]:
        from latentforge.modalities.point_metrics import EMD_MAX_POINTS, chamfer_l2, emd, f_score, tau_of_diagonal

        self.check(real, "recon_metrics real")
        self.check(recon, "recon_metrics recon")
        x, y = torch.as_tensor(real), torch.as_tensor(recon)
        sub = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))[:EMD_MAX_POINTS]
        subr = torch.randperm(y.shape[1], generator=torch.Generator().manual_seed(1))[:EMD_MAX_POINTS]
        return {"chamfer_l2": float(chamfer_l2(y, x).mean()),
                "f_score_1pct": float(f_score(y, x, tau_of_diagonal(0.01)).mean()),
                "f_score_2pct": float(f_score(y, x, tau_of_diagonal(0.02)).mean()),
                "emd": float(emd(y[:, subr], x[:, sub]).mean()),
                "n_examples": len(real), "convention": "CD = sum of the two mean squared NN distances, cube [-1, 1]"}

    def sample_set_metrics(self, fake: np.ndarray, real: np.ndarray) -> dict[str, float]:
        """MMD, COV and 1-NNA under Chamfer-L2 (the point-cloud generation papers' trio), on a seeded
        subsample of SET_METRIC_POINTS points a shape: the pairwise matrices cost N^2 P^2."""
        from latentforge.modalities.point_metrics import generation_metrics

        self.check(fake, "sample_set_metrics fake")
        g = torch.Generator().manual_seed(0)
        pick = lambda a: torch.as_tensor(a)[:, torch.randperm(a.shape[1], generator=g)[:SET_METRIC_POINTS]]  # noqa: E731
        return generation_metrics(pick(fake), pick(real))

    def baselines(self, train: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
        """Points uniform in the cube (no surface), the sphere of the training shapes' mean radius
        (a mean shape), and copies of training shapes."""
        rng = np.random.default_rng(seed)
        P = train.shape[1]
        cube = rng.uniform(-1, 1, (n, P, 3)).astype(np.float32)
        radius = float(np.linalg.norm(train[: min(len(train), 256)], axis=-1).mean())
        direction = rng.standard_normal((n, P, 3))
        sphere = (radius * direction / np.linalg.norm(direction, axis=-1, keepdims=True)).astype(np.float32)
        return {"uniform in the cube": cube, "mean-radius sphere": sphere, "train copies": train_copies(train, n, seed)}

    def flat(self, array: np.ndarray) -> np.ndarray:
        """The share of each shape's points in each cell of a VOXELS^3 grid: equal for two samplings
        of one surface whatever the points' order."""
        cells = np.clip(((np.asarray(array) + 1) / 2 * VOXELS).astype(int), 0, VOXELS - 1)
        index = (cells[..., 0] * VOXELS + cells[..., 1]) * VOXELS + cells[..., 2]          # [N, P]
        out = np.zeros((len(array), VOXELS ** 3), np.float32)
        for row, idx in enumerate(index):
            out[row] = np.bincount(idx, minlength=VOXELS ** 3) / idx.size
        return out


def render(shapes: np.ndarray, size: int = RENDER_PX) -> np.ndarray:
    """Point sets [N, P, 3] -> uint8 images [N, size, size, 3]: an orthographic view from elevation
    25°, azimuth -35°, each point a 2-pixel disc, painter's order (far first), blue-grey shaded
    from light (near) to dark (far) on white."""
    ce, se, ca, sa = np.cos(ELEVATION), np.sin(ELEVATION), np.cos(AZIMUTH), np.sin(AZIMUTH)
    yaw = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])
    view = np.asarray(shapes, np.float64) @ (tilt @ yaw).T      # x right, y depth (into the screen), z up
    images = np.full((len(view), size, size, 3), 255, np.uint8)
    scale = (size - 6) / (2 * np.sqrt(3))                       # the whole cube's projection fits
    offsets = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx * dx + dy * dy <= 1]
    for image, pts in zip(images, view):
        order = np.argsort(-pts[:, 1])                          # far first, so near points paint over them
        px = np.round(size / 2 + pts[order, 0] * scale).astype(int)
        py = np.round(size / 2 - pts[order, 2] * scale).astype(int)
        depth = (pts[order, 1] + np.sqrt(3)) / (2 * np.sqrt(3))  # 0 near .. 1 far
        colour = (np.array([120, 160, 210]) * (1 - 0.6 * depth[:, None])).astype(np.uint8)
        dx, dy = np.array(offsets).T                            # each point's disc, point by point
        x = np.clip(px[:, None] + dx, 0, size - 1).ravel()
        y = np.clip(py[:, None] + dy, 0, size - 1).ravel()
        image[y, x] = np.repeat(colour, len(offsets), axis=0)   # repeated pixels: the last (nearest) wins
    return images
