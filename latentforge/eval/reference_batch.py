"""ADM's reference batches (Dhariwal & Nichol 2021, openai/guided-diffusion `evaluations/`): read
and write them, and score samples against one with FID, sFID and the Inception Score.

A reference batch is an `.npz` with
    arr_0    uint8 [N, H, W, 3]   the reference images (a sample batch has the same layout;
                                  ADM's class-conditional samples add labels as arr_1, ignored here)
    mu       [2048]               optional: pool_3 statistics of arr_0 (FID)
    sigma    [2048, 2048]
    mu_s     [2023]               optional: mixed_6/conv[..., :7] statistics of arr_0 (sFID)
    sigma_s  [2023, 2023]
Like ADM's evaluator, stored statistics are used when present, else they are computed from
arr_0. Stored statistics were made by whichever network wrote the file: ADM's by TensorFlow's
graph (the `tf1` resize, the official weights), so ours match them only with pytorch-fid's port
of those weights, `resize="tf1"`, and up to the PyTorch port's float differences.

    features = InceptionFeatures.from_file("pt_inception-2015-12-05-6726825d.pth", resize="tf1")
    ref = read_reference_batch("VIRTUAL_imagenet256_labeled.npz")
    scores = evaluate_against_reference(features, ref, samples)   # {fid, sfid, is, is_std, ...}
    write_reference_batch("my_ref.npz", images, features)          # arr_0 + the four statistics
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentforge.atomic import write_npz
from latentforge.eval.distribution import frechet_distance, gaussian_stats
from latentforge.eval.inception import FEATURES, SPATIAL, InceptionFeatures, InceptionOutputs
from latentforge.eval.inception_score import inception_score
from latentforge.serialization import CorruptFileError


@dataclass
class GaussianStats:
    """Mean [D] and covariance [D, D] of a feature set, float64."""
    mu: Tensor
    sigma: Tensor

    @classmethod
    def of(cls, features: Tensor) -> "GaussianStats":
        return cls(*gaussian_stats(features))

    def frechet_distance(self, other: "GaussianStats") -> float:
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def frechet_to_samples(self, samples: Tensor) -> float:
        """FID of sample features [M, D] against these statistics, exact, in O(M D^2) when M <= D.

        With B the centred samples / sqrt(M - 1) [M, D], their covariance is B^T B, and the
        nonzero eigenvalues of S^1/2 B^T B S^1/2 (whose root's trace FID needs) are those of the
        M x M matrix B S B^T: no D x D square root, which costs seconds at D = 2048 on a CPU."""
        x = samples.detach().to("cpu", torch.float64)
        if len(x) > x.shape[1]:
            return self.frechet_distance(GaussianStats.of(x))
        mu = x.mean(0)
        b = (x - mu) / (len(x) - 1) ** 0.5  # [M, D]
        small = b @ self.sigma @ b.T  # [M, M]
        trace_root = torch.linalg.eigvalsh((small + small.T) / 2).clamp_min(0).sqrt().sum()
        d = (self.mu - mu).pow(2).sum() + torch.trace(self.sigma) + b.pow(2).sum() - 2 * trace_root
        return float(d.clamp_min(0))


@dataclass
class ReferenceBatch:
    images: np.ndarray | None           # uint8 [N, H, W, 3] (arr_0); None when not read (see read_reference_batch)
    pool: GaussianStats | None          # stored mu, sigma
    spatial: GaussianStats | None       # stored mu_s, sigma_s


def _stats(arrays: dict[str, np.ndarray], mu: str, sigma: str, dim: int, path: Path) -> GaussianStats | None:
    if mu not in arrays and sigma not in arrays:
        return None
    if mu not in arrays or sigma not in arrays:
        raise CorruptFileError(path, f"{path}: has {mu if mu in arrays else sigma!r} without "
                                     f"{sigma if mu in arrays else mu!r}")
    m, s = arrays[mu], arrays[sigma]
    if m.shape != (dim,) or s.shape != (dim, dim):
        raise CorruptFileError(path, f"{path}: {mu} {list(m.shape)} and {sigma} {list(s.shape)}, "
                                     f"expected [{dim}] and [{dim}, {dim}]")
    return GaussianStats(torch.from_numpy(m.astype(np.float64)), torch.from_numpy(s.astype(np.float64)))


def read_reference_batch(path: str | os.PathLike, load_images: bool = False) -> ReferenceBatch:
    """An ADM reference (or sample) batch; `np.load(allow_pickle=False)`: no object arrays.
    arr_0 is read only when the file has no pool statistics or `load_images` asks for it (ADM's
    ImageNet 256 batch holds 10,000 images, ~2 GB, that its stored statistics make unnecessary)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference batch not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files) & {"mu", "sigma", "mu_s", "sigma_s"}
            if "arr_0" in npz.files and (load_images or not {"mu", "sigma"} <= keys):
                keys.add("arr_0")
            arrays = {k: npz[k] for k in keys}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise CorruptFileError(path, f"{path}: not a readable .npz of plain arrays ({err})") from None
    images = arrays.get("arr_0")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
        raise CorruptFileError(path, f"{path}: arr_0 must be uint8 images [N, H, W, 3], "
                                     f"got {images.dtype} {list(images.shape)}")
    batch = ReferenceBatch(images, _stats(arrays, "mu", "sigma", FEATURES, path),
                           _stats(arrays, "mu_s", "sigma_s", SPATIAL, path))
    if images is None and batch.pool is None:
        raise CorruptFileError(path, f"{path}: neither images (arr_0) nor statistics (mu, sigma)")
    return batch


