"""The in-house motion encoder: a small action classifier whose pooled features feed motion FID.

Image FID borrows Inception; motion has no such network to borrow offline (the HumanML3D
evaluators are trained on data we do not ship), so, as `eval/probe.py` does for Shapes and
digits, we train one: a 1D temporal conv net that reads joint positions and names the action.
Its pooled penultimate layer is the feature space of motion FID / KID, diversity and
multimodality; its own validation accuracy (`val_accuracy` in its config.json) says how far
those features can be trusted.

    probe = train_motion_probe(train_x, train_y, val_x, val_y, num_classes, skeleton,
                               cache_key="deepmimic-v1")      # trains once, cached afterwards
    f = probe.features(motion)                                # [N, T, J, 3] -> float64 [N, feature_dim]
    extractor = motion_feature_extractor(motion_probe_dir(...))   # name, source, hash: for FID

Input per frame (as in HumanML3D's features): joint positions relative to the root's ground
position (x and z subtracted, height kept, so a jump is visible) and joint velocities (m/s),
normalised by an input batch norm. Heading is not canonicalised; training rotates every clip
by a random angle about y instead, so the features learn to ignore it, and crops a random
window of 3/4 to all of the clip, so they do not depend on the clip's length (global pooling
reads any T).

Cache: `$LATENTFORGE_CACHE/probes/motion-<hash>/`, the hash covering the caller's `cache_key`
(which must change whenever the training data change: data set, its version, its augmentation),
the skeleton, the number of classes and `PROBE_VERSION`. The folder is a saved model
(`config.json` + `model.safetensors`); checkpoints sit in `train/`, so an interrupted training
resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ModelConfig
from latentforge.eval.features import FeatureExtractor
from latentforge.eval.probe import cache_root, file_hash, probe_info
from latentforge.modalities.skeleton import Skeleton
from latentforge.registry import register
from latentforge.serialization import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    from_pretrained,
    save_pretrained,
)
from latentforge.train.trainer import TrainConfig, Trainer

PROBE_VERSION = 2  # 2: trained on its own 4,096 clips, whatever the run's split sizes


@dataclass
class MotionProbeConfig(ModelConfig):
    kind = "probe"
    name: str = "motion"
    num_joints: int = 15              # J of the motion it reads [N, T, J, 3]
    num_classes: int = 4              # actions of its head
    fps: float = 30.0                 # frame rate: velocities are read in m/s
    width: int = 32                   # channels of the first conv stage (doubled at each stride)
    depth: int = 2                    # strided stages, each halving time
    feature_dim: int = 128            # the pooled penultimate layer: the features

    def __post_init__(self) -> None:
        for field in ("num_joints", "num_classes", "width", "feature_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.fps <= 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")

    @classmethod
    def tiny(cls) -> MotionProbeConfig:
        return cls(num_joints=5, num_classes=3, width=8, depth=1, feature_dim=16)


def frame_features(motion: Tensor, fps: float) -> Tensor:
    """Joint positions [B, T, J, 3] -> per-frame input [B, 6J, T]: root-relative positions
    (the root's x and z subtracted, every height kept) and velocities in m/s (the first frame
    repeats the second's; a one-frame clip has none)."""
    b, t, j, _ = motion.shape
    ground = motion[:, :, :1].clone()
    ground[..., 1] = 0
    rel = motion - ground                                        # [B, T, J, 3]
    if t > 1:
        vel = (motion[:, 1:] - motion[:, :-1]) * fps             # [B, T-1, J, 3]
        vel = torch.cat([vel[:, :1], vel], dim=1)                # [B, T, J, 3]
    else:
        vel = torch.zeros_like(motion)
    return torch.cat([rel, vel], dim=-1).reshape(b, t, 6 * j).transpose(1, 2)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, kernel, stride, kernel // 2), nn.BatchNorm1d(c_out), nn.SiLU()]


@register("probe", "motion", MotionProbeConfig)
class MotionProbe(nn.Module):
    """Input batch norm -> conv (k5) -> `depth` x [conv (k3), strided conv] -> mean over time ->
    feature layer -> class head.

    Batch norm, as in the image probe: in eval mode it uses running statistics, so a clip's
    feature never depends on the other clips of its batch.
    """

    def __init__(self, config: MotionProbeConfig) -> None:
        super().__init__()
        self.config = config
        c_in, w = 6 * config.num_joints, config.width
        layers: list[nn.Module] = [nn.BatchNorm1d(c_in), *_conv(c_in, w, 5)]
        for _ in range(config.depth):
            layers += [*_conv(w, w, 3), *_conv(w, 2 * w, 3, stride=2)]
            w *= 2
        self.body = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(w, config.feature_dim), nn.SiLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, motion: Tensor) -> tuple[Tensor, Tensor]:
        """motion: float [B, T, J, 3] metres -> features [B, feature_dim], logits [B, classes]."""
        h = self.body(frame_features(motion, self.config.fps))     # [B, C, T']
        f = self.feature(h.mean(-1))                                 # global pooling: any T
        return f, self.head(f)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        _, logits = self(batch["motion"])
        return {"loss": F.cross_entropy(logits.float(), batch["label"]),
                "acc": (logits.argmax(-1) == batch["label"]).float().mean()}

    def _batches(self, motion: Tensor | np.ndarray, batch: int = 256):
        x = torch.as_tensor(np.asarray(motion) if not isinstance(motion, Tensor) else motion)
        if x.dim() != 4 or x.shape[-1] != 3 or x.shape[2] != self.config.num_joints:
            raise ValueError(f"this probe reads motion [N, T, {self.config.num_joints}, 3], got shape "
                             f"{list(x.shape)}")
        if x.shape[1] < 1:
            raise ValueError("motion has no frames")
        device = next(self.parameters()).device
        for i in range(0, len(x), batch):
            yield self(x[i:i + batch].to(device, torch.float32))

    @torch.no_grad()
    def features(self, motion: Tensor | np.ndarray) -> Tensor:
        """[N, T, J, 3] -> float64 [N, feature_dim] on the CPU (fp32 forward, eval mode)."""
        self.eval()
        return torch.cat([f.double().cpu() for f, _ in self._batches(motion)])

    @torch.no_grad()
    def predict(self, motion: Tensor | np.ndarray) -> Tensor:
        """[N, T, J, 3] -> int64 action labels [N]."""
        self.eval()
        return torch.cat([lg.argmax(-1).cpu() for _, lg in self._batches(motion)])

    def accuracy(self, motion: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
        return float((self.predict(motion) == torch.as_tensor(np.asarray(labels)).long()).double().mean())


# --------------------------------------------------------------------------- augmentation

def rotate_heading(motion: Tensor, angle: Tensor) -> Tensor:
    """Rotate motion [B, T, J, 3] about the vertical (y) axis through the origin by angle [B] radians."""
    c, s = angle.cos()[:, None, None], angle.sin()[:, None, None]
    x, y, z = motion.unbind(-1)
    return torch.stack([c * x + s * z, y, -s * x + c * z], dim=-1)


def random_crop(motion: Tensor, min_frac: float) -> Tensor:
    """One random window length in [min_frac T, T] for the batch, a random start per clip."""
    b, t = motion.shape[:2]
    length = int(torch.randint(max(1, math.ceil(min_frac * t)), t + 1, ()).item())
    start = torch.randint(0, t - length + 1, (b,))
    idx = start[:, None] + torch.arange(length)                  # [B, length]
    return motion[torch.arange(b)[:, None], idx]


# --------------------------------------------------------------------------- cache and training

@dataclass
class MotionProbeTrainConfig:
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0                 # initial weights, batches and augmentation
    width: int = 32
    depth: int = 2
    feature_dim: int = 128
    crop: float = 0.75            # training windows span this fraction of a clip, or more
    noise: float = 0.005          # Gaussian jitter of positions, metres (pose-estimation noise)


def motion_probe_key(cache_key: str, skeleton: Skeleton, num_classes: int) -> str:
    """`motion-<hash>` of what changes the probe's training data, and the probe's version."""
    blob = json.dumps({"data": cache_key, "skeleton": dataclasses.asdict(skeleton), "classes": num_classes,
                       "version": PROBE_VERSION}, sort_keys=True)
    return f"motion-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def motion_probe_dir(cache_key: str, skeleton: Skeleton, num_classes: int) -> Path:
    return cache_root() / "probes" / motion_probe_key(cache_key, skeleton, num_classes)


def _is_saved(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def _check(motion: Tensor | np.ndarray, labels: Tensor | np.ndarray, skeleton: Skeleton, num_classes: int,
           split: str) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(np.asarray(motion) if not isinstance(motion, Tensor) else motion).float()
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long()
    if x.dim() != 4 or x.shape[2:] != (skeleton.num_joints, 3):
        raise ValueError(f"{split} motion: expected [N, T, {skeleton.num_joints}, 3] for this skeleton, "
                         f"got {list(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"{split} labels: expected [{len(x)}], got {list(y.shape)}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{split} labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    return x, y


def train_motion_probe(train_motion: Tensor | np.ndarray, train_labels: Tensor | np.ndarray,
                       val_motion: Tensor | np.ndarray, val_labels: Tensor | np.ndarray, num_classes: int,
                       skeleton: Skeleton, *, cache_key: str, steps: int | None = None, seed: int = 0,
                       train: MotionProbeTrainConfig | None = None, folder: str | os.PathLike | None = None,
                       device: str | torch.device = "cpu", progress: bool = True) -> MotionProbe:
    """The cached motion probe for `cache_key`, trained first if there is none yet.

    Trains on (train_motion [N, T, J, 3], train_labels [N] in [0, num_classes)) with random
    heading, crop and jitter, measures accuracy on the validation split and saves the probe with
    it in `folder` (default: the cache folder of `cache_key`). `steps` and `seed` override
    `train`'s; they do not enter the cache key, so a cached probe is reused whatever they say.
    """
    folder = Path(folder) if folder is not None else motion_probe_dir(cache_key, skeleton, num_classes)
    if _is_saved(folder):
        return load_motion_probe(folder, device)
    train = dataclasses.replace(train or MotionProbeTrainConfig(), seed=seed,
                                **({"steps": steps} if steps is not None else {}))
    x_all, y_all = _check(train_motion, train_labels, skeleton, num_classes, "train")
    x_val, y_val = _check(val_motion, val_labels, skeleton, num_classes, "val")
    if len(x_all) == 0:
        raise ValueError("train motion is empty")

    cfg = MotionProbeConfig(num_joints=skeleton.num_joints, num_classes=num_classes, fps=skeleton.fps,
                            width=train.width, depth=train.depth, feature_dim=train.feature_dim)
    torch.manual_seed(train.seed)
    model = MotionProbe(cfg)
    B = train.batch_size

    def batch_fn(step: int) -> dict[str, Tensor]:
        # the Trainer seeds torch from (seed, step) before calling: batches and augmentation replay
        idx = torch.randint(len(x_all), (B,))
        x = random_crop(x_all[idx], train.crop)
        x = rotate_heading(x, torch.rand(B) * 2 * math.pi)
        x = x + train.noise * torch.randn_like(x)
        return {"motion": x, "label": y_all[idx]}

    tcfg = TrainConfig(steps=train.steps, batch_size=B, lr=train.lr, seed=train.seed,
                       warmup=min(50, train.steps // 10 + 1), weight_decay=0.0, grad_clip=1.0,
                       precision="fp32", tensorboard=False, log_every=50, ckpt_every=max(train.steps // 2, 1))
    if progress:
        print(f"training the motion probe ({train.steps} steps; once, cached in {folder})", file=sys.stderr,
              flush=True)
    # its convolutions are too small to split across threads: on a CPU one thread trains it
    # faster than two (the test's 300 steps: 6 s, against 12-34 s on two threads beside other
    # busy processes, whose threads then wait on each other)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        Trainer(model, tcfg, folder / "train", batch_fn, device=device, desc="probe motion",
                progress=progress).fit()
    finally:
        torch.set_num_threads(threads)
    accuracy = model.accuracy(x_val, y_val) if len(x_val) else None
    save_pretrained(model, folder, extra={"val_accuracy": accuracy, "val_clips": len(x_val),
                                          "train_clips": len(x_all), "cache_key": cache_key,
                                          "skeleton": dataclasses.asdict(skeleton),
                                          "train": dataclasses.asdict(train), "version": PROBE_VERSION})
    return model.eval()


def load_motion_probe(folder: str | os.PathLike, device: str | torch.device = "cpu") -> MotionProbe:
    folder = Path(folder)
    if not _is_saved(folder):
        raise FileNotFoundError(f"no motion probe in {folder}; train one with train_motion_probe(...)")
    model = from_pretrained(folder, device)
    if not isinstance(model, MotionProbe):
        raise TypeError(f"{folder} holds a {type(model).__name__}, not a motion probe")
    return model


def motion_feature_extractor(probe_folder: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The probe in `probe_folder` as a FeatureExtractor ("motion-probe", its folder, the hash of
    its weights), so FID / KID / precision-recall code reads motion unchanged."""
    folder = Path(probe_folder)
    probe = load_motion_probe(folder, device)
    info = probe_info(folder)
    return FeatureExtractor("motion-probe", str(folder), file_hash(folder / WEIGHTS_NAME), probe.features,
                            {"val_accuracy": info.get("val_accuracy"), "dim": probe.config.feature_dim})


# data config fields that do not change what the clips look like (as for the image probes)
_NOT_CONTENT = ("train_size", "val_size", "seed", "size")
PROBE_TRAIN_CLIPS, PROBE_VAL_CLIPS = 4096, 512


def _dataset_key(dataset: Any) -> tuple[str, Path]:
    from latentforge.config import to_dict

    content = {k: v for k, v in to_dict(dataset.config).items() if k not in _NOT_CONTENT}
    key = json.dumps(content, sort_keys=True)
    return key, motion_probe_dir(key, dataset.skeleton, len(dataset.class_names))


def dataset_probe(dataset: Any, device: str | torch.device = "cpu", progress: bool = True) -> MotionProbe:
    """The probe of a motion data set: trained on its own train split (validated on val) the first
    time, cached by everything in its config that changes the clips."""
    key, folder = _dataset_key(dataset)
    if _is_saved(folder):
        return load_motion_probe(folder, device)
    # the probe's own split sizes: a run's (a --quick run's 512 clips, say) must not decide the
    # features every later run of the same data is measured with
    probe_data = dataset.resized(train_size=PROBE_TRAIN_CLIPS, val_size=PROBE_VAL_CLIPS)
    train, val = probe_data.split("train"), probe_data.split("val")
    return train_motion_probe(train["motion"], train["label"], val["motion"], val["label"], len(dataset.class_names),
                              dataset.skeleton, cache_key=key, folder=folder, device=device, progress=progress)


def dataset_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                     progress: bool) -> FeatureExtractor:
    """`eval.features.FEATURES["motion"]`: the data set's probe features (Inception does not apply)."""
    dataset_probe(dataset, device, progress)
    return motion_feature_extractor(_dataset_key(dataset)[1], device)
