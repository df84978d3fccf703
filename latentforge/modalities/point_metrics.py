"""Distances between point sets and between sets of shapes: the 3D reconstruction and generation
metrics (3DShape2VecSet, Point-E, PointFlow conventions, each stated where it is defined).

Legend: B shapes, P / Q points per shape, N / M shapes in a set.

Conventions (state them beside every number, they differ across papers by 10x):
- Coordinates are those of the data: shapes normalised to the cube [-1, 1]^3 (box diagonal 2√3).
- `chamfer_l2` is the SUM of the two directed means of SQUARED nearest-neighbour distances
  (PointFlow's / Point-E's "CD"; 3DShape2VecSet reports the mean of the two, half of this).
- `f_score` at threshold τ (an absolute distance; `tau_of_diagonal` turns "1 % of the box
  diagonal" into one): harmonic mean of precision (predicted points within τ of the reference)
  and recall (reference points within τ of the prediction), Tatarchenko et al. 2019.
- `emd` is the exact earth mover's distance with uniform weights and Euclidean ground cost (POT's
  `ot.emd2`), per shape; quadratic memory, so at most `EMD_MAX_POINTS` points.
- `occupancy_iou`: |pred ∩ true| / |pred ∪ true| over query points labelled inside (True) / outside.
- Generation (Achlioptas et al. 2018; PointFlow): MMD = mean over reference shapes of the distance
  to the nearest generated shape; COV = share of reference shapes that are some generated shape's
  nearest; 1-NNA = leave-one-out 1-nearest-neighbour accuracy of telling the two sets apart
  (0.5 is ideal, 1.0 means they never mix).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

EMD_MAX_POINTS = 512


def _check_sets(a: Tensor, b: Tensor, name: str) -> None:
    if a.dim() != 3 or b.dim() != 3 or a.shape[-1] != 3 or b.shape[-1] != 3 or a.shape[0] != b.shape[0]:
        raise ValueError(f"{name}: expected point sets [B, P, 3] and [B, Q, 3] with equal B, got "
                         f"{list(a.shape)} and {list(b.shape)}")
    if a.shape[1] == 0 or b.shape[1] == 0:
        raise ValueError(f"{name}: an empty point set ({list(a.shape)}, {list(b.shape)})")


def nearest_sq(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Squared distance from each point of a [B, P, 3] to its nearest in b [B, Q, 3], and back:
    ([B, P], [B, Q])."""
    d = torch.cdist(a.double(), b.double()).square()                    # [B, P, Q]
    return d.min(2).values, d.min(1).values


def chamfer_l2(pred: Tensor, ref: Tensor) -> Tensor:
    """Sum of the two directed mean squared nearest distances, per shape: [B]."""
    _check_sets(pred, ref, "chamfer_l2")
    ab, ba = nearest_sq(pred, ref)
    return ab.mean(1) + ba.mean(1)


def tau_of_diagonal(fraction: float, low: float = -1.0, high: float = 1.0) -> float:
    """A threshold as a fraction of the diagonal of the cube [low, high]^3 (1 % -> 0.0346 for [-1, 1])."""
    return fraction * (high - low) * math.sqrt(3.0)


def f_score(pred: Tensor, ref: Tensor, tau: float) -> Tensor:
    """F-score at distance tau per shape: [B] in [0, 1]."""
    _check_sets(pred, ref, "f_score")
    ab, ba = nearest_sq(pred, ref)
    precision = (ab <= tau * tau).double().mean(1)
    recall = (ba <= tau * tau).double().mean(1)
    return torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12),
                       torch.zeros_like(precision))


def emd(pred: Tensor, ref: Tensor) -> Tensor:
    """Exact earth mover's distance (uniform weights, Euclidean cost) per shape: [B]."""
    import ot

    _check_sets(pred, ref, "emd")
    if max(pred.shape[1], ref.shape[1]) > EMD_MAX_POINTS:
        raise ValueError(f"emd: at most {EMD_MAX_POINTS} points a shape (exact transport is quadratic in memory "
                         f"and slow beyond), got {pred.shape[1]} and {ref.shape[1]}: subsample first")
    out = []
    for a, b in zip(pred.double().cpu().numpy(), ref.double().cpu().numpy()):
        cost = ot.dist(a, b, metric="euclidean")
        out.append(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost))
    return torch.tensor(out, dtype=torch.float64)


def occupancy_iou(pred: Tensor, true: Tensor) -> Tensor:
    """IoU of boolean occupancy [B, Q] at the same query points: [B] (1 where both are empty)."""
    if pred.shape != true.shape or pred.dim() != 2:
        raise ValueError(f"occupancy_iou: expected boolean [B, Q] of equal shape, got {list(pred.shape)} and {list(true.shape)}")
    p, t = pred.bool(), true.bool()
    inter, union = (p & t).sum(1).double(), (p | t).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def pairwise_chamfer(a: Tensor, b: Tensor, batch: int = 64) -> Tensor:
    """Chamfer-L2 between every shape of a [N, P, 3] and every shape of b [M, Q, 3]: [N, M]."""
    out = torch.empty(len(a), len(b), dtype=torch.float64)
    for i in range(len(a)):
        for j in range(0, len(b), batch):
            part = b[j: j + batch]
            out[i, j: j + len(part)] = chamfer_l2(a[i: i + 1].expand(len(part), -1, -1), part)
    return out


def generation_metrics(generated: Tensor, reference: Tensor) -> dict[str, float]:
    """MMD, COV and 1-NNA under Chamfer-L2 of a generated set [N, P, 3] against a reference set [M, Q, 3]."""
    if len(generated) < 1 or len(reference) < 1:
        raise ValueError("generation_metrics: both sets need at least one shape")
    gr = pairwise_chamfer(generated, reference)                        # [N, M]
    mmd = gr.min(0).values.mean()
    cov = len(torch.unique(gr.argmin(1))) / len(reference)
    gg = pairwise_chamfer(generated, generated)
    rr = pairwise_chamfer(reference, reference)
    n, m = len(generated), len(reference)
    full = torch.cat([torch.cat([gg, gr], 1), torch.cat([gr.T, rr], 1)], 0)  # [N + M, N + M]
    full.fill_diagonal_(float("inf"))
    labels = torch.cat([torch.zeros(n), torch.ones(m)])
    nearest = full.argmin(1)
    nna = float((labels[nearest] == labels).double().mean())
    return {"mmd_cd": float(mmd), "cov_cd": float(cov), "1nna_cd": nna}
