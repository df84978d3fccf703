"""The 3D metrics against references: Chamfer against SciPy's k-d tree, EMD against the optimal
assignment (equal-size uniform sets), F-score and IoU known answers, and the generation metrics'
limits (a set against itself, a set against a shifted copy)."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from latentforge.modalities.point_metrics import (
    chamfer_l2,
    emd,
    f_score,
    generation_metrics,
    occupancy_iou,
    tau_of_diagonal,
)


def clouds(b=3, p=50, q=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, p, 3, generator=g) * 2 - 1, torch.rand(b, q, 3, generator=g) * 2 - 1


def test_chamfer_matches_a_kd_tree_and_is_zero_on_itself():
    a, b = clouds()
    want = [np.mean(cKDTree(y).query(x)[0] ** 2) + np.mean(cKDTree(x).query(y)[0] ** 2)
            for x, y in zip(a.numpy(), b.numpy())]
    assert np.allclose(chamfer_l2(a, b).numpy(), want, atol=1e-6)
    assert torch.allclose(chamfer_l2(a, a), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(chamfer_l2(a, b), chamfer_l2(b, a))
    # a rigid shift by d moves every point's nearest neighbour by d: CD of a set and its shift (far apart) ~ 2 d^2
    one = torch.zeros(1, 1, 3)
    assert chamfer_l2(one, one + torch.tensor([0.3, 0.0, 0.4])).item() == pytest.approx(2 * 0.25)


def test_emd_equals_the_optimal_assignment_for_equal_uniform_sets():
    a, b = clouds(b=2, p=40, q=40)
    for x, y, got in zip(a.numpy(), b.numpy(), emd(a, b).numpy()):
        cost = np.linalg.norm(x[:, None] - y[None], axis=-1)
        r, c = linear_sum_assignment(cost)
        assert got == pytest.approx(cost[r, c].mean(), rel=1e-6)
    with pytest.raises(ValueError, match="at most 512 points"):
        emd(torch.zeros(1, 600, 3), torch.zeros(1, 600, 3))


def test_f_score_and_iou_known_answers():
    assert tau_of_diagonal(0.01) == pytest.approx(0.02 * math.sqrt(3))
    ref = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    pred = torch.tensor([[[0.0, 0, 0.01], [0, 1, 0]]])   # one point close, one far
    # precision 1/2, recall 1/2 -> F = 1/2
    assert f_score(pred, ref, tau=0.05).item() == pytest.approx(0.5)
    assert f_score(ref, ref, tau=1e-9).item() == 1.0
    t = torch.tensor([[True, True, False, False]])
    p = torch.tensor([[True, False, True, False]])
    assert occupancy_iou(p, t).item() == pytest.approx(1 / 3)
    assert occupancy_iou(torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)).item() == 1.0
    with pytest.raises(ValueError, match="empty point set"):
        chamfer_l2(torch.zeros(1, 0, 3), ref)
    with pytest.raises(ValueError, match=r"\[B, P, 3\]"):
        chamfer_l2(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2))


def test_generation_metrics_limits():
    ref, _ = clouds(b=12, p=32, q=1, seed=1)
    same = generation_metrics(ref.clone(), ref)
    assert same["mmd_cd"] == 0 and same["cov_cd"] == 1.0
    # a set against itself: every shape's nearest other shape is its own copy in the other set -> 1-NNA 0
    assert same["1nna_cd"] == 0.0
    far = generation_metrics(ref + 5.0, ref)
    assert far["1nna_cd"] == 1.0 and far["mmd_cd"] > 10
    # one generated shape covers one reference shape
    assert generation_metrics(ref[:1], ref)["cov_cd"] == pytest.approx(1 / 12)
