"""Distances between two sets of features: FID, KID, precision/recall, density/coverage.

Every function takes real features `a` [N, D] and generated features `b` [M, D] (from the same
extractor: a probe network or Inception) and computes in float64, on the CPU, so numbers do not
depend on the device or on the precision the models ran in.

* FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two sets,
      |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}).
  The trace of the matrix square root is taken as the sum of square roots of the eigenvalues
  of S_a^{1/2} S_b S_a^{1/2}: that matrix is symmetric positive semi-definite, so its
  eigenvalues are real and `eigh` is stable, where a general `sqrtm(S_a S_b)` can return
  complex noise.
* KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic
  polynomial kernel k(x, y) = (x·y / D + 1)^3, averaged over random subsets; the spread over
  subsets is its standard deviation.
* Precision / recall (Kynkäänniemi et al. 2019): each set becomes a union of balls, one per
  point, whose radius is the distance to its k-th nearest neighbour in its own set. Precision
  is the fraction of generated points inside the real manifold, recall the fraction of real
  points inside the generated one.
* Density / coverage (Naeem et al. 2020): density counts how many real balls hold each
  generated point (divided by k; 1 on average when the sets match, unbounded above); coverage
  is the fraction of real balls that hold at least one generated point.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _as64(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected features [N, D], got shape {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return t


def _pair(a, b, min_n: int = 2) -> tuple[Tensor, Tensor]:
    a, b = _as64(a, "real features"), _as64(b, "generated features")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: real {a.shape[1]}, generated {b.shape[1]}")
    for name, t in (("real", a), ("generated", b)):
        if len(t) < min_n:
            raise ValueError(f"{name} features: need at least {min_n} rows, got {len(t)}")
    return a, b


def gaussian_stats(x: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], float64."""
    x = _as64(x, "features")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def _sqrt_psd(s: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(s)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu_a: Tensor, cov_a: Tensor, mu_b: Tensor, cov_b: Tensor) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2  # symmetric up to rounding; make it exactly so for eigh
    trace_root = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    d = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root
    return float(d.clamp_min(0))


def fid(a, b) -> float:
    """FID between real features a [N, D] and generated features b [M, D]."""
    a, b = _pair(a, b)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _poly_mmd2_unbiased(a: Tensor, b: Tensor) -> Tensor:
    d = a.shape[1]
    k_aa = (a @ a.T / d + 1) ** 3
    k_bb = (b @ b.T / d + 1) ** 3
    k_ab = (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    within_a = (k_aa.sum() - k_aa.diagonal().sum()) / (m * (m - 1))
    within_b = (k_bb.sum() - k_bb.diagonal().sum()) / (n * (n - 1))
    return within_a + within_b - 2 * k_ab.mean()


def kid(a, b, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """KID: mean and standard deviation over `subsets` random subsets of `subset_size` rows of
    each set (capped at the smaller set; a subset the size of both sets is drawn once)."""
    a, b = _pair(a, b)
    size = min(subset_size, len(a), len(b))
    if size == len(a) == len(b):
        value = float(_poly_mmd2_unbiased(a, b))
        return {"kid": value, "kid_std": 0.0, "kid_subsets": 1, "kid_subset_size": size}
    gen = torch.Generator().manual_seed(seed)
    values = torch.stack([
        _poly_mmd2_unbiased(a[torch.randperm(len(a), generator=gen)[:size]],
                            b[torch.randperm(len(b), generator=gen)[:size]])
        for _ in range(subsets)])
    return {"kid": float(values.mean()), "kid_std": float(values.std(unbiased=False)),
            "kid_subsets": subsets, "kid_subset_size": size}


def _kth_neighbour_radius(x: Tensor, k: int) -> Tensor:
    """Distance from each row to its k-th nearest other row of the same set."""
    if len(x) <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {len(x)}")
    d = torch.cdist(x, x)
    # column 0 of the sorted distances is the point itself (0)
    return d.kthvalue(k + 1, dim=1).values


def precision_recall(a, b, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (k-NN manifolds, k = 3 as in the paper)."""
    a, b = _pair(a, b, min_n=k + 1)
    r_a, r_b = _kth_neighbour_radius(a, k), _kth_neighbour_radius(b, k)
    d = torch.cdist(b, a)  # [M, N]: generated to real
    precision = (d <= r_a[None, :]).any(1).double().mean()
    recall = (d.T <= r_b[None, :]).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall), "pr_k": k}


def density_coverage(a, b, k: int = 5) -> dict[str, float]:
    """Density and coverage (k = 5 as in the paper), real manifold only."""
    a, b = _pair(a, b, min_n=k + 1)
    r_a = _kth_neighbour_radius(a, k)
    inside = torch.cdist(b, a) <= r_a[None, :]  # [M, N]: generated point j in real ball i
    density = inside.sum().double() / (k * len(b))
    coverage = inside.any(0).double().mean()
    return {"density": float(density), "coverage": float(coverage), "dc_k": k}
