"""The in-house video classifier: a ViViT factorised encoder (P24) whose pooled features feed probe-FVD.

FVD borrows an I3D network trained on Kinetics; its weights cannot be downloaded here, so, as
`eval/probe.py` does for images and `eval/motion_probe.py` for motion, we train a classifier on
the labels the data were made from and measure distances in its feature space. A Fréchet
distance on these features ("probe-FVD") is NOT comparable with published FVD numbers: another
network, other data, another feature space. Its own validation accuracy (`val_accuracy` in its
config.json) says how far the features can be trusted.

    probe = train_video_probe(train_clips, train_targets, val_clips, val_targets,
                              cache_key="moving-squares-v1")   # trains once, cached afterwards
    probe.predict(clips)       # uint8 [N, T, H, W, 3] -> {head: int64 [N, K]}
    probe.features(clips)      # -> float64 [N, dim]: the pooled clip feature
    extractor = video_feature_extractor(folder)                 # name, source, hash: for FID / FVD

Legend: B clips, T frames, H W frame side, p patch, N = (H/p)(W/p) patches, D width, K label
slots of a head, C classes of a slot.

The network (ViViT model 2, "factorised encoder"; Arnab et al. 2021):
    frames [B*T, 3, H, W] -> p x p patches -> tokens [B*T, N, D] + spatial position
      -> spatial transformer (+ a CLS token, or mean pooling) -> one token per frame [B, T, D]
      -> adapter (optional: x + up(GELU(down(LN x))), up zero-initialised)
      -> + temporal position -> temporal transformer (+ CLS, or mean) -> clip feature [B, D]
      -> one linear head per target -> logits [B, K, C]

Training (`VideoProbeTrainConfig`), P24's question being whether freezing halves the cost at
equal accuracy:
  * stage 1 (`spatial_steps` > 0, both modes): the spatial transformer alone, as an image model
    that names each frame's clip labels and redraws the frame's thumbnail (`FrameClassifier`);
    our stand-in for the image-pretrained ViT that P24 starts from. Or `init_from`: the spatial
    (and with `init_temporal` the temporal) transformer of another saved probe.
  * `full`: everything trains, from stage 1's spatial weights or (`spatial_steps=0`) from scratch.
  * `frozen_spatial`: the spatial transformer is frozen after stage 1: it runs under
    `torch.no_grad()`, so none of its activations are kept for a backward pass, and only the
    adapter, the temporal transformer and the heads train. P24 bridges the frozen features with
    a small adapter (it pools patch tokens TokenLearner-style; ours is a residual bottleneck MLP
    on the frame token) and initialises the temporal transformer from elsewhere (`init_temporal`).
benchmarks/vivit.py measures both modes. On its moving squares (seed 0, 600-step budget, CPU)
`frozen_spatial` reached 0.9 validation accuracy on both heads in 150 steps at 0.56x the step
time of `full` and 0.11x its saved activations; `full` took 300 steps from scratch and 350 from
stage 1's weights. Frozen after a stage 1 on the labels alone (no thumbnail), it stalled at 0.59
direction accuracy: the frozen features must already hold what the temporal transformer needs.

Cache: `$LATENTFORGE_CACHE/probes/vivit-<hash>/`, the hash covering the caller's `cache_key`
(which must change whenever the training data change), the training config (mode, network,
steps, seed) and `PROBE_VERSION`; a cached probe whose frames or heads do not fit the data given
with its key is an error. The folder is a saved model
(`config.json` + `model.safetensors`); checkpoints of each stage sit in `train_spatial/` and
`train/`, so an interrupted training resumes. A cached probe that does not read back (truncated
weights, unreadable or foreign config.json) is not trusted: its folder is set aside as
`<name>.corrupt` and the probe trained again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from latentforge.config import ModelConfig, to_dict
from latentforge.eval.features import FeatureExtractor
from latentforge.eval.probe import cache_root, file_hash, probe_info
from latentforge.modalities.video import VideoModality
from latentforge.nn.embeddings import GridPositionEmbedding
from latentforge.nn.patches import PatchEmbedding
from latentforge.nn.transformer import Transformer, init_transformer_weights
from latentforge.registry import register
from latentforge.serialization import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CorruptFileError,
    from_pretrained,
    read_json,
    save_pretrained,
)
from latentforge.train.log import read_jsonl
from latentforge.train.trainer import TrainConfig, Trainer

PROBE_VERSION = 1  # bump when the network or its training changes, so old caches are not reused

Targets = dict[str, tuple[np.ndarray, int]]  # head -> (int labels [N, K], classes), as data sets give them


@dataclass
class VideoProbeConfig(ModelConfig):
    kind = "probe"
    name: str = "vivit"
    frames: int = 8                   # most frames it reads (the temporal position table)
    size: int = 32                    # side of the square frames
    patch: int = 4                    # p: one spatial token per p x p patch
    dim: int = 64                     # D, both transformers; the clip feature's size
    attn_heads: int = 4
    spatial_depth: int = 2
    temporal_depth: int = 2
    mlp_ratio: float = 4.0
    spatial_pool: Literal["cls", "mean"] = "cls"    # a frame's token: a CLS token or the mean of its patches
    temporal_pool: Literal["cls", "mean"] = "mean"  # the clip's: a CLS token or the mean of its frames
    adapter: int = 0                  # bottleneck width of the adapter after the spatial transformer; 0: none
    heads: tuple[str, ...] = ()       # one output head per target
    slots: tuple[int, ...] = ()       # K: labels per head
    classes: tuple[int, ...] = ()     # C: classes per label

    def __post_init__(self) -> None:
        if not (len(self.heads) == len(self.slots) == len(self.classes)):
            raise ValueError(f"heads, slots and classes must have one entry per head, got "
                             f"{len(self.heads)}, {len(self.slots)}, {len(self.classes)}")
        for field in ("frames", "patch", "dim", "attn_heads", "spatial_depth", "temporal_depth"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.size % self.patch:
            raise ValueError(f"size {self.size} is not divisible by patch {self.patch}")
        if self.dim % self.attn_heads:
            raise ValueError(f"dim {self.dim} is not divisible by attn_heads {self.attn_heads}")
        if self.adapter < 0:
            raise ValueError(f"adapter must be >= 0, got {self.adapter}")

    @property
    def feature_dim(self) -> int:
        """Size of `VideoProbe.features`: the pooled clip token."""
        return self.dim

    @classmethod
    def tiny(cls) -> VideoProbeConfig:
        """Builds and runs in milliseconds: the registry's contract tests use it."""
        return cls(frames=3, size=8, patch=4, dim=16, attn_heads=2, spatial_depth=1, temporal_depth=1, adapter=4,
                   heads=("class",), slots=(1,), classes=(3,))


