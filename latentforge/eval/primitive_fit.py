"""The primitives judge: which upright primitive a point set is, and how big.

Every class's exact SDF (data/primitives.py's formulas, in torch) is fitted to the points: its
parameters start from the points' extents (radial, vertical, per axis) and 60 Adam steps lower the
mean squared SDF at the points, all shapes and classes at once. The class whose fit leaves the
smallest mean |SDF|, relative to the shape's extent (plus a small charge per parameter, so a
sphere is not read as a zero-length capsule), is the reading; the size is "large" when the
points' half-extent (their 99th percentile of max |coordinate|) passes the gap between the data's
bands (0.6 .. 0.8). A point set the fit cannot place (non-finite, empty) reads as class -1.

    read = read_primitives(points)          # {"label": [N], "size": [N], "residual": [N, 6]}
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentforge.data.primitives import SHAPES, SIZE_BANDS

FIT_STEPS = 60
# A sphere is a capsule of zero length and a cube a box: where two fits are both near exact
# (residuals ~ 5e-4; a wrong class leaves > 0.05), the one with fewer parameters is the reading
PARAMETERS = {"sphere": 1, "box": 3, "cylinder": 2, "cone": 2, "torus": 2, "capsule": 2}
COMPLEXITY_PENALTY = 2e-3
SIZE_THRESHOLD = (SIZE_BANDS[0][1] + SIZE_BANDS[1][0]) / 2


def _sdf(shape: str, params: Tensor, p: Tensor) -> Tensor:
    """SDF of points p [B, P, 3] to `shape` with positive params [B, 3]: [B, P]."""
    a, b, c = (params[:, i, None] for i in range(3))
    x, y, z = p.unbind(-1)
    if shape == "sphere":
        return p.norm(dim=-1) - a
    if shape == "box":
        q = p.abs() - params[:, None]
        return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)
    radial = torch.sqrt(x * x + y * y + 1e-12)
    if shape == "cylinder":
        d = torch.stack([radial - a, z.abs() - b], -1)
        return d.clamp_min(0).norm(dim=-1) + d.max(-1).values.clamp_max(0)
    if shape == "cone":
        return _capped_cone(radial, z, b, a)
    if shape == "torus":
        return torch.sqrt((radial - a) ** 2 + z * z + 1e-12) - b
    return torch.sqrt(radial ** 2 + (z - z.clamp(-b, b)) ** 2 + 1e-12) - a       # capsule


def _capped_cone(qx: Tensor, qy: Tensor, h: Tensor, r1: Tensor) -> Tensor:
    """The capped cone of data/primitives.py with the top radius 0 (apex at +h)."""
    k2x, k2y = -r1, 2 * h
    ca_x = qx - torch.minimum(qx, torch.where(qy < 0, r1, torch.zeros_like(r1)))
    ca_y = qy.abs() - h
    t = (((-qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0, 1)
    cb_x = qx + k2x * t
    cb_y = qy - h + k2y * t
    sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    return sign * torch.sqrt(torch.minimum(ca_x ** 2 + ca_y ** 2, cb_x ** 2 + cb_y ** 2) + 1e-12)


def _start(shape: str, p: Tensor) -> Tensor:
    """Initial parameters [B, 3] from the points' extents."""
    radial = torch.sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)
    r_max, z_max = radial.amax(1), p[..., 2].abs().amax(1)
    zero = torch.zeros_like(r_max)
    if shape == "sphere":
        return torch.stack([p.norm(dim=-1).mean(1), zero, zero], 1)
    if shape == "box":
        return p.abs().amax(1)
    if shape in ("cylinder", "cone"):
        return torch.stack([r_max, z_max, zero], 1)
    if shape == "torus":
        minor = (r_max - radial.amin(1)).clamp_min(1e-3) / 2
        return torch.stack([r_max - minor, minor, zero], 1)
    return torch.stack([r_max, (z_max - r_max).clamp_min(1e-3), zero], 1)


def fit_residuals(points: Tensor, steps: int = FIT_STEPS) -> Tensor:
    """Mean |SDF| at the points of each class's best fit, over the shape's half-extent: [B, classes]."""
    p = points.double()
    extent = p.abs().amax((1, 2)).clamp_min(1e-6)
    out = []
    for shape in SHAPES:
        raw = torch.log(torch.expm1(_start(shape, p).clamp_min(1e-3))).requires_grad_(True)   # softplus^-1
        opt = torch.optim.Adam([raw], lr=0.02)
        for _ in range(steps):
            loss = _sdf(shape, F.softplus(raw), p).square().mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(_sdf(shape, F.softplus(raw), p).abs().mean(1) / extent)
    return torch.stack(out, 1)


def read_primitives(points: np.ndarray | Tensor) -> dict[str, np.ndarray]:
    """Point sets [N, P, 3] -> the judge's reading: label [N] (index into SHAPES, -1 unreadable),
    size [N] (0 small, 1 large) and each class's fit residual [N, classes]."""
    p = torch.as_tensor(np.asarray(points, np.float64))
    if p.dim() != 3 or p.shape[-1] != 3:
        raise ValueError(f"read_primitives: expected point sets [N, P, 3], got {list(p.shape)}")
    ok = torch.isfinite(p).all(-1).all(-1) & (p.shape[1] > 0)
    safe = torch.where(ok[:, None, None], p, torch.zeros_like(p) + 0.5)
    residual = fit_residuals(safe)
    penalty = torch.tensor([COMPLEXITY_PENALTY * (PARAMETERS[s] - 1) for s in SHAPES], dtype=residual.dtype)
    label = torch.where(ok, (residual + penalty).argmin(1), torch.full_like(ok, -1, dtype=torch.long))
    half = torch.quantile(safe.abs().amax(-1), 0.99, dim=1)
    size = (half > SIZE_THRESHOLD).long()
    return {"label": label.numpy(), "size": size.numpy(), "residual": residual.numpy()}


def primitive_adherence(points: np.ndarray, labels: np.ndarray, sizes: np.ndarray | None = None) -> dict[str, float]:
    """Share of point sets read as their class (`shape_acc`), their size and both (`exact`)."""
    read = read_primitives(points)
    shape_ok = read["label"] == np.asarray(labels)
    out = {"shape_acc": float(shape_ok.mean())}
    if sizes is not None:
        size_ok = read["size"] == np.asarray(sizes)
        out.update(size_acc=float(size_ok.mean()), exact=float((shape_ok & size_ok).mean()))
    return out
