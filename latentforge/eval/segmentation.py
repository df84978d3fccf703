"""Semantic-segmentation scores from a confusion matrix: pixel accuracy and mean IoU.

mIoU is the data-set-level mean (the convention of Cityscapes and of CAM-Seg's evaluation): the
confusion matrix is summed over every pixel of every image first, then IoU_k = TP_k / (TP_k + FP_k
+ FN_k) per class, averaged over the classes that occur in the target or the prediction (a class
absent from both has no IoU and does not count).

Boundary scores (CAM-Seg's ablation reads blurred masks off them) are the same scores restricted
to the target pixels within `radius` pixels (Chebyshev) of a pixel of another class.

Legend: N images, H x W pixels, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """int64 [K, K] counts, rows = target class, columns = predicted class, of maps [N, H, W]."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {list(pred.shape)} and target {list(target.shape)} differ in shape")
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    if t.numel() and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def pixel_accuracy(confusion: Tensor) -> float:
    """Fraction of pixels whose predicted class is the target class."""
    return float(confusion.diagonal().sum() / confusion.sum().clamp_min(1))


def class_iou(confusion: Tensor) -> Tensor:
    """IoU per class [K] (nan where the class occurs in neither target nor prediction)."""
    tp = confusion.diagonal().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: Tensor) -> float:
    """Mean IoU over the classes that occur (see the module docstring)."""
    iou = class_iou(confusion)
    return float(iou[~iou.isnan()].mean()) if (~iou.isnan()).any() else float("nan")


def boundary_band(target: Tensor, radius: int = 1) -> Tensor:
    """bool [N, H, W]: pixels with a pixel of another class within `radius` (the image border is not a boundary)."""
    t = target.float()[:, None]                                                        # [N, 1, H, W]
    k = 2 * radius + 1
    # a window holds one class iff its max equals its min (replicate padding: the border adds no class)
    padded = F.pad(t, (radius,) * 4, mode="replicate")
    high, low = F.max_pool2d(padded, k, 1), -F.max_pool2d(-padded, k, 1)
    return (high != low)[:, 0]


def segmentation_scores(pred: Tensor, target: Tensor, num_classes: int, radius: int = 1) -> dict[str, float]:
    """{"pixel_acc", "miou", "boundary_acc", "boundary_miou"} of predicted class maps [N, H, W] against
    targets [N, H, W]; the boundary scores count only the target's boundary band of `radius`."""
    confusion = confusion_matrix(pred, target, num_classes)
    band = boundary_band(target, radius)
    edge = confusion_matrix(pred[band], target[band], num_classes)
    return {"pixel_acc": pixel_accuracy(confusion), "miou": mean_iou(confusion),
            "boundary_acc": pixel_accuracy(edge), "boundary_miou": mean_iou(edge)}
