"""Diversity of samples drawn for the same condition: does the generator memorise one example?"""

from __future__ import annotations

import numpy as np


def diversity(rows: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean pairwise distance within groups, and the fraction of unique samples.

    Args:
        rows: float [N, D], the samples as `Modality.flat` gives them (pixels in [0, 1] for
            images, joint positions in metres for motion).
        groups: [N] int, the condition each sample was drawn for.
    Returns:
        diversity: mean absolute difference per element over all pairs inside each group,
            averaged over groups with at least two samples;
        unique_frac: fraction of samples that differ from every other sample of their group.
    """
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
    distances, unique = [], []
    for g in np.unique(groups):
        members = x[groups == g]
        if len(members) < 2:
            continue
        d = np.abs(members[:, None] - members[None]).mean(-1)  # [k, k]
        iu = np.triu_indices(len(members), 1)
        distances.append(d[iu].mean())
        np.fill_diagonal(d, np.inf)
        unique.extend((d.min(1) > 0).tolist())
    if not distances:
        raise ValueError("diversity needs at least two samples for some condition")
    return {"diversity": float(np.mean(distances)), "unique_frac": float(np.mean(unique))}