def batch_statistics(outputs: InceptionOutputs) -> tuple[GaussianStats, GaussianStats]:
    """FID's and sFID's Gaussians of one set's network outputs."""
    return GaussianStats.of(outputs.pool), GaussianStats.of(outputs.spatial)


def write_reference_batch(path: str | os.PathLike, images: np.ndarray,
                          features: InceptionFeatures | None = None) -> ReferenceBatch:
    """Images (uint8 [N, H, W, 3]) as an ADM batch, atomically; with `features`, also their
    statistics (mu, sigma, mu_s, sigma_s; float64), so later evaluations skip the network for them."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {images.dtype} {list(images.shape)}")
    arrays: dict[str, Any] = {"arr_0": images}
    pool = spatial = None
    if features is not None:
        pool, spatial = batch_statistics(features.outputs(images))
        arrays.update(mu=pool.mu.numpy(), sigma=pool.sigma.numpy(), mu_s=spatial.mu.numpy(),
                      sigma_s=spatial.sigma.numpy())
    write_npz(path, **arrays)
    return ReferenceBatch(images, pool, spatial)


def reference_statistics(reference: ReferenceBatch,
                         features: InceptionFeatures) -> tuple[GaussianStats, GaussianStats | None, str]:
    """(pool, spatial, "stored" | "computed"): the stored statistics when the file has them, else
    computed from its images. Spatial is None for a file with stored pool statistics only."""
    if reference.pool is not None:
        return reference.pool, reference.spatial, "stored"
    return *batch_statistics(features.outputs(reference.images)), "computed"


def evaluate_against_reference(features: InceptionFeatures, reference: ReferenceBatch,
                               samples: np.ndarray | InceptionOutputs, splits: int = 10,
                               shuffle_seed: int | None = None, split_size: int | None = None) -> dict[str, Any]:
    """FID, sFID and IS of samples (uint8 [M, H, W, 3], or their `features.outputs` when already
    computed) against a reference batch. IS options as `inception_score` (ADM: split_size=5000;
    torch-fidelity: shuffle_seed=2020)."""
    ref_pool, ref_spatial, source = reference_statistics(reference, features)
    out = samples if isinstance(samples, InceptionOutputs) else features.outputs(samples)
    scores: dict[str, Any] = {"fid": ref_pool.frechet_to_samples(out.pool)}
    if ref_spatial is not None:
        scores["sfid"] = ref_spatial.frechet_to_samples(out.spatial)
    scores.update(inception_score(out.logits_unbiased, splits, shuffle_seed, split_size))
    scores.update(n=len(out.pool), reference_statistics=source, resize=features.resize,
                  classes=out.logits.shape[1])
    return scores
