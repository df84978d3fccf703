"""The audio class judge: a linear probe on log-mel and chroma statistics that reads which class a
clip holds (the spoken digit of `speech`, the key of `music`), fitted on the data set's own training
clips the first time it is asked for and kept for the process.

Features per clip: the log-mel spectrogram (n_fft 512, hop 10 ms, 64 bands) averaged over each of
`SEGMENTS` equal stretches of time (a digit's word is an ordered sequence of sounds, so the order
matters: one whole-clip average confuses "six" with "seven" far more often), its standard deviation
over the clip, and the clip's mean chroma (a key is a pitch-class profile). The probe is the house's
multinomial logistic regression (`eval/linear_probe.py`); its accuracy on the held-out real clips is
the floor a generator's samples are compared with.

    probe = class_probe(dataset)                        # fitted once per data-set config
    probe.predict(clips)                                # [N] class indices
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from latentforge.eval.linear_probe import fit_linear_probe
from latentforge.nn.spectral import chroma, log_mel

SEGMENTS = 4
MAX_TRAIN = 2048          # training clips the probe is fitted on (rendering more costs more than it adds)


def clip_features(clips: np.ndarray, sample_rate: int) -> np.ndarray:
    """Clips [N, L] -> features [N, 64 x (SEGMENTS + 1) + 12]."""
    x = torch.as_tensor(np.asarray(clips, np.float32))
    if x.dim() != 2:
        raise ValueError(f"audio class probe: expected clips [N, L], got {list(x.shape)}")
    mel = log_mel(x, sample_rate, n_fft=512, hop=sample_rate // 100, n_mels=64)       # [N, 64, T]
    parts = [p.mean(-1) for p in mel.tensor_split(SEGMENTS, dim=-1)]                    # SEGMENTS x [N, 64]
    profile = chroma(x, sample_rate)                                                      # [N, 12]
    return torch.cat([*parts, mel.std(-1), profile], dim=1).double().numpy()


@dataclass
class ClassProbe:
    sample_rate: int
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, clips: np.ndarray) -> np.ndarray:
        z = (torch.as_tensor(clip_features(clips, self.sample_rate)) - self.mean) / self.std
        return (z @ self.weight + self.bias).argmax(-1).numpy()


_PROBES: dict[str, ClassProbe] = {}


def class_probe(dataset) -> ClassProbe:
    """The probe for this data set's `label`, fitted on (up to MAX_TRAIN of) its training clips."""
    key = repr(dataset.config)
    if key not in _PROBES:
        train = dataset.split("train")
        n = min(len(train["label"]), MAX_TRAIN)
        rate = dataset.config.sample_rate
        mean, std, weight, bias = fit_linear_probe(clip_features(train["audio"][:n], rate), train["label"][:n],
                                                   len(dataset.class_names), weight_decay=1e-2)
        _PROBES[key] = ClassProbe(rate, mean, std, weight, bias)
    return _PROBES[key]