def clips_to_model(clips: np.ndarray | Tensor) -> Tensor:
    """uint8 clips [N, T, H, W, 3] -> float [N, 3, T, H, W] in [-1, 1] (VideoModality's conversion)."""
    return VideoModality(frames=clips.shape[1], size=clips.shape[2]).to_model(clips)


# --------------------------------------------------------------------------- the network

@torch.no_grad()
def _sincos_(table: Tensor, start: int, stop: int) -> None:
    """Set columns start..stop-1 of a position table [L, D] to sin/cos of the position at
    geometric frequencies (Transformer / MAE), and the other columns to zero."""
    n = (stop - start) // 2
    pos = torch.arange(table.shape[0], dtype=torch.float32)[:, None]
    freq = 1.0 / 10000 ** (torch.arange(n, dtype=torch.float32) / max(n, 1))
    table.zero_()
    table[:, start:start + n] = torch.sin(pos * freq)
    table[:, start + n:start + 2 * n] = torch.cos(pos * freq)


class SpatialEncoder(nn.Module):
    """One frame -> one token: patches + position -> transformer -> CLS or mean. [B, 3, H, W] -> [B, D]."""

    def __init__(self, config: VideoProbeConfig) -> None:
        super().__init__()
        side = config.size // config.patch
        self.embed = PatchEmbedding(3, config.dim, config.patch)
        self.pos = GridPositionEmbedding((side, side), config.dim)
        # sin-cos start (MAE's fixed 2D table, here learned from it), rows in the first half of
        # the channels, columns in the second: the default N(0, 0.02) start is so faint beside
        # the patch content that a frame token learnt to say WHERE things are only after
        # thousands of steps (linear R^2 of the object's position from the token 0.02, against
        # 0.6 from this start, after 600 steps on the moving squares of the tests)
        _sincos_(self.pos.tables[0], 0, config.dim // 2)
        _sincos_(self.pos.tables[1], config.dim // 2, config.dim)
        # not zeros: LayerNorm of an all-zero token divides by sqrt(eps), and the first steps'
        # gradients then blew up ~300 times
        self.cls = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02) if config.spatial_pool == "cls" else None
        self.transformer = Transformer(config.dim, config.spatial_depth, config.attn_heads, config.mlp_ratio)
        init_transformer_weights(self.transformer, config.spatial_depth)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.embed(frames) + self.pos()                            # [B, N, D]
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)     # [B, 1+N, D]
        x = self.transformer(x)
        return x[:, 0] if self.cls is not None else x.mean(1)          # [B, D]


