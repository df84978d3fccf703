"""FID, KID, precision/recall and density/coverage against independent NumPy/SciPy computations,
torchmetrics where it computes the same thing, and known answers."""

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import torchvision_stand_in
from scipy.spatial.distance import cdist

from latentforge.eval.distribution import (
    density_coverage,
    fid,
    frechet_distance,
    gaussian_stats,
    kid,
    precision_recall,
)


def _features(seed: int, n: int = 300, d: int = 16, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """n draws of one correlated Gaussian (as a network's features are), shifted and scaled."""
    mixing = np.random.default_rng(1000 + d).standard_normal((d, d)) / np.sqrt(d)
    return (np.random.default_rng(seed).standard_normal((n, d)) @ mixing) * scale + shift


# --- references, written from the papers' definitions with NumPy/SciPy -----------------------

def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def _mmd2_numpy(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    kaa, kbb = k(a, a), k(b, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * k(a, b).mean())


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    return np.sort(cdist(x, x), axis=1)[:, k]  # column 0 is the point itself


def _pr_numpy(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float]:
    ra, rb = _radii(a, k), _radii(b, k)
    d = cdist(b, a)
    return float((d <= ra[None]).any(1).mean()), float((d.T <= rb[None]).any(1).mean())


def _dc_numpy(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float]:
    ra = _radii(a, k)
    inside = cdist(b, a) <= ra[None]
    return float(inside.sum() / (k * len(b))), float(inside.any(0).mean())


# --- FID ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 1.7), (2.0, 0.3)])
def test_fid_matches_scipy(shift, scale):
    a, b = _features(0), _features(1, shift=shift, scale=scale)
    ours, ref = fid(a, b), _fid_scipy(a, b)
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-9)


def test_fid_matches_torchmetrics():
    # torchmetrics' FID imports torch-fidelity when it is installed, which imports torchvision: import
    # it first beside the stand-in (torchmetrics then finds it loaded, and no torchvision after)
    with torchvision_stand_in():
        import torch_fidelity  # noqa: F401
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):  # the features are given; torchmetrics only adds them up
        num_features = 16

        def forward(self, x):
            return x

    a, b = _features(0), _features(1, shift=0.3, scale=1.4)
    metric = FrechetInceptionDistance(feature=Identity(), normalize=True)
    metric.update(torch.from_numpy(a).float(), real=True)
    metric.update(torch.from_numpy(b).float(), real=False)
    # torchmetrics accumulates float32 inputs in float64: compare on the same float32 numbers
    ours = fid(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert ours == pytest.approx(float(metric.compute()), rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero_and_symmetric():
    a, b = _features(0), _features(1, shift=0.2)
    assert abs(fid(a, a)) < 1e-8
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)


def test_frechet_distance_closed_form_for_two_gaussians():
    # diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    s_a, s_b = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu_a, torch.diag(s_a), mu_b, torch.diag(s_b)) == pytest.approx(expected, rel=1e-12)
    # a rotated pair (commuting, not diagonal): the same rotation leaves the distance unchanged
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rotated = frechet_distance(q @ mu_a, q @ torch.diag(s_a) @ q.T, q @ mu_b, q @ torch.diag(s_b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


def test_fid_of_large_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20000, 4))
    b = rng.standard_normal((20000, 4)) * 2 + 1  # N(1, 4 I)
    expected = 4 * 1 + 4 * (1 - 2) ** 2  # |mu|^2 + sum (sqrt(1) - sqrt(4))^2
    assert fid(a, b) == pytest.approx(expected, rel=0.03)


def test_gaussian_stats_matches_numpy():
    a = _features(3)
    mu, cov = gaussian_stats(a)
    np.testing.assert_allclose(mu.numpy(), a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(a, rowvar=False), rtol=1e-10, atol=1e-14)


# --- KID ------------------------------------------------------------------------------------

def test_kid_matches_numpy_and_torchmetrics_on_the_full_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    a, b = _features(0, n=200), _features(1, n=200, shift=0.4)
    ours = kid(a, b, subset_size=200)  # one subset = the whole sets: no randomness
    assert ours["kid"] == pytest.approx(_mmd2_numpy(a, b), rel=1e-5)
    metric = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=200, normalize=True)
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    metric.update(a32, real=True)
    metric.update(b32, real=False)
    tm_mean, _ = metric.compute()
    assert kid(a32, b32, subset_size=200)["kid"] == pytest.approx(float(tm_mean), rel=1e-5)


def test_kid_subsets_are_seeded_unbiased_and_have_a_spread():
    a, b = _features(0, n=300), _features(1, n=300, shift=0.4)
    one, two = kid(a, b, subsets=20, subset_size=100, seed=1), kid(a, b, subsets=20, subset_size=100, seed=1)
    assert one == two and one["kid_std"] > 0
    assert kid(a, b, subsets=20, subset_size=100, seed=2)["kid"] != one["kid"]
    # unbiased: two samples of one distribution average to ~0 (can be negative)
    same = kid(_features(5, n=300), _features(6, n=300), subsets=50, subset_size=100)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert one["kid"] > same["kid"] + 3 * one["kid_std"]


# --- precision / recall, density / coverage -----------------------------------------------------

@pytest.mark.parametrize("shift", [0.0, 0.5, 1.5])
def test_precision_recall_density_coverage_match_numpy(shift):
    a, b = _features(0, n=250), _features(1, n=200, shift=shift)
    pr = precision_recall(a, b, k=3)
    dc = density_coverage(a, b, k=5)
    p, r = _pr_numpy(a, b, 3)
    d, c = _dc_numpy(a, b, 5)
    assert (pr["precision"], pr["recall"]) == pytest.approx((p, r), rel=1e-5)
    assert (dc["density"], dc["coverage"]) == pytest.approx((d, c), rel=1e-5)


def test_precision_and_recall_separate_fidelity_from_coverage():
    a = _features(0, n=400)
    collapsed = a[[0] * 10 + [1] * 10] + 1e-3 * _features(1, n=20)  # two real points, copied: faithful, not diverse
    pr = precision_recall(a, collapsed)
    assert pr["precision"] == 1.0 and pr["recall"] < 0.2
    assert density_coverage(a, collapsed)["coverage"] < 0.2
    far = _features(2, n=400, shift=10.0)  # diverse but off the data
    assert precision_recall(a, far)["precision"] == 0.0


def test_bad_features_are_named():
    with pytest.raises(ValueError, match="feature sizes differ: real 16, generated 8"):
        fid(_features(0), _features(1, d=8))
    with pytest.raises(ValueError, match=r"generated features: expected features \[N, D\]"):
        fid(_features(0), np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        fid(_features(0), np.full((10, 16), np.nan))
    with pytest.raises(ValueError, match="real features: need at least 4 rows, got 3"):
        precision_recall(_features(0, n=3), _features(1, n=10))
