"""Inception Score (Salimans et al. 2016): how confidently and how diversely a classifier labels
a set of images,

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x),

from the classifier's logits [N, classes], over `splits` disjoint parts of the set: the mean
over parts is the score and their spread its standard deviation. It lies in [1, classes].

    out = inception_score(InceptionFeatures.from_file(path).outputs(images).logits_unbiased)
    out["is"], out["is_std"]

Which logits: the FID network's 1008-way classifier without its bias (`logits_unbiased`,
pool_3 @ W), as the original improved-GAN code, ADM's evaluator and torch-fidelity do. With
torchvision's weights it is the same product over 1,000 classes: a different number, never to
be set beside a paper's.

How a set is split, by reference (all compute in float64):
* improved-GAN, and here by default: 10 parts in the set's order, part i = rows
  [i N // splits, (i + 1) N // splits).
* torch-fidelity: the same after shuffling rows with `np.random.RandomState(2020).permutation`
  (`shuffle_seed=2020`).
* ADM's evaluator: consecutive parts of 5,000 rows (`split_size=5000`), the last one shorter
  when N is not a multiple; it reports the mean only. For N = 50,000 all three agree.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def inception_score(logits: Tensor | np.ndarray, splits: int = 10, shuffle_seed: int | None = None,
                    split_size: int | None = None) -> dict[str, float]:
    """IS mean and standard deviation (over parts, population std as numpy's) of logits [N, classes].

    Args:
        logits: [N, classes], softmax inputs (pre-softmax).
        splits: number of equal parts (ignored when `split_size` is given).
        shuffle_seed: shuffle rows first with numpy's RandomState(seed), as torch-fidelity (2020).
        split_size: consecutive parts of this many rows, as ADM's evaluator (5000).
    """
    x = torch.as_tensor(logits).detach().to("cpu", torch.float64)
    if x.dim() != 2 or len(x) < 1:
        raise ValueError(f"expected logits [N, classes], got shape {list(x.shape)}")
    n = len(x)
    if shuffle_seed is not None:
        x = x[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n))]
    if split_size is not None:
        bounds = [(i, min(i + split_size, n)) for i in range(0, n, split_size)]
    else:
        if not 1 <= splits <= n:
            raise ValueError(f"splits must be in [1, N={n}], got {splits}")
        bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    log_p = x.log_softmax(1)  # log p(y|x), [N, classes]
    scores = []
    for lo, hi in bounds:
        part = log_p[lo:hi]
        p = part.exp()
        log_marginal = p.mean(0).log()  # log p(y) over the part, [classes]; -inf where no image gives y any mass
        # 0 log 0 = 0: a class whose probability underflows everywhere adds nothing (not 0 * inf = NaN)
        kl = torch.where(p > 0, p * (part - log_marginal), 0.0).sum(1)  # KL(p(y|x) || p(y)) per image, [n_part]
        scores.append(float(kl.mean().exp()))
    return {"is": float(np.mean(scores)), "is_std": float(np.std(scores)), "is_splits": len(scores)}
