"""Linear probes on frozen features: how much of a label a representation holds linearly, the check
of the self-supervised encoders (MERT's pitch / timbre / key probes; later Point-MAE's and MP3's).

Features are standardised with the training split's mean and std, then a multinomial logistic
regression (softmax over classes, L2 penalty `weight_decay`) is fitted full-batch with L-BFGS from
zero weights: deterministic, no learning rate to tune, a handful of seconds for thousands of rows.

    acc = linear_probe_accuracy(train_x, train_y, test_x, test_y)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def fit_linear_probe(x: np.ndarray, y: np.ndarray, classes: int | None = None, weight_decay: float = 1e-3,
                     iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, D] float, y [N] int -> (mean, std, weight [D, K], bias [K]) of a standardised softmax classifier."""
    xt = torch.as_tensor(np.asarray(x, np.float64))
    yt = torch.as_tensor(np.asarray(y)).long()
    if xt.dim() != 2 or yt.shape != (xt.shape[0],):
        raise ValueError(f"linear probe: expected features [N, D] and labels [N], got {list(xt.shape)} and {list(yt.shape)}")
    K = int(classes if classes is not None else int(yt.max()) + 1)
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-8)
    z = (xt - mean) / std
    weight = torch.zeros(z.shape[1], K, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, yt) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, weight.detach(), bias.detach()


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          classes: int | None = None, weight_decay: float = 1e-3) -> float:
    """Accuracy on the test rows of a linear probe fitted on the train rows."""
    classes = classes if classes is not None else int(max(np.max(train_y), np.max(test_y))) + 1
    mean, std, weight, bias = fit_linear_probe(train_x, train_y, classes, weight_decay)
    z = (torch.as_tensor(np.asarray(test_x, np.float64)) - mean) / std
    pred = (z @ weight + bias).argmax(-1).numpy()
    return float(np.mean(pred == np.asarray(test_y)))
