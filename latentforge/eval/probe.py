"""Probe networks: a small CNN per synthetic data set, trained on its ground truth once and cached.

Inception features know nothing of 32-pixel coloured shapes or 8-pixel digits, so FID on these
data sets uses a network that does: a probe trained to read the labels the data set was made
from (Shapes: how many objects of each shape, colour and size, and in all; digits: the class).
Its penultimate layer is the feature space of "Shapes-FID" / "Digits-FID", and its own test
accuracy says how far those features can be trusted (`test_accuracy` in its config.json).

    probe = load_probe(data_config)            # trains it the first time (cached afterwards)
    feats = probe.features(images)              # uint8 [N, H, W, 3] -> float64 [N, feature_dim]

Cache: `$LATENTFORGE_CACHE/probes/<data set>-<hash>/` (default `~/.cache/latentforge`), the
hash covering every data field that changes what an image looks like (size, object counts, ...)
but not the split sizes or seed. The folder is a saved model (`config.json` +
`model.safetensors`), so `from_pretrained` reads it; training checkpoints sit beside it in
`train/`, so an interrupted training resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentforge.config import ModelConfig, to_dict
from latentforge.data.store import cache_root
from latentforge.nn.conv import probe_trunk
from latentforge.registry import register
from latentforge.serialization import WEIGHTS_NAME, from_pretrained, save_pretrained
from latentforge.train.trainer import TrainConfig, Trainer

# fields of a data config that do not change what its images look like
_NOT_APPEARANCE = ("train_size", "val_size", "seed")
PROBE_VERSION = 1  # bump when the network or its training changes, so old caches are not reused


@dataclass
class ProbeConfig(ModelConfig):
    kind = "probe"
    name: str = "cnn"
    size: int = 32                    # image side it reads
    width: int = 32                   # channels of the first stage (doubled twice)
    feature_dim: int = 256            # the penultimate layer: the features
    heads: tuple[str, ...] = ()       # one head per label group of the data set
    slots: tuple[int, ...] = ()       # labels per head (Shapes' colour head: 6 counts)
    classes: tuple[int, ...] = ()     # classes per label
    shift: int = 0                    # training augmentation: random translation in pixels

    def __post_init__(self) -> None:
        if not (len(self.heads) == len(self.slots) == len(self.classes)):
            raise ValueError(f"heads, slots and classes must have one entry per head, got "
                             f"{len(self.heads)}, {len(self.slots)}, {len(self.classes)}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")

    @classmethod
    def tiny(cls) -> "ProbeConfig":
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(size=8, width=4, feature_dim=8, heads=("class",), slots=(1,), classes=(3,))


@register("probe", "cnn", ProbeConfig)
class Probe(nn.Module):
    """Conv stages at full, 1/2 and 1/4 resolution -> 4x4 pooled map -> feature layer -> heads.

    Batch norm, not group norm: it trains several times faster here (100 % on every Shapes head
    in 3,000 steps against 55 % shape accuracy after 300), and in eval mode it uses its running
    statistics, so a feature never depends on the rest of the batch.
    """

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(*probe_trunk(w), nn.AdaptiveAvgPool2d(4))
        self.feature = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, config.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({h: nn.Linear(config.feature_dim, k * c)
                                    for h, k, c in zip(config.heads, config.slots, config.classes)})

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """x: float [B, 3, S, S] in [-1, 1] -> features [B, F], logits {head: [B, K, classes]}."""
        f = self.feature(self.body(x))
        logits = {h: head(f).unflatten(1, (k, c))
                  for (h, head), k, c in zip(self.heads.items(), self.config.slots, self.config.classes)}
        return f, logits

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        _, logits = self(batch["image"])
        out, total = {}, 0.0
        for h, lg in logits.items():
            target = batch[h]  # [B, K]
            total = total + F.cross_entropy(lg.flatten(0, 1).float(), target.flatten())
            out[f"acc_{h}"] = (lg.argmax(-1) == target).all(1).float().mean()
        out["loss"] = total
        return out

    def _batches(self, images: np.ndarray, batch: int = 500):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"probe input must be uint8 images [N, H, W, 3], got {images.dtype} "
                             f"{list(images.shape)}")
        if images.shape[1:3] != (self.config.size, self.config.size):
            raise ValueError(f"this probe reads {self.config.size}x{self.config.size} images, got "
                             f"{images.shape[1]}x{images.shape[2]}")
        device = next(self.parameters()).device
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
            yield self(x)

    @torch.no_grad()
    def features(self, images: np.ndarray) -> Tensor:
        """uint8 [N, H, W, 3] -> float64 [N, feature_dim] on the CPU (fp32 forward: the same
        numbers whatever precision the machine trains in)."""
        self.eval()
        return torch.cat([f.double().cpu() for f, _ in self._batches(images)])

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> dict[str, Tensor]:
        """uint8 [N, H, W, 3] -> {head: int labels [N, K]}."""
        self.eval()
        parts = [{h: lg.argmax(-1).cpu() for h, lg in logits.items()} for _, logits in self._batches(images)]
        return {h: torch.cat([p[h] for p in parts]) for h in self.config.heads}

    def accuracy(self, images: np.ndarray, targets: dict[str, tuple[np.ndarray, int]]) -> dict[str, float]:
        """Per head, the fraction of images whose labels are all right."""
        pred = self.predict(images)
        return {h: float((pred[h].numpy() == targets[h][0]).all(1).mean()) for h in self.config.heads}


# --------------------------------------------------------------------------- cache and training

@dataclass
class ProbeTrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    train_size: int = 20000       # training images, where the data set lets us choose
    test_size: int = 2000         # test images for the reported accuracy, likewise
    seed: int = 0                 # initial weights and batches
    width: int = 32
    feature_dim: int = 256


def probe_key(data_config: Any) -> str:
    """`<data set>-<hash>` of the data config fields that change what an image looks like."""
    fields = {k: v for k, v in to_dict(data_config).items() if k not in _NOT_APPEARANCE}
    blob = json.dumps({"data": fields, "version": PROBE_VERSION}, sort_keys=True)
    return f"{data_config.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def probe_dir(data_config: Any) -> Path:
    return cache_root() / "probes" / probe_key(data_config)


def _probe_data(data_config: Any, train: ProbeTrainConfig) -> Any:
    """The data a probe learns from: the run's appearance, the probe's own seed and sizes, so the
    cached probe does not depend on which run happened to train it."""
    sizes = {k: v for k, v in (("train_size", train.train_size), ("val_size", train.test_size))
             if hasattr(data_config, k)}
    return dataclasses.replace(data_config, seed=train.seed, **sizes)


def has_probe(data_config: Any) -> bool:
    """Whether the data set has labels a probe can learn (Shapes, digits; not photos)."""
    from latentforge.data.base import DataSet, build_dataset

    return type(build_dataset(data_config)).probe_targets is not DataSet.probe_targets


def _shift(images: Tensor, pixels: int) -> Tensor:
    """Translate each image by a random offset in [-pixels, pixels]^2, filling with -1 (black)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pixels,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, b)).tolist()
    return torch.stack([padded[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(dy, dx))])


