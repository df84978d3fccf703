"""Probe-FAD: the Fréchet distance between sets of clips in the feature space of a data set's own
MERT student (P5), the audio counterpart of probe-FID and probe-FVD.

Published FAD uses VGGish or CLAP weights, which cannot be downloaded here, so each audio data set
gets a small MERT student trained once on its own training clips and cached (eval/trained_probe.py).
Its targets need no teacher codec: one level of k-means ids of log-mel frames (HuBERT's first
iteration) plus MERT's CQT reconstruction, with in-batch mixing; on the notes set that student's
features held timbre and kind best of the students measured (BENCHMARKS.md, "Audio"). A clip's
feature is the time-mean of the last layer (`Mert.features`). NOT comparable with published FAD.

    features = dataset_features(dataset, None, "cpu", progress=True)   # FeatureExtractor
    fd = fid(features(real_clips), features(generated_clips))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentforge.eval.features import FeatureExtractor
from latentforge.eval.trained_probe import cached_probe, probe_extractor

PROBE_TRAIN_CLIPS = 1024
PROBE_STEPS = 600


def dataset_mert(dataset: Any, progress: bool = True, steps: int = PROBE_STEPS, train_clips: int = PROBE_TRAIN_CLIPS):
    """The folder of the data set's MERT student: cached, or trained on (up to `train_clips` of) its
    training clips for `steps` steps and saved."""
    from latentforge.pretraining.mert import Mert, MertConfig, mel_kmeans_codes, train_mert

    cfg = MertConfig(sample_rate=dataset.config.sample_rate, code_levels=1, code_vocab=256, mix_prob=0.5)

    def train():
        clips = torch.from_numpy(np.asarray(dataset.resized(train_size=train_clips).split("train")["audio"], np.float32))
        if clips.shape[1] < 4 * cfg.hop:
            raise ValueError(f"probe-FAD needs clips of at least {4 * cfg.hop} samples; data "
                             f"{dataset.config.name!r} has {clips.shape[1]}")
        targets = mel_kmeans_codes(clips, [clips], cfg.sample_rate, cfg.hop)[0]
        model, info = train_mert(cfg, clips, targets, steps)
        return model, {"train_clips": len(clips), **info}

    return cached_probe(dataset, "audio-mert", {"steps": steps, "train_clips": train_clips}, train, Mert, progress,
                        "the probe-FAD encoder (MERT)")


def dataset_features(dataset: Any, inception_weights: str | None, device: str | torch.device,
                     progress: bool, steps: int = PROBE_STEPS, train_clips: int = PROBE_TRAIN_CLIPS) -> FeatureExtractor:
    """`eval.features.FEATURES["audio"]`: the data set's MERT student as a FeatureExtractor (VGGish
    and CLAP weights do not apply: none can be downloaded)."""
    from latentforge.pretraining.mert import Mert

    return probe_extractor(dataset_mert(dataset, progress, steps, train_clips), "mert-probe", Mert, device,
                           {"comparable_with_published_fad": False})
