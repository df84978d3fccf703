"""Probe-FAD: the Fréchet distance between sets of clips in the feature space of a data set's own
MERT student (P5), the audio counterpart of probe-FID and probe-FVD.

Published FAD uses VGGish or CLAP weights, which cannot be downloaded here, so each audio data set
gets a small MERT student trained once on its own training clips and cached (like the image, motion
and video probes) by everything in the data config that changes the clips. Its targets need no
teacher codec: one level of k-means ids of log-mel frames (HuBERT's first iteration) plus MERT's CQT
reconstruction, with in-batch mixing; on the notes set that student's features held timbre and kind
best of the students measured (BENCHMARKS.md, "Audio"). A clip's feature is the time-mean of the
last layer (`Mert.features`). The numbers are NOT comparable with published FAD.

    features = dataset_features(dataset, None, "cpu", progress=True)   # FeatureExtractor
    fd = fid(features(real_clips), features(generated_clips))
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentforge.eval.features import FeatureExtractor
from latentforge.eval.probe import cache_root, file_hash, probe_info
from latentforge.serialization import CONFIG_NAME, WEIGHTS_NAME, from_pretrained, save_pretrained

PROBE_TRAIN_CLIPS = 1024
PROBE_STEPS = 600
VERSION = 1
_NOT_CONTENT = ("train_size", "val_size", "seed")


def _key(dataset: Any, steps: int) -> tuple[str, Path]:
    import hashlib

    from latentforge.config import to_dict

    content = {k: v for k, v in to_dict(dataset.config).items() if k not in _NOT_CONTENT}
    key = json.dumps({"data": content, "steps": steps, "version": VERSION}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return key, cache_root() / "probes" / f"audio-mert-{dataset.config.name}-{digest}"


def dataset_mert(dataset: Any, device: str | torch.device = "cpu", progress: bool = True, steps: int = PROBE_STEPS,
                 train_clips: int = PROBE_TRAIN_CLIPS):
    """The data set's MERT student: loaded from the cache, or trained on (up to `train_clips` of) its
    training clips for `steps` steps and saved there (atomically, safetensors + JSON)."""
    from latentforge.pretraining.mert import Mert, MertConfig, mel_kmeans_codes, train_mert

    key, folder = _key(dataset, steps)
    if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        model = from_pretrained(folder, device)
        if not isinstance(model, Mert):
            raise TypeError(f"{folder} holds a {type(model).__name__}, not a MERT student: delete the folder")
        return model.eval()
    rate = dataset.config.sample_rate
    # the probe's own split size: a --quick run's few clips must not decide every later run's features
    clips = torch.from_numpy(np.asarray(dataset.resized(train_size=train_clips).split("train")["audio"], np.float32))
    cfg = MertConfig(sample_rate=rate, code_levels=1, code_vocab=256, mix_prob=0.5)
    if clips.shape[1] < 4 * cfg.hop:
        raise ValueError(f"probe-FAD needs clips of at least {4 * cfg.hop} samples; data {dataset.config.name!r} "
                         f"has {clips.shape[1]}")
    if progress:
        print(f"training the probe-FAD encoder (MERT, {steps} steps on {len(clips)} clips; once, cached in {folder})",
              file=sys.stderr, flush=True)
    targets = mel_kmeans_codes(clips, [clips], rate, cfg.hop)[0]
    model, info = train_mert(cfg, clips, targets, steps)
    save_pretrained(model, folder, extra={"cache_key": key, "train_clips": len(clips), "steps": steps, **info})
    return model.to(device).eval()


def dataset_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                     progress: bool, steps: int = PROBE_STEPS) -> FeatureExtractor:
    """`eval.features.FEATURES["audio"]`: the data set's MERT student as a FeatureExtractor (VGGish
    and CLAP weights do not apply: none can be downloaded)."""
    dataset_mert(dataset, device, progress, steps)
    folder = _key(dataset, steps)[1]
    model = from_pretrained(folder, device).eval()
    info = probe_info(folder)

    def features(clips: np.ndarray) -> torch.Tensor:
        return model.features(clips)

    return FeatureExtractor("mert-probe", str(folder), file_hash(folder / WEIGHTS_NAME), features,
                            {"dim": model.config.feature_dim, "steps": info.get("steps"),
                             "comparable_with_published_fad": False})