class Adapter(nn.Module):
    """x + up(GELU(down(LN x))) with `up` zero-initialised: the identity when training starts, so
    the temporal transformer first sees the frozen features unchanged. [..., D] -> [..., D]."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(F.gelu(self.down(self.norm(x))))


class TemporalEncoder(nn.Module):
    """Frame tokens -> clip token: + time position -> transformer -> CLS or mean. [B, T, D] -> [B, D]."""

    def __init__(self, config: VideoProbeConfig) -> None:
        super().__init__()
        self.pos = GridPositionEmbedding((config.frames,), config.dim)
        _sincos_(self.pos.tables[0], 0, config.dim)
        self.cls = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02) if config.temporal_pool == "cls" else None
        self.transformer = Transformer(config.dim, config.temporal_depth, config.attn_heads, config.mlp_ratio)
        init_transformer_weights(self.transformer, config.temporal_depth)

    def forward(self, tokens: Tensor) -> Tensor:
        x = tokens + self.pos()[: tokens.shape[1]]                     # [B, T, D]: a shorter clip, the first T
        if self.cls is not None:
            x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1)     # [B, 1+T, D]
        x = self.transformer(x)
        return x[:, 0] if self.cls is not None else x.mean(1)


def _logits(heads: nn.ModuleDict, config: VideoProbeConfig, f: Tensor) -> dict[str, Tensor]:
    return {h: head(f).unflatten(-1, (k, c)) for (h, head), k, c in zip(heads.items(), config.slots, config.classes)}


def _head_loss(logits: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cross-entropy per label slot, summed over heads; `acc_<head>`: every slot right."""
    out, total = {}, 0.0
    for h, lg in logits.items():
        target = batch[h]                                              # [B, K]
        total = total + F.cross_entropy(lg.flatten(0, -2).float(), target.flatten())
        out[f"acc_{h}"] = (lg.argmax(-1) == target).all(-1).float().mean()
    out["loss"] = total
    return out