def train_probe(data_config: Any, train: ProbeTrainConfig | None = None, folder: str | os.PathLike | None = None,
                device: str | torch.device = "cpu", progress: bool = True) -> Probe:
    """Train the probe of `data_config`'s data set on its train split, measure it on its test
    split and save it (with its test accuracy) in `folder` (default: the cache)."""
    from latentforge.data.base import build_dataset

    train = train or ProbeTrainConfig()
    folder = Path(folder) if folder is not None else probe_dir(data_config)
    cfg = _probe_data(data_config, train)
    dataset = build_dataset(cfg)
    arrays = dataset.split("train")
    targets = dataset.probe_targets(arrays)
    if not targets:
        raise ValueError(f"data set {data_config.name!r} has no labels to train a probe on; "
                         f"use Inception features (--inception-weights PATH) instead")
    images = arrays["images"]
    pcfg = ProbeConfig(size=images.shape[1], width=train.width, feature_dim=train.feature_dim,
                       heads=tuple(targets), slots=tuple(t.shape[1] for t, _ in targets.values()),
                       classes=tuple(c for _, c in targets.values()),
                       shift=dataset.probe_shift * images.shape[1] // 32)
    torch.manual_seed(train.seed)
    model = Probe(pcfg)
    x_all = torch.from_numpy(images)
    y_all = {h: torch.from_numpy(t) for h, (t, _) in targets.items()}
    B = train.batch_size

    def batch_fn(step: int) -> dict[str, Tensor]:
        idx = torch.randint(len(x_all), (B,))
        x = x_all[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
        if pcfg.shift:
            x = _shift(x, pcfg.shift)
        return {"image": x, **{h: y[idx] for h, y in y_all.items()}}

    tcfg = TrainConfig(steps=train.steps, batch_size=B, lr=train.lr, seed=train.seed,
                       warmup=min(100, train.steps // 10 + 1),
                       weight_decay=0.0, grad_clip=0.0, log_every=50, ckpt_every=500)
    print(f"training the {data_config.name} probe ({train.steps} steps; once, cached in {folder})",
          file=sys.stderr, flush=True)
    Trainer(model, tcfg, folder / "train", batch_fn, device=device, desc=f"probe {data_config.name}",
            progress=progress).fit()
    test = dataset.split("test")
    accuracy = model.accuracy(test["images"], dataset.probe_targets(test))
    save_pretrained(model, folder, extra={"test_accuracy": accuracy, "test_images": len(test["images"]),
                                          "data": to_dict(cfg), "train": dataclasses.asdict(train),
                                          "version": PROBE_VERSION})
    return model.eval()


def load_probe(data_config: Any, train_if_missing: bool = True, device: str | torch.device = "cpu",
               progress: bool = True) -> Probe:
    """The cached probe of this data config, trained first if there is none yet."""
    folder = probe_dir(data_config)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / "config.json").is_file():
        if not train_if_missing:
            raise FileNotFoundError(f"no probe for data {data_config.name!r} in {folder}; train one with "
                                    f"`latentforge eval train-probe {data_config.name}`")
        return train_probe(data_config, device=device, progress=progress)
    return from_pretrained(folder, device)


def probe_info(folder: str | os.PathLike) -> dict[str, Any]:
    """What config.json records beside the network: test accuracy, training data and steps."""
    return json.loads((Path(folder) / "config.json").read_text()).get("extra", {})


def file_hash(path: str | os.PathLike, chars: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:chars]
