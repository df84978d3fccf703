"""One training loop for every model: precision, schedule, checkpoints, logging, progress."""

from latentforge.train.precision import Precision, resolve_precision
from latentforge.train.trainer import TrainConfig, Trainer, lr_at

__all__ = ["Precision", "resolve_precision", "TrainConfig", "Trainer", "lr_at"]