@register("probe", "vivit", VideoProbeConfig)
class VideoProbe(nn.Module):
    """ViViT factorised encoder with one linear head per target (see the module docstring).

    After `freeze_spatial()` the spatial transformer runs without gradients: training keeps none
    of its activations and updates only the adapter, the temporal transformer and the heads.
    """

    def __init__(self, config: VideoProbeConfig) -> None:
        super().__init__()
        self.config = config
        self.spatial = SpatialEncoder(config)
        self.adapter = Adapter(config.dim, config.adapter) if config.adapter else nn.Identity()
        self.temporal = TemporalEncoder(config)
        self.heads = nn.ModuleDict({h: nn.Linear(config.dim, k * c)
                                    for h, k, c in zip(config.heads, config.slots, config.classes)})
        self.spatial_frozen = False

    def freeze_spatial(self) -> VideoProbe:
        self.spatial.requires_grad_(False)
        self.spatial_frozen = True
        return self

    def frame_tokens(self, video: Tensor) -> Tensor:
        """video float [B, 3, T, H, W] -> one token per frame [B, T, D]."""
        frames = rearrange(video, "b c t h w -> (b t) c h w")         # [B*T, 3, H, W]
        if self.spatial_frozen:
            with torch.no_grad():
                tokens = self.spatial(frames)
        else:
            tokens = self.spatial(frames)
        return tokens.unflatten(0, (video.shape[0], video.shape[2]))   # [B, T, D]

    def forward(self, video: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """video float [B, 3, T, H, W] in [-1, 1] -> clip features [B, D], logits {head: [B, K, C]}."""
        f = self.temporal(self.adapter(self.frame_tokens(video)))
        return f, _logits(self.heads, self.config, f)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return _head_loss(self(batch["video"])[1], batch)

    def _batches(self, clips: np.ndarray | Tensor, batch: int = 64) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        cfg = self.config
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype not in (np.uint8, torch.uint8):
            raise ValueError(f"the video probe reads uint8 clips [N, T, H, W, 3], got {clips.dtype} {list(clips.shape)}")
        if tuple(clips.shape[2:4]) != (cfg.size, cfg.size):
            raise ValueError(f"this probe reads {cfg.size}x{cfg.size} frames, got {clips.shape[2]}x{clips.shape[3]}")
        if not 1 <= clips.shape[1] <= cfg.frames:
            raise ValueError(f"this probe reads 1 to {cfg.frames} frames, got {clips.shape[1]}")
        device = next(self.parameters()).device
        for i in range(0, len(clips), batch):
            yield self(clips_to_model(clips[i:i + batch]).to(device))

    @torch.no_grad()
    def features(self, clips: np.ndarray | Tensor) -> Tensor:
        """uint8 [N, T, H, W, 3] -> float64 [N, D] on the CPU (fp32 forward, eval mode): the
        feature space of probe-FVD, which is not comparable with published (I3D) FVD."""
        self.eval()
        parts = [f.double().cpu() for f, _ in self._batches(clips)]
        return torch.cat(parts) if parts else torch.zeros(0, self.config.dim, dtype=torch.float64)

    @torch.no_grad()
    def predict(self, clips: np.ndarray | Tensor) -> dict[str, Tensor]:
        """uint8 [N, T, H, W, 3] -> {head: int64 labels [N, K]}."""
        self.eval()
        parts = [{h: lg.argmax(-1).cpu() for h, lg in logits.items()} for _, logits in self._batches(clips)]
        return {h: torch.cat([p[h] for p in parts]) for h in self.config.heads}

    def accuracy(self, clips: np.ndarray | Tensor, targets: Targets) -> dict[str, float]:
        """Per head, the fraction of clips whose labels are all right."""
        pred = self.predict(clips)
        return {h: float((pred[h].numpy() == np.asarray(targets[h][0])).all(1).mean()) for h in self.config.heads}


class FrameClassifier(nn.Module):
    """Stage 1 of `frozen_spatial`: the probe's spatial encoder (shared, not copied) as an image
    model that, from one frame alone, names its clip's labels and redraws the frame coarsely.

    The labels alone do not make the frame token keep what the temporal transformer will need:
    a label no single frame shows (a direction) rewards knowing where the object is only weakly.
    So, as a stand-in for the general-purpose image pretraining P24 starts from, a linear head
    also regresses the frame's thumbnail (the mean colour of each p x p patch, [(H/p)(W/p)*3]) from
    the token, weighted by `thumbnail`: the token must say what is where."""

    def __init__(self, probe: VideoProbe, thumbnail: float = 1.0) -> None:
        super().__init__()
        cfg = self.config = probe.config
        self.spatial = probe.spatial
        self.heads = nn.ModuleDict({h: nn.Linear(cfg.dim, k * c) for h, k, c in zip(cfg.heads, cfg.slots, cfg.classes)})
        self.thumbnail = thumbnail
        self.redraw = nn.Linear(cfg.dim, 3 * (cfg.size // cfg.patch) ** 2) if thumbnail > 0 else None
        if self.redraw is not None:
            nn.init.zeros_(self.redraw.weight)
            nn.init.zeros_(self.redraw.bias)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """batch: "frames" float [B, 3, H, W] in [-1, 1] and per head the clip's labels [B, K]."""
        frames = batch["frames"]
        f = self.spatial(frames)                                       # [B, D]
        out = _head_loss(_logits(self.heads, self.config, f), batch)
        if self.redraw is not None:
            thumb = F.avg_pool2d(frames, self.config.patch).flatten(1)  # [B, 3 (H/p) (W/p)]
            # the batch's thumbnails centred and scaled to unit mean variance: the loss starts at
            # 1 (the head starts at zero) whatever the data's brightness and contrast; on raw
            # thumbnails a dark set's first steps blew the spatial transformer up
            target = (thumb - thumb.mean(0)) / thumb.var(0).mean().clamp_min(1e-6).sqrt()
            out["thumbnail_fvu"] = F.mse_loss(self.redraw(f).float(), target)
            out["loss"] = out["loss"] + self.thumbnail * out["thumbnail_fvu"]
        return out


# --------------------------------------------------------------------------- cache and training

@dataclass
class VideoProbeTrainConfig:
    mode: Literal["full", "frozen_spatial"] = "full"
    steps: int = 600              # steps of the video model (stage 2)
    batch_size: int = 64          # clips per step
    lr: float = 3e-3
    seed: int = 0                 # initial weights and batches
    # the network
    patch: int = 0                # patch side; 0: frame side / 8 (an 8 x 8 grid of patches)
    dim: int = 64
    attn_heads: int = 4
    spatial_depth: int = 2
    temporal_depth: int = 2
    spatial_pool: Literal["cls", "mean"] = "cls"
    temporal_pool: Literal["cls", "mean"] = "mean"
    adapter: int = 16             # frozen_spatial: adapter bottleneck width; 0: none (P24's naive freezing)
    # stage 1, both modes: the spatial transformer pretrained on single frames (P24 starts both
    # from an image-pretrained one); 0 steps and no init_from: `full` trains from scratch
    spatial_steps: int = 300
    spatial_lr: float = 3e-3
    frame_batch: int = 256        # frames (from random clips and times) per stage-1 step
    thumbnail: float = 1.0        # weight of redrawing each frame's thumbnail (0: labels only)
    init_from: str | None = None  # instead of stage 1: the spatial transformer of this saved video probe
    init_temporal: bool = False   # with init_from: its temporal transformer too (P24's temporal init)

    def __post_init__(self) -> None:
        if self.mode not in ("full", "frozen_spatial"):
            raise ValueError(f"mode must be 'full' or 'frozen_spatial', got {self.mode!r}")
        if self.init_temporal and self.init_from is None:
            raise ValueError("init_temporal needs init_from: the probe to take the temporal transformer from")
        if self.mode == "frozen_spatial" and self.spatial_steps < 1 and self.init_from is None:
            raise ValueError("frozen_spatial freezes a pretrained spatial transformer: give spatial_steps >= 1 "
                             "or init_from")
        for name in ("steps", "batch_size", "frame_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _train_identity(train: VideoProbeTrainConfig) -> dict[str, Any]:
    """The train config as the cache key reads it: without the fields this mode and start do not
    read, and `init_from` by the hash of its weights."""
    out = dataclasses.asdict(train)
    unread = [] if train.mode == "frozen_spatial" else ["adapter"]
    if train.init_from is not None:
        out["init_from"] = file_hash(Path(train.init_from) / WEIGHTS_NAME)
        unread += ["spatial_steps", "spatial_lr", "frame_batch", "thumbnail"]
    elif train.spatial_steps < 1:
        unread += ["spatial_lr", "frame_batch", "thumbnail"]
    return {k: v for k, v in out.items() if k not in unread}


def video_probe_key(cache_key: str, train: VideoProbeTrainConfig) -> str:
    """`vivit-<hash>` of the data (`cache_key`), the training config and the probe's version."""
    blob = json.dumps({"data": cache_key, "train": _train_identity(train), "version": PROBE_VERSION}, sort_keys=True)
    return f"vivit-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def video_probe_dir(cache_key: str, train: VideoProbeTrainConfig | None = None) -> Path:
    return cache_root() / "probes" / video_probe_key(cache_key, train or VideoProbeTrainConfig())


def _check(clips: np.ndarray | Tensor, targets: Targets, split: str) -> tuple[Tensor, dict[str, Tensor]]:
    x = torch.as_tensor(np.asarray(clips)) if not isinstance(clips, Tensor) else clips
    if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[-1] != 3 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{split} clips: expected uint8 [N, T, S, S, 3], got {x.dtype} {list(x.shape)}")
    if not targets:
        raise ValueError(f"{split} targets: no heads; expected {{head: (int labels [N, K], classes)}}")
    y = {}
    for h, (labels, classes) in targets.items():
        t = torch.as_tensor(np.asarray(labels)).long()
        if t.dim() != 2 or len(t) != len(x):
            raise ValueError(f"{split} targets {h!r}: expected labels [{len(x)}, K], got {list(t.shape)}")
        if t.numel() and (t.min() < 0 or t.max() >= classes):
            raise ValueError(f"{split} targets {h!r}: labels must lie in [0, {classes}), got "
                             f"{int(t.min())}..{int(t.max())}")
        y[h] = t
    return x, y


def _check_fits(probe: VideoProbe, clip_shape: tuple[int, ...], heads: dict[str, tuple[int, int]],
                cache_key: str) -> None:
    """A cached probe of `cache_key` must read these clips and have these heads: the key names the data."""
    cfg = probe.config
    have = {h: (k, c) for h, k, c in zip(cfg.heads, cfg.slots, cfg.classes)}
    if clip_shape[1:3] != (cfg.size, cfg.size) or clip_shape[0] > cfg.frames or have != heads:
        raise ValueError(f"the cached video probe of cache_key {cache_key!r} reads {cfg.frames} frames of "
                         f"{cfg.size}x{cfg.size} with heads {have}, not clips {list(clip_shape)} with heads "
                         f"{heads}: the data changed, so change the cache_key")


def _sec_per_step(folder: Path) -> float | None:
    logged = [r["sec_per_step"] for r in read_jsonl(folder / "log.jsonl") if "sec_per_step" in r]
    return statistics.median(logged) if logged else None


def _set_aside(folder: Path, why: str) -> None:
    aside = folder.with_name(folder.name + ".corrupt")
    shutil.rmtree(aside, ignore_errors=True)
    folder.rename(aside)
    print(f"warning: the cached video probe in {folder} is not trusted ({why}); kept as {aside.name}, "
          f"training it again", file=sys.stderr, flush=True)


def _cached(folder: Path, key: str, device: str | torch.device) -> VideoProbe | None:
    """The finished probe in `folder`, or None when there is none (or an unfinished one, which
    then resumes). One that does not read back, or was written for another key, is set aside."""
    if not ((folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()):
        return None
    try:
        meta = read_json(folder / CONFIG_NAME)
        extra = meta.get("extra", {}) if isinstance(meta, dict) else {}
        if extra.get("key") != key or extra.get("version") != PROBE_VERSION:
            raise ValueError(f"its config.json was written for {extra.get('key')!r}, not {key!r}")
        return load_video_probe(folder, device)
    except (ValueError, KeyError, TypeError) as err:   # CorruptFileError and ConfigError are ValueErrors
        _set_aside(folder, str(err).splitlines()[0][:300])
        return None


def _initialise(probe: VideoProbe, train: VideoProbeTrainConfig, device: str | torch.device) -> None:
    """Copy the spatial (and with `init_temporal` the temporal) transformer of `init_from`."""
    source = load_video_probe(train.init_from, device)
    parts = ("spatial", "temporal") if train.init_temporal else ("spatial",)
    for part in parts:
        try:
            getattr(probe, part).load_state_dict(getattr(source, part).state_dict())
        except RuntimeError as err:
            raise ValueError(f"init_from {train.init_from}: its {part} transformer does not fit this probe "
                             f"({str(err).splitlines()[0]})") from None


def pretrain_spatial(probe: VideoProbe, clips: Tensor, labels: dict[str, Tensor], train: VideoProbeTrainConfig,
                     folder: str | os.PathLike, device: str | torch.device = "cpu", progress: bool = True) -> float:
    """Stage 1: train `probe.spatial` as a per-frame classifier (`FrameClassifier`) on random
    frames of `clips` uint8 [N, T, S, S, 3] for `train.spatial_steps` steps, checkpointing in
    `folder` (a finished folder resumes at its end: the weights, no training). Returns the
    seconds it took."""
    model = FrameClassifier(probe, train.thumbnail)
    n, t = clips.shape[:2]

    def batch_fn(step: int) -> dict[str, Tensor]:
        i, j = torch.randint(n, (train.frame_batch,)), torch.randint(t, (train.frame_batch,))
        frames = clips[i, j].permute(0, 3, 1, 2).float() / 127.5 - 1   # [B, 3, S, S], as clips_to_model
        return {"frames": frames, **{h: y[i] for h, y in labels.items()}}

    tcfg = TrainConfig(steps=train.spatial_steps, batch_size=train.frame_batch, lr=train.spatial_lr, seed=train.seed,
                       warmup=min(50, train.spatial_steps // 10 + 1), precision="fp32", tensorboard=False,
                       log_every=25, ckpt_every=max(train.spatial_steps // 2, 1))
    start = time.perf_counter()
    Trainer(model, tcfg, folder, batch_fn, device=device, desc="probe vivit spatial", progress=progress).fit()
    probe.to(device)
    return time.perf_counter() - start


def _fit(probe: VideoProbe, x_all: Tensor, y_all: dict[str, Tensor], train: VideoProbeTrainConfig, folder: Path,
         device: str | torch.device, progress: bool) -> dict[str, Any]:
    """Both stages; returns what config.json records of them (seconds, seconds per step)."""
    info: dict[str, Any] = {}
    if train.init_from is not None:
        _initialise(probe, train, device)
    elif train.spatial_steps > 0:
        info["spatial_seconds"] = pretrain_spatial(probe, x_all, y_all, train, folder / "train_spatial",
                                                   device, progress)
        info["spatial_sec_per_step"] = _sec_per_step(folder / "train_spatial")
    if train.mode == "frozen_spatial":
        probe.freeze_spatial()
    B = train.batch_size

    def batch_fn(step: int) -> dict[str, Tensor]:
        # the Trainer seeds torch from (seed, step) before calling: batches replay on resume
        idx = torch.randint(len(x_all), (B,))
        return {"video": clips_to_model(x_all[idx]), **{h: y[idx] for h, y in y_all.items()}}

    tcfg = TrainConfig(steps=train.steps, batch_size=B, lr=train.lr, seed=train.seed,
                       warmup=min(50, train.steps // 10 + 1), weight_decay=0.0, grad_clip=1.0,
                       precision="fp32", tensorboard=False, log_every=25, ckpt_every=max(train.steps // 2, 1))
    start = time.perf_counter()
    Trainer(probe, tcfg, folder / "train", batch_fn, device=device, desc=f"probe vivit {train.mode}",
            progress=progress).fit()
    info.update(train_seconds=time.perf_counter() - start, sec_per_step=_sec_per_step(folder / "train"),
                trainable_parameters=sum(p.numel() for p in probe.parameters() if p.requires_grad),
                parameters=sum(p.numel() for p in probe.parameters()))
    return info


def train_video_probe(train_clips: np.ndarray | Tensor, train_targets: Targets, val_clips: np.ndarray | Tensor,
                      val_targets: Targets, *, cache_key: str, config: VideoProbeTrainConfig | None = None,
                      folder: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                      progress: bool = True) -> VideoProbe:
    """The cached video probe for `cache_key` and `config`, trained first if there is none yet.

    Trains on uint8 clips [N, T, S, S, 3] and their targets {head: (int labels [N, K], classes)}
    (what `DataSet.probe_targets` returns), measures per-head accuracy on the validation split
    and saves the probe with it in `folder` (default: the cache folder of the key). `cache_key`
    names the data: change it whenever they change. An unfinished training resumes; a cached
    probe that does not read back is set aside and trained again.
    """
    train = config or VideoProbeTrainConfig()
    x_all, y_all = _check(train_clips, train_targets, "train")
    x_val, _ = _check(val_clips, val_targets, "val")
    if len(x_all) == 0:
        raise ValueError("train clips are empty")
    if x_val.shape[1:] != x_all.shape[1:]:
        raise ValueError(f"val clips {list(x_val.shape[1:])} differ from train clips {list(x_all.shape[1:])}")
    if set(val_targets) != set(train_targets):
        raise ValueError(f"val targets {sorted(val_targets)} differ from train targets {sorted(train_targets)}")
    heads = {h: (int(y_all[h].shape[1]), int(c)) for h, (_, c) in train_targets.items()}
    key = video_probe_key(cache_key, train)
    folder = Path(folder) if folder is not None else cache_root() / "probes" / key
    cached = _cached(folder, key, device)
    if cached is not None:
        _check_fits(cached, tuple(x_all.shape[1:]), heads, cache_key)
        return cached

    size = x_all.shape[2]
    cfg = VideoProbeConfig(frames=x_all.shape[1], size=size, patch=train.patch or max(1, size // 8), dim=train.dim,
                           attn_heads=train.attn_heads, spatial_depth=train.spatial_depth,
                           temporal_depth=train.temporal_depth, spatial_pool=train.spatial_pool,
                           temporal_pool=train.temporal_pool,
                           adapter=train.adapter if train.mode == "frozen_spatial" else 0,
                           heads=tuple(heads), slots=tuple(k for k, _ in heads.values()),
                           classes=tuple(c for _, c in heads.values()))
    if progress:
        print(f"training the video probe ({train.mode}, {train.steps} steps; once, cached in {folder})",
              file=sys.stderr, flush=True)
    for attempt in (0, 1):
        torch.manual_seed(train.seed)
        probe = VideoProbe(cfg)
        try:
            info = _fit(probe, x_all, y_all, train, folder, device, progress)
            break
        except CorruptFileError as err:   # no checkpoint of an unfinished training reads back
            if attempt:
                raise
            _set_aside(folder, str(err).splitlines()[0][:300])
    accuracy = probe.accuracy(x_val, val_targets) if len(x_val) else None
    save_pretrained(probe, folder, extra={"val_accuracy": accuracy, "val_clips": len(x_val),
                                         "train_clips": len(x_all), "cache_key": cache_key, "key": key,
                                         "train": _train_identity(train), **info, "version": PROBE_VERSION})
    return probe.eval()


def load_video_probe(folder: str | os.PathLike, device: str | torch.device = "cpu") -> VideoProbe:
    folder = Path(folder)
    if not ((folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()):
        raise FileNotFoundError(f"no video probe in {folder}; train one with train_video_probe(...)")
    model = from_pretrained(folder, device)
    if not isinstance(model, VideoProbe):
        raise TypeError(f"{folder} holds a {type(model).__name__}, not a video probe")
    return model


def video_feature_extractor(probe_folder: str | os.PathLike, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The probe in `probe_folder` as a FeatureExtractor ("video-probe", its folder, the hash of its
    weights): a Fréchet distance on it is probe-FVD, NOT comparable with published I3D FVD (whose
    weights cannot be downloaded here)."""
    folder = Path(probe_folder)
    probe = load_video_probe(folder, device)
    info = probe_info(folder)
    return FeatureExtractor("video-probe", str(folder), file_hash(folder / WEIGHTS_NAME), probe.features,
                            {"val_accuracy": info.get("val_accuracy"), "dim": probe.config.feature_dim,
                             "comparable_with_published_fvd": False})


# --------------------------------------------------------------------------- a data set's probe

# data config fields that do not change what the clips look like (as for the image probes)
_NOT_CONTENT = ("train_size", "val_size", "seed")
PROBE_TRAIN_CLIPS, PROBE_VAL_CLIPS = 4096, 512
# a data set's probe (judges, probe-FVD): P24's frozen spatial transformer with an adapter, about half
# the step time of full training at equal accuracy (benchmarks/vivit.py), and fewer steps, so that a
# run's first evaluation trains it in minutes on a CPU
DATASET_PROBE = VideoProbeTrainConfig(mode="frozen_spatial", steps=300, spatial_steps=200)


def dataset_probe(dataset: Any, config: VideoProbeTrainConfig | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> tuple[VideoProbe, Path]:
    """The probe of a video data set (and its folder): trained on its own train split (validated
    on val) the first time, cached by everything in its config that changes the clips."""
    config = config or DATASET_PROBE
    content = {k: v for k, v in to_dict(dataset.config).items() if k not in _NOT_CONTENT}
    key = json.dumps({"config": content, "content": dataset.content_key()}, sort_keys=True)
    folder = video_probe_dir(key, config)
    cached = _cached(folder, video_probe_key(key, config), device)
    if cached is not None:
        return cached, folder
    # the probe's own split sizes: a run's (a --quick run's, say) must not decide the features
    # every later run of the same data is measured with
    sizes = {k: v for k, v in (("train_size", PROBE_TRAIN_CLIPS), ("val_size", PROBE_VAL_CLIPS))
             if hasattr(dataset.config, k)}
    data = dataset.resized(**sizes) if sizes else dataset
    train, val = data.split("train"), data.split("val")
    probe = train_video_probe(data.examples(train), data.probe_targets(train), data.examples(val),
                              data.probe_targets(val), cache_key=key, config=config, folder=folder, device=device,
                              progress=progress)
    return probe, folder


def dataset_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                     progress: bool) -> FeatureExtractor:
    """For `eval.features.FEATURES["video"]`: the data set's probe features (probe-FVD; Inception
    and I3D do not apply)."""
    _, folder = dataset_probe(dataset, device=device, progress=progress)
    return video_feature_extractor(folder, device)
